"""lychee.v1.RerankService: protobuf -> service call -> protobuf. Errors, request ids and auth
are the interceptor's (interceptors.py)."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Sequence
from typing import TYPE_CHECKING, Any

import grpc

from ..observability.requests import note_served
from ..proto import lychee_pb2 as pb
from ..proto import lychee_pb2_grpc as pb_grpc
from ..service import Service
from ..service import context as request_context
from ..service.errors import FieldViolation, InvalidInput
from ..service.types import Document, RankedResult
from . import convert

if TYPE_CHECKING:  # grpc's classes are generic in its stubs only
    Context = grpc.aio.ServicerContext[Any, Any]  # each method's messages are typed on the method


def _deadline(context: Context) -> float | None:
    remaining = context.time_remaining()
    # None without a deadline, whatever the stub says.
    return None if remaining is None else time.monotonic() + remaining  # pyright: ignore[reportUnnecessaryComparison]


class RerankServicer(pb_grpc.RerankServiceServicer):  # pyright: ignore[reportUntypedBaseClass]  # generated
    def __init__(self, service: Service):
        self.service = service

    async def Rerank(self, request: pb.RerankRequest, context: Context) -> pb.RerankResponse:
        options = convert.options_from_proto(request, _deadline(context), request_context.request_id.get())
        query = convert.query_from_proto(request.query)
        documents = convert.documents_from_proto(request.documents)
        outcome = await self.service.rerank(query, documents, options)
        note_served(outcome.served)
        return convert.rerank_response(outcome, request.documents if request.return_documents else None)

    async def RerankStream(
        self, request_iterator: AsyncIterator[pb.RerankStreamRequest], context: Context
    ) -> AsyncIterator[pb.RerankStreamResponse]:
        first = await anext(aiter(request_iterator), None)
        if first is None or not first.HasField("options"):
            raise InvalidInput([FieldViolation("options", "the first message must carry the query options")])
        options = convert.options_from_proto(
            first.options, _deadline(context), request_context.request_id.get(), path="options."
        )
        query = convert.query_from_proto(first.options.query)
        sent: list[pb.Document] = []

        async def chunks() -> AsyncIterator[Sequence[Document]]:
            message = first
            while True:
                documents = convert.documents_from_proto(message.documents, len(sent))
                sent.extend(message.documents)
                yield documents
                message = await anext(request_iterator, None)
                if message is None:
                    return
                if message.HasField("options"):
                    raise InvalidInput([FieldViolation("options", "only the first message may carry options")])

        async for event in self.service.rerank_stream(query, options, chunks()):
            if isinstance(event, RankedResult):
                document = sent[event.index] if options.return_documents else None
                yield pb.RerankStreamResponse(scored=convert.result(event, document))
            else:
                note_served(event.served)
                yield pb.RerankStreamResponse(
                    ranking=convert.rerank_response(event, sent if options.return_documents else None)
                )

    async def Explain(self, request: pb.ExplainRequest, context: Context) -> pb.ExplainResponse:
        query, document, options = convert.explain_from_proto(
            request, _deadline(context), request_context.request_id.get()
        )
        return convert.explain_response(await self.service.explain(query, document, options))

    async def GetModelInfo(
        self, request: pb.GetModelInfoRequest, context: Context
    ) -> pb.GetModelInfoResponse:
        return convert.model_info(self.service.model_info())
