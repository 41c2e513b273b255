"""An Engine over the RANDOM-weight 7B-shaped model, for worker processes of the benchmark
(`WorkerPool(engine_factory=random_7b_engine)`): each worker builds its own on its device. Only the
benchmark reaches this; the server never serves random weights unless told to load such a
checkpoint."""

from __future__ import annotations

import os

import torch

from lychee_grpc.engine.engine import Engine

from .model import DEFAULT_TINY, SEVEN_B, build_model


def random_7b_engine(config, observer=None) -> Engine:
    tiny = os.environ.get("LYCHEE_TINY_MODEL", DEFAULT_TINY)
    loaded = build_model(tiny, SEVEN_B, dtype=torch.bfloat16, device=config.device or "cuda:0")
    return Engine(config, loaded, observer=observer)
