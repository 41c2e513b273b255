"""The lychee.v1 stubs. They are generated into the client package (clients/python,
`lychee_client.proto`) by scripts/gen_proto.py, and the server uses that one copy: two copies of
one .proto in a process would collide in protobuf's descriptor pool."""

from lychee_client.proto import lychee_pb2, lychee_pb2_grpc

__all__ = ["lychee_pb2", "lychee_pb2_grpc"]
