"""The warm-up runs, before serving, every kind of batch a request can meet: its documents with
the prefix computed inline, a single document, and a later batch reading a stored prefix."""

from __future__ import annotations

from collections.abc import Sequence

from lychee_grpc.engine.engine import Engine
from lychee_grpc.engine.faults import NoFaults
from lychee_grpc.engine.lm.executor import BatchItem, PrefixKV

from ...helpers import engine_config


async def test_warm_up_covers_inline_single_document_and_stored_prefix_batches(loaded, tiny_model_dir):
    engine = Engine(engine_config(tiny_model_dir, warmup=True), loaded)
    passes: list[list[BatchItem]] = []

    class Recording(NoFaults):
        def model_call(self, items: Sequence[BatchItem]) -> None:
            passes.append(list(items))

    engine.inject_faults(Recording())
    await engine.start()
    try:
        assert engine.ready
        scored = [[item for item in items if item.score] for items in passes]
        assert any(len(s) >= 2 for s in scored), "no batch of several documents"
        assert any(len(s) == 1 for s in scored), "no batch of one document"
        assert any(isinstance(item.context, int) for items in passes for item in items), "no inline prefix"
        assert any(isinstance(item.context, PrefixKV) for items in passes for item in items), \
            "no batch reading a prefix stored by an earlier one"
        assert any(item.segment.images for items in passes for item in items), "no image"
    finally:
        await engine.stop()
