"""Plain helpers shared by the tests (fixtures live in conftest.py): engine settings, image
bytes, request builders, error details, free ports and health checks, and fault hooks."""

from __future__ import annotations

import io
import random
import socket
import struct
import subprocess
import time
import zlib
from collections.abc import Sequence
from pathlib import Path

import grpc
import torch
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_status import rpc_status
from PIL import Image

from lychee_grpc.engine.api import EngineClient
from lychee_grpc.engine.config import EngineConfig, ImageLimits, TextLimits
from lychee_grpc.engine.engine import Engine
from lychee_grpc.engine.faults import NoFaults
from lychee_grpc.engine.lm.executor import BatchItem
from lychee_grpc.engine.stats import EngineStats
from lychee_grpc.engine.types import Document, ImagePart, Query, TextPart
from lychee_grpc.engine.util.graphs import Captured

ROOT = Path(__file__).resolve().parent.parent

TITLES = ["vintage wash blue jeans coat", "organic green tea", "denim jacket women", "running shoes", "grey sofa"]


def noise_image(width: int, height: int, fmt: str = "PNG", seed: int = 0) -> bytes:
    rng = random.Random(seed)
    img = Image.frombytes("RGB", (width, height), bytes(rng.randrange(256) for _ in range(width * height * 3)))
    buf = io.BytesIO()
    img.save(buf, fmt)
    return buf.getvalue()


def solid_image(width: int, height: int, color=(200, 30, 30), fmt: str = "PNG", **save) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (width, height), color).save(buf, fmt, **save)
    return buf.getvalue()


def png_declaring(width: int, height: int) -> bytes:
    """A PNG whose header declares width x height but carries almost no pixel data."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = chunk(b"IDAT", zlib.compress(b"\x00" * 16))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + idat + chunk(b"IEND", b"")


def text_query(text: str) -> Query:
    return Query((TextPart(text),))


def text_docs(*texts: str) -> list[Document]:
    return [Document(f"d{i}", (TextPart(t),)) for i, t in enumerate(texts)]


# Query/document shapes the product promises: text-text, image-text, text-image, mixed-mixed.
def pair_cases() -> dict[str, tuple[Query, list[Document]]]:
    img_a, img_b, img_c = noise_image(64, 96, seed=1), noise_image(112, 56, seed=2), noise_image(80, 80, seed=3)
    return {
        "text-text": (
            text_query("retro denim jacket"),
            text_docs("vintage wash blue jeans coat women", "organic green tea gift box", "denim jacket"),
        ),
        "text-image": (
            text_query("grey fabric sofa"),
            [Document("a", (ImagePart(img_a),)), Document("b", (ImagePart(img_b),))],
        ),
        "image-text": (
            Query((ImagePart(img_c),)),
            text_docs("three seater modern sofa", "running shoes men breathable"),
        ),
        "mixed-mixed": (
            Query((ImagePart(img_c), TextPart("same sofa under 5000"))),
            [
                Document("m0", (ImagePart(img_a), TextPart("grey sofa, 4999"), TextPart(" free delivery"))),
                Document("m1", (TextPart("sofa: "), ImagePart(img_b), TextPart("linen"), ImagePart(img_a))),
                Document("m2", (TextPart("wireless earbuds"),)),
            ],
        ),
    }


def engine_config(model: str, **overrides) -> EngineConfig:
    """Small limits for the tiny model on the CPU (as the `loaded` fixture); `overrides` set any
    other EngineConfig field."""
    base = dict(
        model=model,
        device="cpu",
        max_documents_per_request=150,
        text_limits=TextLimits(max_tokens_per_document=512, max_query_tokens=512, max_instruction_tokens=64),
        image_limits=ImageLimits(max_bytes=2 * 1024 * 1024, max_pixels=4_000_000),
        warmup=False,
    )
    base.update(overrides)
    return EngineConfig(**base)


def stats_of(engine: EngineClient) -> EngineStats:
    """The stats of an engine on one device (`stats()` gives one snapshot per device)."""
    (stats,) = engine.stats()
    return stats


# ---- gRPC error details, ports, health -------------------------------------------------------
def field_violations(err: grpc.RpcError) -> list[tuple[str, str]]:
    """The (field, description) pairs of an error's google.rpc BadRequest detail."""
    status = rpc_status.from_call(err)
    assert status is not None, "no google.rpc.Status details"
    out: list[tuple[str, str]] = []
    for detail in status.details:
        bad = error_details_pb2.BadRequest()
        if detail.Unpack(bad):
            out += [(v.field, v.description) for v in bad.field_violations]
    return out


def violated_fields(err: grpc.RpcError) -> list[str]:
    return [field for field, _ in field_violations(err)]


def retry_delay(err: grpc.RpcError) -> float:
    """The RetryInfo delay of a refused call, in seconds."""
    status = rpc_status.from_call(err)
    assert status is not None, "no google.rpc.Status details"
    for detail in status.details:
        info = error_details_pb2.RetryInfo()
        if detail.Unpack(info):
            return info.retry_delay.ToTimedelta().total_seconds()
    raise AssertionError("no RetryInfo in the status details")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def health_status(channel: grpc.Channel, service: str = "") -> int:
    stub = health_pb2_grpc.HealthStub(channel)
    return stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=2).status


# ---- faults, through the engine's one hook (engine/faults.py) --------------------------------
class SlowBatches(NoFaults):
    """Each model pass takes `seconds` longer (on the GPU thread, as a slow GPU would)."""

    def __init__(self, seconds: float):
        self.seconds = seconds

    def model_call(self, items: Sequence[BatchItem]) -> None:
        time.sleep(self.seconds)


def slow_batches(engine: Engine | None, seconds: float) -> None:
    assert engine is not None, "an in-process engine"
    engine.inject_faults(SlowBatches(seconds))


class OutOfMemoryAbove(NoFaults):
    """A model pass over more than `sequences` sequences runs out of memory (a small GPU)."""

    def __init__(self, sequences: int):
        self.sequences = sequences

    def model_call(self, items: Sequence[BatchItem]) -> None:
        if len(items) > self.sequences:
            raise torch.OutOfMemoryError("injected: CUDA out of memory")


class OutOfMemoryAlone(NoFaults):
    """The first `times` model passes over a single document run out of memory (a shortage that
    passes: fragments, another batch in flight)."""

    def __init__(self, times: int):
        self.times = times

    def model_call(self, items: Sequence[BatchItem]) -> None:
        if sum(item.score for item in items) == 1 and self.times > 0:
            self.times -= 1
            raise torch.OutOfMemoryError("injected: CUDA out of memory")


def wait_serving(proc: subprocess.Popen, address: str, label: str = "server", timeout: float = 120) -> None:
    """Until the server process at `address` answers SERVING to a health check (it may still be
    loading); fails at once if the process exits."""
    channel = grpc.insecure_channel(address)
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"{label} exited with {proc.returncode}")
            try:
                status = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=2)
                if status.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            time.sleep(0.2)
        raise TimeoutError(f"{label} never became SERVING")
    finally:
        channel.close()


class CallingCapturer:
    """A GraphCapturer stand-in (CUDA graphs need a GPU): its "graph" calls the captured function
    again at each replay; `shift` is added to what it returns (a graph that went wrong), `fail`
    makes the capture raise. It counts captures and replays."""

    def __init__(self, shift: float = 0.0, fail: bool = False):
        self.count = 0
        self.replays = 0
        self.shift = shift
        self.fail = fail

    def capture(self, fn):
        if self.fail:
            raise RuntimeError("operation not permitted when stream is capturing")
        self.count += 1
        holder = Captured(graph=None, outputs=None, fn=fn)

        def replay():
            self.replays += 1
            return fn() + self.shift

        holder.replay = replay  # type: ignore[method-assign]
        return holder
