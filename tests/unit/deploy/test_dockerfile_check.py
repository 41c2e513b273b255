"""scripts/check_dockerfile.py catches each way the Dockerfile can drift from its build context."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
DOCKERFILE = ROOT / "Dockerfile"


def _load_checker():
    spec = importlib.util.spec_from_file_location("check_dockerfile", ROOT / "scripts" / "check_dockerfile.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


checker = _load_checker()


@pytest.fixture(scope="module")
def settings() -> set[str]:
    return checker.settings_from_help(ROOT, "lychee-grpc", ["serve"])


def _variant(tmp_path: Path, old: str, new: str) -> Path:
    text = DOCKERFILE.read_text()
    assert old in text, f"the Dockerfile no longer contains {old!r}; update this test"
    path = tmp_path / "Dockerfile"
    path.write_text(text.replace(old, new, 1))
    return path


def _problems(path: Path, settings: set[str], *, build: bool = False) -> str:
    return "\n".join(checker.check(ROOT, path, build=build, settings=settings))


def test_cli_help_lists_the_settings_the_image_relies_on(settings):
    assert {"LYCHEE_MODEL", "LYCHEE_HOST", "LYCHEE_PORT", "LYCHEE_GRACE_SECONDS"} <= settings


def test_repository_dockerfile_is_consistent_and_its_copies_build_a_wheel_with_stubs():
    assert checker.check(ROOT, DOCKERFILE, build=True) == []


def test_copy_of_a_missing_source_is_caught(tmp_path, settings):
    path = _variant(tmp_path, "COPY scripts/gen_proto.py scripts/", "COPY scripts/gen_protos.py scripts/")
    assert "'scripts/gen_protos.py' does not exist" in _problems(path, settings)


def test_copy_of_a_source_excluded_by_dockerignore_is_caught(tmp_path, settings):
    path = _variant(tmp_path, "COPY lychee_grpc/ lychee_grpc/", "COPY lychee_grpc/ lychee_grpc/\nCOPY bench/ bench/")
    assert "'bench/' is entirely excluded by .dockerignore" in _problems(path, settings)


def test_a_build_input_left_uncopied_is_caught(tmp_path, settings):
    path = _variant(tmp_path, "COPY README.md ./\n", "")
    assert "README.md is needed to build the package" in _problems(path, settings)


def test_entrypoint_that_is_not_a_console_script_is_caught(tmp_path, settings):
    path = _variant(tmp_path, 'ENTRYPOINT ["lychee-grpc", "serve"]', 'ENTRYPOINT ["lychee", "serve"]')
    assert "'lychee', which is not a console script" in _problems(path, settings)


def test_shell_form_entrypoint_is_caught(tmp_path, settings):
    path = _variant(tmp_path, 'ENTRYPOINT ["lychee-grpc", "serve"]', "ENTRYPOINT lychee-grpc serve")
    assert "ENTRYPOINT must be exec form" in _problems(path, settings)


def test_env_that_is_not_a_setting_is_caught(tmp_path, settings):
    path = _variant(tmp_path, "LYCHEE_PORT=50051", "LYCHEE_PORT=50051 \\\n    LYCHEE_GRPC_PORT=50051")
    assert "ENV LYCHEE_GRPC_PORT is not a setting" in _problems(path, settings)


def test_root_user_is_caught(tmp_path, settings):
    path = _variant(tmp_path, "USER 10001:10001", "USER root")
    assert "non-root USER" in _problems(path, settings)


def test_unexposed_grpc_port_is_caught(tmp_path, settings):
    path = _variant(tmp_path, "EXPOSE 50051 8080 9000", "EXPOSE 8080 9000")
    assert "LYCHEE_PORT=50051 is not EXPOSEd" in _problems(path, settings)


def test_stubs_generated_after_the_install_are_caught(tmp_path, settings):
    path = _variant(
        tmp_path,
        "RUN python scripts/gen_proto.py \\\n && pip install --no-deps ./clients/python . \\",
        "RUN pip install --no-deps ./clients/python . \\\n && python scripts/gen_proto.py \\",
    )
    assert "the wheel built here lacks lychee_client/proto/lychee_pb2_grpc.py" in _problems(path, settings, build=True)
