"""The data plane: what each verb means (rerank, stream, model info, explain), for every transport.

Transports (gRPC, HTTP) convert their wire formats to these types and call `Service`; nothing
below this package knows of bands, top_n, min_score or status codes.
"""

from .bands import BandThresholds
from .errors import ErrorKind, kind_of
from .rerank import Service
from .types import (
    Document,
    FieldViolation,
    ImagePart,
    Limits,
    ModelInfo,
    Query,
    RankedResult,
    RerankOptions,
    RerankOutcome,
    TextPart,
)

__all__ = [
    "BandThresholds",
    "Document",
    "ErrorKind",
    "FieldViolation",
    "ImagePart",
    "Limits",
    "ModelInfo",
    "Query",
    "RankedResult",
    "RerankOptions",
    "RerankOutcome",
    "Service",
    "TextPart",
    "kind_of",
]
