"""The client side of the CLI never loads torch or transformers: `lychee-grpc --help`, `rerank`,
`info` and `import lychee_grpc.cli` run on a laptop without the model's stack."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

PROBE = """
import contextlib, io, json, sys
from lychee_grpc.cli import main
argv = sys.argv[1:]
if argv:
    with contextlib.suppress(SystemExit), contextlib.redirect_stdout(io.StringIO()), \\
            contextlib.redirect_stderr(io.StringIO()):
        main(argv)
print(json.dumps(sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "transformers", "torchvision"))))
"""

@pytest.mark.parametrize(
    "argv",
    [
        [],  # import lychee_grpc.cli
        ["--help"],
        ["rerank", "--help"],
        ["info", "--help"],
        # A real call to a port where nothing listens: the client runs, fails to connect, exits.
        ["rerank", "--target", "127.0.0.1:9", "--query", "q", "--doc", "d", "--timeout", "0.5"],
        ["info", "--target", "127.0.0.1:9", "--timeout", "0.5"],
        ["eval", "--help"],
    ],
    ids=lambda argv: " ".join(argv) or "import",
)
def test_client_commands_load_neither_torch_nor_transformers(argv):
    out = subprocess.run([sys.executable, "-c", PROBE, *argv], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    loaded = json.loads(out.stdout.strip().splitlines()[-1])
    assert loaded == [], f"`lychee-grpc {' '.join(argv)}` imported {loaded}"
