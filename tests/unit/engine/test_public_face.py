"""The engine's public names import lazily: the light ones load no torch or transformers."""

from __future__ import annotations

import json
import subprocess
import sys

import lychee_grpc.engine as engine


def test_light_names_import_without_torch_or_transformers():
    code = (
        "import json, sys\n"
        "from lychee_grpc.engine import Query, EngineConfig, InvalidInput, TextLimits, ImageLimits, EngineStats\n"
        "print(json.dumps(sorted(m for m in ('torch', 'transformers', 'PIL') if m in sys.modules)))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.strip().splitlines()[-1]) == []


def test_every_public_name_resolves():
    for name in engine.__all__:
        assert getattr(engine, name) is not None, name
    assert "Engine" in dir(engine)


def test_an_unknown_name_is_an_attribute_error():
    try:
        engine.NoSuchThing  # noqa: B018
    except AttributeError as exc:
        assert "NoSuchThing" in str(exc)
    else:
        raise AssertionError("expected AttributeError")
