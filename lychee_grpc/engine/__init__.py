"""The model side of lychee-grpc: prompt, images, model loading, scheduler and executor.

Nothing here knows about gRPC or HTTP; a transport converts its messages to these domain
objects. Names are imported lazily (PEP 562), so that `from lychee_grpc.engine import Query,
EngineConfig, InvalidInput` loads neither torch nor transformers.

The seam the service calls is `EngineClient` (api.py), which `Engine` implements for one device
and the worker pool for several.

Subpackages: prompt/ (template, validation, tokenization, images), model/ (loading, the one
in-place patch step, the reference oracle, the tiny checkpoint), lm/ (the packed LM forward),
vision/ (the vision tower's forward and kernels), util/ (device copies, the LRU).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS: dict[str, str] = {
    "Engine": ".engine",
    "EngineClient": ".api",
    "EngineInfo": ".api",
    "EngineLimits": ".api",
    "CacheInfo": ".api",
    "ImageCacheInfo": ".api",
    "IndexedDocument": ".api",
    "JobHandle": ".api",
    "JobResult": ".api",
    "Truncation": ".api",
    "score_documents": ".api",
    "FaultHook": ".faults",
    "EngineConfig": ".config",
    "TextLimits": ".config",
    "ImageLimits": ".config",
    "Job": ".job",
    "Query": ".types",
    "Document": ".types",
    "Part": ".types",
    "TextPart": ".types",
    "ImagePart": ".types",
    "Score": ".types",
    "Usage": ".types",
    "Timings": ".types",
    "RequestStats": ".types",
    "EngineStats": ".stats",
    "StatsObserver": ".stats",
    "NullObserver": ".stats",
    "EngineError": ".errors",
    "FieldViolation": ".errors",
    "InvalidInput": ".errors",
    "TooLarge": ".errors",
    "Overloaded": ".errors",
    "NotReady": ".errors",
    "DeadlineExpired": ".errors",
    "Cancelled": ".errors",
    "ModelLoadError": ".errors",
    "LoadedModel": ".model.loader",
    "load_model": ".model.loader",
    "DEFAULT_INSTRUCTION": ".prompt.template",
    "make_tiny_model": ".model.tiny_model",
    "reference_logits": ".model.reference",
}

__all__ = [
    "DEFAULT_INSTRUCTION",
    "CacheInfo",
    "Cancelled",
    "DeadlineExpired",
    "Document",
    "Engine",
    "EngineClient",
    "EngineConfig",
    "EngineError",
    "EngineInfo",
    "EngineLimits",
    "EngineStats",
    "FaultHook",
    "FieldViolation",
    "ImageCacheInfo",
    "ImageLimits",
    "ImagePart",
    "IndexedDocument",
    "InvalidInput",
    "Job",
    "JobHandle",
    "JobResult",
    "LoadedModel",
    "ModelLoadError",
    "NotReady",
    "NullObserver",
    "Overloaded",
    "Part",
    "Query",
    "RequestStats",
    "Score",
    "StatsObserver",
    "TextLimits",
    "TextPart",
    "Timings",
    "TooLarge",
    "Truncation",
    "Usage",
    "load_model",
    "make_tiny_model",
    "reference_logits",
    "score_documents",
]


def __getattr__(name: str) -> Any:  # whichever public name is asked for
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))


if TYPE_CHECKING:
    from .api import (
        CacheInfo,
        EngineClient,
        EngineInfo,
        EngineLimits,
        ImageCacheInfo,
        IndexedDocument,
        JobHandle,
        JobResult,
        Truncation,
        score_documents,
    )
    from .config import EngineConfig, ImageLimits, TextLimits
    from .engine import Engine
    from .errors import (
        Cancelled,
        DeadlineExpired,
        EngineError,
        FieldViolation,
        InvalidInput,
        ModelLoadError,
        NotReady,
        Overloaded,
        TooLarge,
    )
    from .faults import FaultHook
    from .job import Job
    from .model.loader import LoadedModel, load_model
    from .model.reference import reference_logits
    from .model.tiny_model import make_tiny_model
    from .prompt.template import DEFAULT_INSTRUCTION
    from .stats import EngineStats, NullObserver, StatsObserver
    from .types import (
        Document,
        ImagePart,
        Part,
        Query,
        RequestStats,
        Score,
        TextPart,
        Timings,
        Usage,
    )
