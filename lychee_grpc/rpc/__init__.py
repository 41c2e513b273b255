"""The gRPC transport: converts lychee.v1 messages to service types and back, nothing else."""
