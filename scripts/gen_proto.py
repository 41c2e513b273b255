"""Generates the Python stubs of proto/lychee.proto into the client package,
clients/python/lychee_client/proto/ (build step; the generated files are not checked in). The
server imports that one copy through lychee_grpc.proto."""

from __future__ import annotations

import re
import sys
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "clients" / "python" / "lychee_client" / "proto"


def main() -> int:
    OUT.mkdir(parents=True, exist_ok=True)
    import grpc_tools

    include = Path(grpc_tools.__file__).parent / "_proto"
    code = protoc.main(
        [
            "protoc",
            f"-I{ROOT / 'proto'}",
            f"-I{include}",
            f"--python_out={OUT}",
            f"--pyi_out={OUT}",
            f"--grpc_python_out={OUT}",
            str(ROOT / "proto" / "lychee.proto"),
        ]
    )
    if code != 0:
        return code
    grpc_file = OUT / "lychee_pb2_grpc.py"
    # protoc writes an absolute import; the stubs live inside the client package.
    grpc_file.write_text(re.sub(r"^import lychee_pb2", "from . import lychee_pb2", grpc_file.read_text(), flags=re.M))
    (OUT / "__init__.py").write_text('"""Generated from proto/lychee.proto by scripts/gen_proto.py."""\n')
    return 0


if __name__ == "__main__":
    sys.exit(main())
