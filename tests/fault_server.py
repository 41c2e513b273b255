"""`python -m tests.fault_server FAULT serve-args...`: the real CLI server with one fault injected,
for tests that need a server process to die the way production would.

FAULT `dead-worker`: the GPU worker's first batch raises an error no batch handler catches (as
a crashed GPU thread or a broken CUDA context would), killing the scheduler.
"""

from __future__ import annotations

import sys


class GpuWorkerDied(BaseException):
    """Not an Exception: nothing on the batch path may swallow it."""


def main() -> int:
    fault, args = sys.argv[1], sys.argv[2:]
    from lychee_grpc.engine.scheduler import Scheduler

    if fault == "dead-worker":
        def die(self, batch):
            raise GpuWorkerDied("injected: the GPU worker died")

        Scheduler._run_batch = die
    else:
        raise SystemExit(f"unknown fault {fault!r}")
    from lychee_grpc.cli import main as cli

    return cli(["serve", *args])


if __name__ == "__main__":
    sys.exit(main())
