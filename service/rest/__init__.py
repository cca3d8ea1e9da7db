"""The HTTP/REST front end: JSON schemas, request codec, middleware and routers. Decodes and encodes only;
the data plane does the rest."""
