"""lychee-grpc-client: call a lychee-grpc reranking server from Python (grpcio + protobuf only)."""

from .client import (
    AsyncLycheeClient,
    LycheeClient,
    band_name,
    channel_credentials,
    field_violations,
    image,
    make_document,
    make_explain_request,
    make_query,
    make_request,
    retry_after,
    text,
)
from .proto import lychee_pb2 as pb

__all__ = [
    "AsyncLycheeClient",
    "LycheeClient",
    "band_name",
    "channel_credentials",
    "field_violations",
    "image",
    "make_document",
    "make_explain_request",
    "make_query",
    "make_request",
    "pb",
    "retry_after",
    "text",
]
__version__ = "0.1.0"
