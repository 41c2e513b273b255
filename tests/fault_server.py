"""`python -m tests.fault_server FAULT serve-args...`: the real CLI server with one fault injected,
for tests that need a server process to die the way production would.

FAULT `dead-worker`: the GPU worker's first batch raises an error no batch handler catches (as
a crashed GPU thread or a broken CUDA context would), killing the scheduler.

FAULT `slow-batches SECONDS`: every model batch takes SECONDS longer on the GPU thread (an
overloaded or throttled GPU), so calls are answered, but late: for clients' latency-budget tests
(examples/java-search). The warm-up batches are slowed too, so start-up takes a few times longer.
"""

from __future__ import annotations

import sys


class GpuWorkerDied(BaseException):
    """Not an Exception: nothing on the batch path may swallow it."""


def main() -> int:
    fault, args = sys.argv[1], sys.argv[2:]
    from lychee_grpc.engine.scheduler import Scheduler

    if fault == "slow-batches":
        import time

        delay, args = float(args[0]), args[1:]
        run_batch = Scheduler._run_batch

        def slow(self, batch):
            time.sleep(delay)
            return run_batch(self, batch)

        Scheduler._run_batch = slow
    elif fault == "dead-worker":
        def die(self, batch):
            raise GpuWorkerDied("injected: the GPU worker died")

        Scheduler._run_batch = die
    else:
        raise SystemExit(f"unknown fault {fault!r}")
    from lychee_grpc.cli import main as cli

    return cli(["serve", *args])


if __name__ == "__main__":
    sys.exit(main())
