"""Every in-place change the engine makes to a loaded transformers model, in one function.

The loader and the benchmark harness both call `prepare_model`, so a model benchmarked is a
model served. The forwards themselves are never replaced: the LM forward (lm/executor.py) and
the vision forward (vision/tower.py) are the engine's own code, calling the model's weights.
"""

from __future__ import annotations

import logging

from ..vision.mlp import align_vision_mlp

log = logging.getLogger(__name__)


def prepare_model(model) -> list[str]:
    """Puts a Qwen2.5-VL model in the state the engine serves: eval mode, the vision MLP padded
    to an aligned width. Returns a line per change made, for the log."""
    changes: list[str] = []
    model.eval()
    if width := align_vision_mlp(model.model.visual):
        changes.append(f"vision MLP zero-padded to width {width} for aligned GEMMs")
    for change in changes:
        log.info("%s", change)
    return changes
