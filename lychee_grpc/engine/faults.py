"""The one fault-injection hook: how tests make the engine slow, run out of GPU memory or die,
through a seam instead of by replacing its methods. `Engine.inject_faults(hook)` hands it to the
scheduler, which calls it at the two places a fault can strike; a server never sets one.

- `batch_formed(documents)`: on the event loop, in the scheduler's loop, once a batch is taken
  from the queue. Anything it raises kills the scheduler (as a bug in its loop would): every
  waiting call fails UNAVAILABLE and the engine's `on_failure` callbacks run.
- `model_call(items)`: on the GPU thread, before each packed forward (`Executor.run`) over
  `items` (the batch's sequences, inline prefixes included). Sleeping here slows batches; `torch.OutOfMemoryError`
  is handled as a real one (prefixes alone, then halves); another Exception fails the batch's
  calls as INTERNAL; a BaseException kills the GPU worker, as a crashed CUDA context would.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from .lm.executor import BatchItem


class FaultHook(Protocol):
    def batch_formed(self, documents: int) -> None: ...

    def model_call(self, items: Sequence[BatchItem]) -> None: ...


class NoFaults:
    """A FaultHook that injects nothing; subclass it to override one of the two steps."""

    def batch_formed(self, documents: int) -> None:
        pass

    def model_call(self, items: Sequence[BatchItem]) -> None:
        pass
