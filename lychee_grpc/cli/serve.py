"""`lychee-grpc serve`: one flag per setting of `lychee_grpc.config.SETTINGS`, each also read
from its environment variable (a flag wins over its variable)."""

from __future__ import annotations

import argparse
import asyncio
import sys

from .. import config as settings


def parser(environ=None) -> argparse.ArgumentParser:
    built = argparse.ArgumentParser(prog="lychee-grpc serve", description="Run the reranking server.")
    env_values = settings.from_env(environ)
    for setting in settings.SETTINGS:
        default = env_values.get(setting.flag, setting.default())
        shown = "" if default in (None, "") else " (set)" if setting.secret else f" (default: {default})"
        built.add_argument(f"--{setting.flag}", type=setting.kind, default=default, choices=setting.choices,
                           help=f"{setting.help}{shown} [env {setting.env}]")
    return built


def main(argv: list[str]) -> int:
    try:
        args = parser().parse_args(argv)
    except ValueError as exc:  # a malformed environment variable
        print(f"lychee-grpc serve: {exc}", file=sys.stderr)
        return 2
    values = {setting.flag: getattr(args, setting.flag.replace("-", "_")) for setting in settings.SETTINGS}
    config = settings.build(values)
    from ..security import problems as security_problems  # reads the TLS and token files

    problems = config.problems() + security_problems(config.security)
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
