"""Offline evaluation of a running deployment: `lychee-grpc eval` (see docs/eval.md).

Runs on a laptop against a remote server: imports only the gRPC client, never torch."""
