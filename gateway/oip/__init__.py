"""The Open Inference Protocol (v2) data plane: REST routes and a gRPC server over the same core
and batcher as the business-JSON API."""
