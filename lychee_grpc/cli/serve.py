"""`lychee-grpc serve`: one flag per setting of `lychee_grpc.config.SETTINGS`, each also read
from its environment variable (a flag wins over its variable)."""

from __future__ import annotations

import argparse
import asyncio
import sys

from .. import config as settings


def parser(environ=None) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="lychee-grpc serve", description="Run the reranking server.")
    env_values = settings.from_env(environ)
    for s in settings.SETTINGS:
        default = env_values.get(s.flag, s.default())
        shown = "" if default in (None, "") else " (set)" if s.secret else f" (default: {default})"
        p.add_argument(f"--{s.flag}", type=s.kind, default=default, choices=s.choices,
                       help=f"{s.help}{shown} [env {s.env}]")
    return p


def main(argv: list[str]) -> int:
    try:
        args = parser().parse_args(argv)
    except ValueError as exc:  # a malformed environment variable
        print(f"lychee-grpc serve: {exc}", file=sys.stderr)
        return 2
    values = {s.flag: getattr(args, s.flag.replace("-", "_")) for s in settings.SETTINGS}
    config = settings.build(values)
    problems = config.problems()
    if problems:
        for problem in problems:
            print(f"lychee-grpc serve: {problem}", file=sys.stderr)
        return 2
    from ..observability.logs import configure

    configure(config.log.level, config.log.format)

    from ..app import run
    from ..engine.errors import ModelLoadError

    try:
        if not config.workers.devices:  # worker processes check their own devices
            from ..engine.model.loader import check_checkpoint

            check_checkpoint(config.engine)  # before any port is bound: a wrong --model is one line
        return asyncio.run(run(config))
    except (ModelLoadError, OSError) as exc:
        print(f"lychee-grpc: cannot start: {exc}", file=sys.stderr)
        return 1
