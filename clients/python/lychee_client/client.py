"""Python clients (sync and asyncio) for lychee.v1.RerankService.

    from lychee_client import LycheeClient, text, image
    with LycheeClient("localhost:50051") as client:
        response = client.rerank("retro denim jacket", ["vintage wash jeans coat", "green tea"])
        for r in response.results:
            print(r.index, r.score)

Over TLS with a bearer token (`certificate_chain`/`private_key` add a client certificate):

    LycheeClient("rerank.internal:50051", root_certificates="ca.pem", bearer_token=token)
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, Iterator, Sequence
from pathlib import Path

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from .proto import lychee_pb2 as pb
from .proto import lychee_pb2_grpc as pb_grpc

PartLike = str | bytes | pb.Part
QueryLike = str | pb.Query | Sequence[PartLike]
DocumentLike = str | pb.Document | Sequence[PartLike]

_RETRY_UNAVAILABLE = (
    '{"methodConfig": [{"name": [{"service": "lychee.v1.RerankService"}], "retryPolicy": {'
    '"maxAttempts": 4, "initialBackoff": "0.2s", "maxBackoff": "2s", "backoffMultiplier": 2,'
    '"retryableStatusCodes": ["UNAVAILABLE"]}}]}'
)


def band_name(band: int) -> str:
    """'strong', 'medium' or 'weak' for a RelevanceBand value."""
    return pb.RelevanceBand.Name(band).removeprefix("RELEVANCE_BAND_").lower()


def text(value: str) -> pb.Part:
    return pb.Part(text=value)


def image(data: bytes | str | Path) -> pb.Part:
    """An image part from encoded bytes or a file path."""
    if isinstance(data, (str, Path)):
        data = Path(data).read_bytes()
    return pb.Part(image=data)


def _part(value: PartLike) -> pb.Part:
    if isinstance(value, pb.Part):
        return value
    if isinstance(value, str):
        return text(value)
    if isinstance(value, (bytes, bytearray)):
        return image(bytes(value))
    raise TypeError(f"a part is text (str), image (bytes) or lychee.v1.Part, not {type(value).__name__}")


def make_query(query: QueryLike) -> pb.Query:
    if isinstance(query, pb.Query):
        return query
    if isinstance(query, str):
        return pb.Query(parts=[text(query)])
    return pb.Query(parts=[_part(p) for p in query])


def make_document(doc: DocumentLike, id: str = "") -> pb.Document:
    if isinstance(doc, pb.Document):
        return doc
    if isinstance(doc, str):
        return pb.Document(id=id, parts=[text(doc)])
    return pb.Document(id=id, parts=[_part(p) for p in doc])


_TRUNCATION = {None: pb.TRUNCATION_UNSPECIFIED, "none": pb.TRUNCATION_NONE, "end": pb.TRUNCATION_END}


def make_request(
    query: QueryLike,
    documents: Iterable[DocumentLike],
    instruction: str = "",
    top_n: int = 0,
    return_documents: bool = False,
    *,
    min_score: float | None = None,
    truncation: str | None = None,
    max_tokens_per_document: int = 0,
) -> pb.RerankRequest:
    """`truncation`: None (the server's default), "none" (refuse over-long documents) or "end"
    (keep the first tokens that fit); `min_score` leaves out results scoring below it."""
    request = pb.RerankRequest(
        query=make_query(query),
        documents=[make_document(d, str(i)) for i, d in enumerate(documents)],
        instruction=instruction,
        top_n=top_n,
        return_documents=return_documents,
        truncation=_TRUNCATION[truncation],
        max_tokens_per_document=max_tokens_per_document,
    )
    if min_score is not None:
        request.min_score = min_score
    return request


def make_explain_request(
    query: QueryLike, document: DocumentLike, instruction: str = "", grid_size: int = 0, include_query: bool = False
) -> pb.ExplainRequest:
    return pb.ExplainRequest(
        query=make_query(query),
        document=make_document(document),
        instruction=instruction,
        grid_size=grid_size,
        include_query=include_query,
    )


def field_violations(error: grpc.RpcError) -> list[tuple[str, str]]:
    """(field path, description) of each google.rpc.BadRequest violation an error carries."""
    return [(v.field, v.description) for v in _details(error, error_details_pb2.BadRequest)
            for v in v.field_violations]


def retry_after(error: grpc.RpcError) -> float | None:
    """Seconds the server asks to wait (google.rpc.RetryInfo on RESOURCE_EXHAUSTED), or None."""
    for info in _details(error, error_details_pb2.RetryInfo):
        return info.retry_delay.ToMilliseconds() / 1000
    return None


def _details(error: grpc.RpcError, kind):
    status = rpc_status.from_call(error) if hasattr(error, "trailing_metadata") else None
    out = []
    for detail in status.details if status is not None else ():
        message = kind()
        if detail.Unpack(message):
            out.append(message)
    return out


def _options(max_message_bytes: int) -> list[tuple[str, object]]:
    return [
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.service_config", _RETRY_UNAVAILABLE),
        ("grpc.enable_retries", 1),
    ]


Pem = bytes | str | Path


def _pem(value: Pem | None) -> bytes | None:
    """PEM bytes as given, or read from a path."""
    if value is None or isinstance(value, bytes):
        return value
    return Path(value).read_bytes()


def channel_credentials(
    credentials: grpc.ChannelCredentials | None = None,
    root_certificates: Pem | None = None,
    certificate_chain: Pem | None = None,
    private_key: Pem | None = None,
) -> grpc.ChannelCredentials | None:
    """`credentials` when given; else TLS when any PEM is given (the system's roots unless
    `root_certificates`; a client certificate for mutual TLS with `certificate_chain` and
    `private_key`); else None (plaintext)."""
    if credentials is not None:
        return credentials
    if root_certificates is None and certificate_chain is None and private_key is None:
        return None
    if (certificate_chain is None) != (private_key is None):
        raise ValueError("certificate_chain and private_key go together (mutual TLS): give both or neither")
    return grpc.ssl_channel_credentials(_pem(root_certificates), _pem(private_key), _pem(certificate_chain))


def _call_metadata(bearer_token: str | None) -> tuple[tuple[str, str], ...]:
    # Plain metadata rather than call credentials: grpc sends call credentials only over TLS, and
    # a server may take tokens without it (behind a TLS-terminating proxy).
    return (("authorization", f"Bearer {bearer_token}"),) if bearer_token else ()


def _stream_requests(
    query: QueryLike, chunks: Iterable[Iterable[DocumentLike]], instruction: str, top_n: int
) -> Iterator[pb.RerankStreamRequest]:
    yield pb.RerankStreamRequest(
        options=pb.StreamOptions(query=make_query(query), instruction=instruction, top_n=top_n)
    )
    for chunk in chunks:
        yield pb.RerankStreamRequest(documents=[make_document(d) for d in chunk])


class LycheeClient:
    """Blocking client. `timeout` is the default per-call deadline in seconds."""

    def __init__(
        self,
        target: str,
        timeout: float | None = 30.0,
        credentials: grpc.ChannelCredentials | None = None,
        max_message_bytes: int = 256 * 1024 * 1024,
        *,
        root_certificates: Pem | None = None,
        certificate_chain: Pem | None = None,
        private_key: Pem | None = None,
        bearer_token: str | None = None,
    ):
        options = _options(max_message_bytes)
        credentials = channel_credentials(credentials, root_certificates, certificate_chain, private_key)
        self.channel = (
            grpc.secure_channel(target, credentials, options=options)
            if credentials
            else grpc.insecure_channel(target, options=options)
        )
        self.stub = pb_grpc.RerankServiceStub(self.channel)
        self.timeout = timeout
        self.metadata = _call_metadata(bearer_token)

    def rerank(
        self,
        query: QueryLike,
        documents: Iterable[DocumentLike],
        instruction: str = "",
        top_n: int = 0,
        return_documents: bool = False,
        timeout: float | None = None,
        *,
        min_score: float | None = None,
        truncation: str | None = None,
        max_tokens_per_document: int = 0,
    ) -> pb.RerankResponse:
        request = make_request(query, documents, instruction, top_n, return_documents, min_score=min_score,
                               truncation=truncation, max_tokens_per_document=max_tokens_per_document)
        return self.stub.Rerank(request, timeout=timeout or self.timeout, metadata=self.metadata)

    def explain(
        self,
        query: QueryLike,
        document: DocumentLike,
        instruction: str = "",
        grid_size: int = 0,
        include_query: bool = False,
        timeout: float | None = None,
    ) -> pb.ExplainResponse:
        """The score of one pair and each fragment's attribution (score drop when it is removed)."""
        request = make_explain_request(query, document, instruction, grid_size, include_query)
        return self.stub.Explain(request, timeout=timeout or self.timeout, metadata=self.metadata)

    def rerank_stream(
        self,
        query: QueryLike,
        chunks: Iterable[Iterable[DocumentLike]],
        instruction: str = "",
        top_n: int = 0,
        timeout: float | None = None,
    ) -> Iterator[pb.RerankStreamResponse]:
        """Sends documents in chunks; yields a `scored` event per document, then `ranking`."""
        return self.stub.RerankStream(
            _stream_requests(query, chunks, instruction, top_n),
            timeout=timeout or self.timeout,
            metadata=self.metadata,
        )

    def model_info(self, timeout: float | None = None) -> pb.GetModelInfoResponse:
        return self.stub.GetModelInfo(
            pb.GetModelInfoRequest(), timeout=timeout or self.timeout, metadata=self.metadata
        )

    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> LycheeClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class AsyncLycheeClient:
    """asyncio client; same methods as LycheeClient, awaitable."""

    def __init__(
        self,
        target: str,
        timeout: float | None = 30.0,
        credentials: grpc.ChannelCredentials | None = None,
        max_message_bytes: int = 256 * 1024 * 1024,
        *,
        root_certificates: Pem | None = None,
        certificate_chain: Pem | None = None,
        private_key: Pem | None = None,
        bearer_token: str | None = None,
    ):
        options = _options(max_message_bytes)
        credentials = channel_credentials(credentials, root_certificates, certificate_chain, private_key)
        self.channel = (
            grpc.aio.secure_channel(target, credentials, options=options)
            if credentials
            else grpc.aio.insecure_channel(target, options=options)
        )
        self.stub = pb_grpc.RerankServiceStub(self.channel)
        self.timeout = timeout
        self.metadata = _call_metadata(bearer_token)

    async def rerank(
        self,
        query: QueryLike,
        documents: Iterable[DocumentLike],
        instruction: str = "",
        top_n: int = 0,
        return_documents: bool = False,
        timeout: float | None = None,
        *,
        min_score: float | None = None,
        truncation: str | None = None,
        max_tokens_per_document: int = 0,
    ) -> pb.RerankResponse:
        request = make_request(query, documents, instruction, top_n, return_documents, min_score=min_score,
                               truncation=truncation, max_tokens_per_document=max_tokens_per_document)
        return await self.stub.Rerank(request, timeout=timeout or self.timeout, metadata=self.metadata)

    async def explain(
        self,
        query: QueryLike,
        document: DocumentLike,
        instruction: str = "",
        grid_size: int = 0,
        include_query: bool = False,
        timeout: float | None = None,
    ) -> pb.ExplainResponse:
        """The score of one pair and each fragment's attribution (score drop when it is removed)."""
        request = make_explain_request(query, document, instruction, grid_size, include_query)
        return await self.stub.Explain(request, timeout=timeout or self.timeout, metadata=self.metadata)

    def rerank_stream(
        self,
        query: QueryLike,
        chunks: Iterable[Iterable[DocumentLike]],
        instruction: str = "",
        top_n: int = 0,
        timeout: float | None = None,
    ) -> AsyncIterator[pb.RerankStreamResponse]:
        return self.stub.RerankStream(
            _stream_requests(query, chunks, instruction, top_n),
            timeout=timeout or self.timeout,
            metadata=self.metadata,
        )

    async def model_info(self, timeout: float | None = None) -> pb.GetModelInfoResponse:
        return await self.stub.GetModelInfo(
            pb.GetModelInfoRequest(), timeout=timeout or self.timeout, metadata=self.metadata
        )

    async def close(self) -> None:
        await self.channel.close()

    async def __aenter__(self) -> AsyncLycheeClient:
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()


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
    "retry_after",
    "text",
]
