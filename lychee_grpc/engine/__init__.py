"""The model side of lychee-grpc: prompt, images, model loading, scheduler and executor.

Nothing here knows about gRPC; the transport converts protobuf to these domain objects.
"""
