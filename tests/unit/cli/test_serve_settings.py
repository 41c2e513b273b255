"""`lychee-grpc serve` refuses settings it cannot run with before loading anything, naming the
setting: here, a cache bound below 0 from a flag or from the environment."""

from __future__ import annotations

import pytest

from lychee_grpc.cli.serve import main


@pytest.mark.parametrize("flag", ["--token-cache-mib", "--score-cache-mib", "--vision-cache-mib"])
def test_a_negative_cache_bound_is_refused_by_name(flag, capsys):
    assert main(["--model", "no-such-model", flag, "-5"]) == 2
    err = capsys.readouterr().err
    assert f"{flag} must be 0 or more (0 turns the cache off), not -5" in err


def test_a_negative_bound_from_the_environment_is_refused_too(monkeypatch, capsys):
    monkeypatch.setenv("LYCHEE_TOKEN_CACHE_MIB", "-1")
    assert main(["--model", "no-such-model"]) == 2
    assert "--token-cache-mib must be 0 or more" in capsys.readouterr().err
