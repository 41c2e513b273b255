"""`python -m tests.fault_server FAULT serve-args...`: the real server (the CLI's settings, the app,
the model loaded from --model) with one fault injected through the engine's fault hook
(engine/faults.py), for tests that need a server process to die the way production would.

FAULT `dead-worker`: the GPU worker's first model pass raises an error no batch handler catches (as
a crashed GPU thread or a broken CUDA context would), killing the scheduler.

FAULT `slow-batches SECONDS`: every model batch takes SECONDS longer on the GPU thread (an
overloaded or throttled GPU), so calls are answered, but late: for clients' latency-budget tests
(examples/java-search). The warm-up batches are slowed too, so start-up takes a few times longer.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Sequence

from lychee_grpc.engine.faults import NoFaults
from lychee_grpc.engine.lm.executor import BatchItem


class GpuWorkerDied(BaseException):
    """Not an Exception: nothing on the batch path may swallow it."""


class GpuWorkerDies(NoFaults):
    def model_call(self, items: Sequence[BatchItem]) -> None:
        raise GpuWorkerDied("injected: the GPU worker died")


class SlowBatches(NoFaults):
    def __init__(self, seconds: float):
        self.seconds = seconds

    def model_call(self, items: Sequence[BatchItem]) -> None:
        time.sleep(self.seconds)


def main() -> int:
    fault, args = sys.argv[1], sys.argv[2:]
    if fault == "slow-batches":
        hook: NoFaults = SlowBatches(float(args[0]))
        args = args[1:]
    elif fault == "dead-worker":
        hook = GpuWorkerDies()
    else:
        raise SystemExit(f"unknown fault {fault!r}")
    from lychee_grpc import config as settings
    from lychee_grpc.app import run
    from lychee_grpc.cli.serve import parser
    from lychee_grpc.engine.config import EngineConfig
    from lychee_grpc.engine.engine import Engine
    from lychee_grpc.observability.logs import configure

    parsed = parser().parse_args(args)
    config = settings.build({s.flag: getattr(parsed, s.flag.replace("-", "_")) for s in settings.SETTINGS})
    configure(config.log.level, config.log.format)

    def faulty_engine(engine_config: EngineConfig) -> Engine:
        engine = Engine.load(engine_config)
        engine.inject_faults(hook)
        return engine

    return asyncio.run(run(config, engine_factory=faulty_engine))


if __name__ == "__main__":
    sys.exit(main())
