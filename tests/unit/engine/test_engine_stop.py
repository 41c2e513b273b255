"""A stopped engine holds nothing: once its owner lets it go, its scheduler, executor and
preprocessor (with the GPU memory they hold) can be collected at once, so another engine in the
same process (a benchmark's next variant, a reload) has that memory."""

from __future__ import annotations

import gc
import weakref

from lychee_grpc.engine.api import score_documents
from lychee_grpc.engine.engine import Engine
from lychee_grpc.engine.types import Document, ImagePart, TextPart

from ...helpers import engine_config, noise_image, text_query


async def test_a_stopped_engines_parts_are_collected_when_it_is_let_go(loaded, tiny_model_dir):
    engine = Engine(engine_config(tiny_model_dir), loaded)
    await engine.start()
    docs = [Document(str(k), (ImagePart(noise_image(28, 28, fmt="JPEG", seed=k)), TextPart(f"lamp {k}")))
            for k in range(3)]
    await score_documents(engine, text_query("a red lamp"), docs)
    parts = [weakref.ref(engine.scheduler), weakref.ref(engine.executor), weakref.ref(engine.preprocessor)]
    await engine.stop()
    del engine
    gc.collect()
    assert [part() is None for part in parts] == [True, True, True]
