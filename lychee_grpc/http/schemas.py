"""The REST API's JSON bodies (pydantic v2, strict: "2" is not an integer, "yes" not a boolean).

One request shape serves `/v1/rerank`, `/v2/rerank` and vLLM's `/rerank`: the union of what
Cohere's v1 and v2 SDKs, Jina, vLLM and our own options send. Every field a known client sends is
declared here (docs/http.md says which are ignored and why); anything else is refused naming
the field. TEI's body on `/rerank` is told apart by its `texts`. Shapes only; meaning is the
service's, and convert.py maps one onto the other."""

from __future__ import annotations

from typing import Annotated, Any, Literal, cast

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, field_validator

from ..service.types import ModelInfo

__all__ = [
    "ApiRerankRequest",
    "ApiRerankResponse",
    "Content",
    "ContentInput",
    "DocumentInput",
    "DocumentObject",
    "ErrorBody",
    "ExplainRequest",
    "ExplainResponse",
    "ModelInfo",
    "ModelList",
    "QueryInput",
    "QueryObject",
    "RerankRequest",
    "RerankResponse",
    "TeiRank",
    "TeiRerankRequest",
]

_STRICT = ConfigDict(extra="forbid", strict=True)

# pydantic puts a union member's tag into an error's location; tags are written so that they can
# never be a JSON field name, and field_path (app.py) leaves them out.
TAGS = frozenset({"<string>", "<content>", "<object>", "<text>", "<image_url>", "<tei>", "<rerank>"})


# ---- inputs: a string, an object with text and/or image, or vLLM's {"content": [...]} ----------
class ImageUrl(BaseModel):
    model_config = _STRICT

    url: str = Field(description="a data: URL (data:image/png;base64,...) or plain base64; URLs are not fetched")
    detail: str | None = Field(None, description="OpenAI's detail hint: accepted, ignored")


class TextContentPart(BaseModel):
    model_config = _STRICT

    type: Literal["text"]
    text: str


class ImageContentPart(BaseModel):
    model_config = _STRICT

    type: Literal["image_url"]
    image_url: ImageUrl


def _part_kind(value: Any) -> str | None:  # a content part as sent: a JSON object or a model
    kind: Any = cast(dict[str, Any], value).get("type") if isinstance(value, dict) else getattr(value, "type", None)
    return {"text": "<text>", "image_url": "<image_url>"}.get(kind) if isinstance(kind, str) else None


ContentPart = Annotated[
    Annotated[TextContentPart, Tag("<text>")] | Annotated[ImageContentPart, Tag("<image_url>")],
    Discriminator(
        _part_kind,
        custom_error_type="content_part",
        custom_error_message='expected {"type": "text", "text": ...} or {"type": "image_url", "image_url": '
        '{"url": "data:..."}} (vLLM\'s content parts; other types are not supported)',
    ),
]


class ContentInput(BaseModel):
    """vLLM's ScoreMultiModalParam: parts in prompt order."""

    model_config = _STRICT

    content: list[ContentPart] = Field(min_length=1)


class QueryObject(BaseModel):
    """Jina/ours: text and/or image; with both, the image comes first in the prompt, as in the
    model's public evaluation code."""

    model_config = _STRICT

    text: str | None = None
    image: str | None = Field(None, description="base64, or a data: URL such as data:image/png;base64,...")


class DocumentObject(QueryObject):
    """Jina/ours (`text`, `image`, `id`), or a Cohere document object: its other fields are kept
    (strings; scored only when `rank_fields` names them, echoed with `return_documents`)."""

    model_config = ConfigDict(extra="allow", strict=True)

    id: str | None = Field(None, description="echoed in logs; results are identified by index")


def _input_kind(value: Any) -> str | None:
    if isinstance(value, str):
        return "<string>"
    if isinstance(value, dict):
        return "<content>" if "content" in value else "<object>"
    if isinstance(value, ContentInput):
        return "<content>"
    if isinstance(value, QueryObject):
        return "<object>"
    return None


_INPUT_ERROR = 'expected a string, an object with "text" and/or "image", or {"content": [...]}'

QueryInput = Annotated[
    Annotated[str, Tag("<string>")]
    | Annotated[ContentInput, Tag("<content>")]
    | Annotated[QueryObject, Tag("<object>")],
    Discriminator(_input_kind, custom_error_type="input", custom_error_message=_INPUT_ERROR),
]
DocumentInput = Annotated[
    Annotated[str, Tag("<string>")]
    | Annotated[ContentInput, Tag("<content>")]
    | Annotated[DocumentObject, Tag("<object>")],
    Discriminator(_input_kind, custom_error_type="input", custom_error_message=_INPUT_ERROR),
]


class RelevantSpans(BaseModel):
    """Cohere v2's relevant_spans (SDK 7.x): only "disabled" is served; POST /v1/explain measures
    which fragments drove a score."""

    model_config = _STRICT

    mode: Literal["enabled", "disabled"]
    threshold: float | None = None
    max_spans: int | None = None


class RerankRequest(BaseModel):
    """/v1/rerank, /v2/rerank and vLLM's /rerank. docs/http.md maps every field to its anchor."""

    model_config = _STRICT

    model: str | None = Field(None, description="accepted for every client; the served model answers")
    query: QueryInput
    documents: list[DocumentInput] = Field(
        description="strings, objects with text and/or image (Jina; Cohere objects keep their other fields), "
        'or vLLM\'s {"content": [...]}; vLLM\'s single {"content": [...]} is one document')
    top_n: int | None = Field(None, description="return the best n (absent, null or 0: all)")
    return_documents: bool | None = Field(
        None, description="echo each result's document (default: false; true on vLLM's /rerank)")
    # Cohere v1
    rank_fields: list[str] | None = Field(
        None, description="object documents: score these fields, as `key: value` lines")
    max_chunks_per_doc: int | None = Field(
        None, ge=1, description="cut long text documents into chunks (at most this many); each scores as its best")
    # Cohere v2 and vLLM
    max_tokens_per_doc: int | None = Field(
        None, ge=0, description="truncate documents to this many tokens (capped at the server's limit; 0: no cap)")
    priority: int | None = Field(None, description="accepted, ignored: one queue serves every request")
    relevant_spans: RelevantSpans | None = None
    # vLLM
    truncate_prompt_tokens: int | None = Field(
        None, ge=-1, description="truncate documents to this many tokens (-1: the server's limit)")
    truncation_side: Literal["left", "right"] | None = Field(None, description="right only: the end of a text is cut")
    max_tokens_per_query: int | None = Field(None, ge=0, description="0 only: queries are never truncated")
    use_activation: bool | None = Field(None, description="false: relevance_score is the logit (z_yes - z_no)")
    softmax: bool | None = Field(None, description="vLLM's older name of use_activation")
    activation: bool | None = Field(None, description="vLLM's older name of use_activation")
    mm_processor_kwargs: dict[str, Any] | None = Field(None, description="empty only: image sizes are server settings")
    user: str | None = Field(None, description="accepted, ignored")
    request_id: str | None = Field(None, description="accepted, ignored: the x-request-id header names a request")
    cache_salt: str | None = Field(None, description="accepted, ignored")
    # ours
    instruction: str = Field("", description="empty: the server's default instruction")
    min_score: float | None = Field(None, description="leave out results scoring below this, in [0, 1]")
    truncation: Literal["none", "end"] | None = Field(
        None, description="none: refuse long documents; end: keep their first tokens (default: the server's)")
    max_tokens_per_document: int | None = Field(None, ge=0, description="0 or absent: the server's limit")

    @field_validator("documents", mode="before")
    @classmethod
    def _one_content_object(cls, value: Any) -> Any:  # the raw JSON value, before validation
        # vLLM accepts one {"content": [...]} as its documents: one document.
        return [value] if isinstance(value, dict) and "content" in value else value  # pyright: ignore[reportUnknownVariableType]


class TeiRerankRequest(BaseModel):
    """text-embeddings-inference's POST /rerank."""

    model_config = _STRICT

    query: str
    texts: list[str]
    truncate: bool | None = Field(None, description="true: keep the first tokens of long texts (default: the server's)")
    truncation_direction: Literal["right", "Right", "left", "Left"] = Field(
        "right", description="right only: the end of a text is cut")
    raw_scores: bool = Field(False, description="true: score is the logit (z_yes - z_no)")
    return_text: bool = False


def _rerank_kind(value: Any) -> str:
    return "<tei>" if isinstance(value, dict) and "texts" in value else "<rerank>"


AnyRerankRequest = Annotated[
    Annotated[TeiRerankRequest, Tag("<tei>")] | Annotated[RerankRequest, Tag("<rerank>")],
    Discriminator(_rerank_kind),
]


class Usage(BaseModel):
    prompt_tokens: int
    computed_tokens: int
    images: int
    cached_images: int
    cached_documents: int = Field(0, description="documents answered from the pair-score cache")
    deduplicated_documents: int = Field(0, description="documents answered by an identical document's computation "
                                        "(earlier in the request, or queued for another request)")
    total_tokens: int


class Timings(BaseModel):
    preprocess_ms: float
    queue_ms: float
    inference_ms: float
    total_ms: float


class Chunk(BaseModel):
    index: int = Field(description="which chunk scored best (0: the first)")
    start: int = Field(description="its first character in the document's text (code points)")
    end: int = Field(description="one past its last character")
    chunks: int = Field(description="how many chunks of the document were scored")


class RerankResult(BaseModel):
    index: int
    relevance_score: float
    band: Literal["strong", "medium", "weak"]
    logit: float
    truncated: bool = False
    cached: bool = Field(False, description="answered from the pair-score cache: the score stored when this pair was "
                         "scored before")
    document: dict[str, Any] | None = None
    chunk: Chunk | None = None


class ApiVersion(BaseModel):
    version: str


class BilledUnits(BaseModel):
    search_units: int = Field(description="Cohere's count (a query and up to 100 documents each); nothing is billed")


class Tokens(BaseModel):
    input_tokens: int
    output_tokens: int


class Meta(BaseModel):
    api_version: ApiVersion
    billed_units: BilledUnits
    tokens: Tokens


class RerankResponse(BaseModel):
    id: str = Field(description="the request id")
    model: str
    results: list[RerankResult]
    meta: Meta
    usage: Usage
    timings: Timings
    dropped_documents: int = Field(description="results left out for scoring below min_score")
    truncated_documents: int


class TeiRank(BaseModel):
    index: int
    score: float
    text: str | None = None


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str
    root: str
    parent: str | None = None
    permission: list[Any] = []


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


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
    cached: bool = False


class ApiRerankResponse(BaseModel):
    results: list[ApiRankedDocument]
    model: str
    request_id: str
    dropped_documents: int


class Content(QueryObject):
    """Explain's query and document: a string, or an object with text and/or image."""


def _content_kind(value: Any) -> str | None:
    if isinstance(value, str):
        return "<string>"
    return "<object>" if isinstance(value, dict | QueryObject) else None


ContentValue = Annotated[
    Annotated[str, Tag("<string>")] | Annotated[Content, Tag("<object>")],
    Discriminator(_content_kind, custom_error_type="input",
                  custom_error_message='expected a string or an object with "text" and/or "image"'),
]


class ExplainRequest(BaseModel):
    model_config = _STRICT

    query: ContentValue
    document: ContentValue
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
