"""The gRPC front end: Triton's GRPCInferenceService on grpc.aio. Decodes and encodes only; the data plane
does the rest."""
