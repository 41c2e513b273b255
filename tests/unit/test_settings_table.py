"""The settings table in the README is the one the code generates, row for row."""

from __future__ import annotations

import re
from pathlib import Path

from lychee_grpc import config

DOC = Path(__file__).resolve().parents[2] / "README.md"
MARKED = re.compile(r"<!-- settings:begin -->\n(.*?)\n<!-- settings:end -->", re.S)


def test_the_documented_settings_table_equals_the_generated_one():
    match = MARKED.search(DOC.read_text())
    assert match, f"{DOC} has no <!-- settings:begin --> ... <!-- settings:end --> section"
    assert match.group(1).strip() == config.markdown_table().strip(), (
        "the settings table is stale: regenerate it with `python -m lychee_grpc.config`")


def test_every_setting_has_a_row_with_its_flag_and_environment_variable():
    table = config.markdown_table()
    for setting in config.SETTINGS:
        assert f"| `--{setting.flag}` | `{setting.env}` |" in table
