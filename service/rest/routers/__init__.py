"""HTTP routes, one module per concern: health and server metadata, inference, repository, metrics."""
