"""The REST API's JSON bodies (pydantic v2): Cohere/Jina-compatible /v1/rerank, the article's
/api/rerank, /v1/explain, and the error body. Shapes only; meaning is the service's."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from ..service.types import ModelInfo

__all__ = [
    "ApiRerankRequest",
    "ApiRerankResponse",
    "Content",
    "DocumentIn",
    "ErrorBody",
    "ExplainRequest",
    "ExplainResponse",
    "ModelInfo",
    "RerankRequest",
    "RerankResponse",
]

_STRICT = ConfigDict(extra="forbid")


class Content(BaseModel):
    """A query or a document: a plain string, or an object with `text` and/or `image`.
    `image` is base64 or a `data:` URL (JPEG, PNG or WebP). With both, the image comes first
    in the prompt, as in the model's public evaluation code."""

    model_config = _STRICT

    text: str | None = None
    image: str | None = Field(None, description="base64, or a data: URL such as data:image/png;base64,...")

    @model_validator(mode="before")
    @classmethod
    def _from_string(cls, value: Any) -> Any:  # the raw JSON value, before validation
        return {"text": value} if isinstance(value, str) else value

    @model_validator(mode="after")
    def _not_empty(self) -> Content:
        if self.text is None and self.image is None:
            raise ValueError("needs text, image or both")
        return self


class DocumentIn(Content):
    id: str | None = Field(None, description="echoed in logs; results are identified by index")


class RerankRequest(BaseModel):
    model_config = _STRICT

    model: str | None = Field(None, description="accepted for Cohere/Jina clients; the served model answers")
    query: Content
    documents: list[DocumentIn]
    top_n: int | None = Field(None, description="return the best n (default: all)")
    return_documents: bool = False
    instruction: str = Field("", description="empty: the server's default instruction")
    min_score: float | None = Field(None, description="leave out results scoring below this, in [0, 1]")
    truncation: Literal["none", "end"] | None = Field(
        None, description="none: refuse long documents; end: keep their first tokens (default: the server's)"
    )
    max_tokens_per_document: int = Field(0, description="0: the server's limit")


class Usage(BaseModel):
    prompt_tokens: int
    computed_tokens: int
    images: int
    cached_images: int
    total_tokens: int


class Timings(BaseModel):
    preprocess_ms: float
    queue_ms: float
    inference_ms: float
    total_ms: float


class RerankResult(BaseModel):
    index: int
    relevance_score: float
    band: Literal["strong", "medium", "weak"]
    logit: float
    truncated: bool = False
    document: dict[str, str] | None = None


class RerankResponse(BaseModel):
    id: str = Field(description="the request id")
    model: str
    results: list[RerankResult]
    usage: Usage
    timings: Timings
    dropped_documents: int = Field(description="results left out for scoring below min_score")
    truncated_documents: int


class ApiRerankRequest(BaseModel):
    """The article's proxy call: `{"query": "...", "documents": ["..."]}`."""

    model_config = _STRICT

    query: str
    documents: list[str]
    instruction: str = ""
    top_n: int | None = None
    min_score: float | None = None


class ApiRankedDocument(BaseModel):
    index: int
    document: str
    score: float
    band: Literal["strong", "medium", "weak"]


class ApiRerankResponse(BaseModel):
    results: list[ApiRankedDocument]
    model: str
    request_id: str
    dropped_documents: int


class ExplainRequest(BaseModel):
    model_config = _STRICT

    query: Content
    document: Content
    instruction: str = ""
    grid_size: int = Field(0, ge=0, description="image grid (n x n cells); 0: the server's default")
    include_query: bool = False


class FragmentOut(BaseModel):
    source: Literal["query", "document"]
    field: Literal["text", "image"] = Field(description="which field of the query or document it lies in")
    part_index: int
    attribution: float = Field(description="full score minus the score without this fragment")
    occluded_score: float
    text: str = ""
    start: int = 0
    end: int = 0
    x: int = 0
    y: int = 0
    width: int = 0
    height: int = 0


class ExplainResponse(BaseModel):
    score: float
    logit: float
    band: Literal["strong", "medium", "weak"]
    fragments: list[FragmentOut]
    usage: Usage
    timings: Timings
    model: str
    request_id: str


class FieldViolationOut(BaseModel):
    field: str
    description: str


class ErrorDetail(BaseModel):
    code: str = Field(description="the error kind: invalid_argument, too_large, overloaded, unavailable, ...")
    message: str
    field_violations: list[FieldViolationOut]
    request_id: str


class ErrorBody(BaseModel):
    error: ErrorDetail
