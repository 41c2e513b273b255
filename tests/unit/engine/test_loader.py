"""The server refuses, with one clear line, any model it cannot serve exactly."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from lychee_grpc.engine.config import EngineConfig
from lychee_grpc.engine.errors import ModelLoadError
from lychee_grpc.engine.model.loader import load_model


def test_tiny_model_loads_and_says_its_weights_are_random(loaded):
    assert loaded.random_weights is True
    assert loaded.yes_id != loaded.no_id
    assert loaded.processor.tokenizer.decode([loaded.yes_id]) == "yes"


def test_missing_folder_is_refused():
    with pytest.raises(ModelLoadError, match="no such checkpoint folder"):
        load_model(EngineConfig(model="/nonexistent/lychee"))


def test_folder_without_config_is_refused(tmp_path):
    with pytest.raises(ModelLoadError, match=r"no config\.json"):
        load_model(EngineConfig(model=str(tmp_path)))


def test_checkpoint_missing_weights_is_refused_not_randomly_filled(tiny_model_dir, tmp_path):
    from safetensors.torch import load_file, save_file

    broken = tmp_path / "broken"
    shutil.copytree(tiny_model_dir, broken)
    weights = broken / "model.safetensors"
    tensors = load_file(str(weights))
    del tensors[next(k for k in tensors if k.endswith("lm_head.weight"))]
    save_file(tensors, str(weights), metadata={"format": "pt"})
    with pytest.raises(ModelLoadError, match="lacks"):
        load_model(EngineConfig(model=str(broken)))


def test_unknown_dtype_is_refused(tiny_model_dir):
    with pytest.raises(ModelLoadError, match="dtype"):
        load_model(EngineConfig(model=tiny_model_dir, dtype="float7"))


def test_serve_exits_nonzero_with_one_line_naming_the_cause(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "lychee_grpc.cli", "serve", "--model", str(tmp_path / "nope"), "--port", "0",
         "--host", "127.0.0.1"],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 1
    # Checked before any port is bound or anything logged: the cause is all the user reads.
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert "cannot start" in proc.stderr and "no such checkpoint folder" in proc.stderr


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0 or not shutil.which("setpriv"),
                    reason="needs root and setpriv to act as another user")
def test_a_checkpoint_file_the_user_cannot_read_is_named(tiny_model_dir):
    """As an image's non-root user meets a root-only weights file: the file and the fix, not "No
    such file or directory" from deep inside the load."""
    folder = Path(tempfile.mkdtemp(prefix="lychee-unreadable-", dir="/tmp"))
    try:
        folder.chmod(0o755)
        for name in ("config.json", "model.safetensors"):
            shutil.copy(Path(tiny_model_dir) / name, folder / name)
            (folder / name).chmod(0o644)
        (folder / "model.safetensors").chmod(0o600)
        code = ("from lychee_grpc.engine.config import EngineConfig\n"
                "from lychee_grpc.engine.model.loader import check_checkpoint\n"
                f"check_checkpoint(EngineConfig(model={str(folder)!r}, device='cpu'))")
        # setpriv (util-linux) rather than subprocess's user=: its exec finds this venv's Python
        nobody = ["setpriv", "--reuid", "65534", "--regid", "65534", "--clear-groups"]
        proc = subprocess.run([*nobody, sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                              cwd=Path(__file__).parents[3])
        assert "ModelLoadError" in proc.stderr, proc.stderr
        assert "model.safetensors" in proc.stderr and "permission denied" in proc.stderr
        assert "uid 65534" in proc.stderr
    finally:
        shutil.rmtree(folder)


def test_tiny_model_config_marks_random_weights(tiny_model_dir):
    assert json.loads((Path(tiny_model_dir) / "config.json").read_text())["lychee_random_weights"] is True
