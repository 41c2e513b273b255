"""The shell commands the README and its quick-start docs show name things that exist: every
`make` target is in the Makefile, every repository path in a command is in the repository, and
every `lychee-grpc` command line parses with the CLI's own parsers (flags, subcommands, choices)."""

from __future__ import annotations

import contextlib
import importlib.util
import io
import re
import shlex
import subprocess
from pathlib import Path

import pytest

from lychee_grpc.cli import _parser as cli_parser
from lychee_grpc.cli.serve import parser as serve_parser

ROOT = Path(__file__).resolve().parents[2]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), *sorted((ROOT / "examples").glob("*/README.md"))]
FENCE = re.compile(r"^```(bash|sh|shell)\n(.*?)^```", re.S | re.M)
# Folders of this repository; a path under one of them, in a command, must exist.
TOP = "|".join(re.escape(p.name) for p in ROOT.iterdir() if p.is_dir() and not p.name.startswith("."))
REPO_PATH = re.compile(rf"(?<![\w./-])(?:{TOP})/[\w./-]*[\w/]")
MAKE = re.compile(r"(?<![\w-])make ((?:-[\w]+ \S+ )*)([a-z][\w-]*)")
IMAGE = re.compile(r"(?<![\w./-])[\w./-]+\.(?:jpg|jpeg|png|webp|gif)\b")
MODULE = re.compile(r"python -m ([\w.]+)")


def _commands(doc: Path) -> list[tuple[str, str]]:
    """(where, command) for each command line of the doc's shell blocks, continuation lines joined,
    comments and here-documents dropped."""
    found = []
    for block in FENCE.finditer(doc.read_text()):
        line_no = doc.read_text()[: block.start()].count("\n") + 2
        text = re.sub(r"<<(\w+)\n.*?^\1$", "", block.group(2), flags=re.S | re.M)
        for command in re.sub(r"\\\n", " ", text).splitlines():
            command = command.split(" #", 1)[0].strip()
            if command and not command.startswith("#"):
                found.append((f"{doc.relative_to(ROOT)} (block at line {line_no})", command))
    return found


COMMANDS = [c for doc in DOCS for c in _commands(doc)]


def _cwd_of(command: str) -> Path:
    cd = re.match(r"\(?cd (\S+) &&", command)
    return ROOT / cd.group(1) if cd else ROOT


def test_the_docs_show_commands():
    assert any("make demo" in c for _, c in COMMANDS) and any("lychee-grpc" in c for _, c in COMMANDS)


def test_every_make_target_a_doc_names_exists():
    prose = "\n".join(re.findall(r"`([^`\n]*make [^`\n]*)`", "\n".join(d.read_text() for d in DOCS)))
    named = {(m.group(1), m.group(2)) for text in [prose, *(c for _, c in COMMANDS)] for m in MAKE.finditer(text)}
    assert named
    for options, target in sorted(named):
        # A make -C DIR target is that folder's Makefile's.
        folder = re.search(r"-C (\S+)", options)
        run = subprocess.run(["make", "-n", "-C", str(ROOT / folder.group(1)) if folder else str(ROOT), target],
                             capture_output=True, text=True, env={"PATH": "/usr/bin:/bin", "MODEL": "x"})
        assert "No rule to make target" not in run.stderr, f"`make {options}{target}`: {run.stderr.strip()}"


@pytest.mark.parametrize(("where", "command"), COMMANDS)
def test_every_repository_path_a_command_names_exists(where, command):
    base = _cwd_of(command)
    for path in REPO_PATH.findall(command):
        if "cd " + path in command:
            base = ROOT
        assert (base / path).exists() or (ROOT / path).exists(), f"{where}: `{command}` names {path}, which is missing"
    for image in IMAGE.findall(command):  # an image a command reads is one of the repository's
        assert (base / image).exists(), f"{where}: `{command}` reads {image}, which is not at {base / image}"


def test_every_module_a_doc_runs_with_python_m_exists():
    text = "\n".join(d.read_text() for d in DOCS)
    modules = set(MODULE.findall(text)) - {"pip", "venv", "pytest"}
    assert modules
    for module in sorted(modules):
        assert importlib.util.find_spec(module) is not None, f"`python -m {module}`: no such module"


def _lychee_argv(command: str) -> list[str] | None:
    """The argv after `lychee-grpc` in a command line (env assignments, `&` and pipes dropped)."""
    match = re.search(r"(?:^|[\s;&(])(?:\.venv/bin/)?lychee-grpc (.*)", command)
    if not match:
        return None
    rest = re.split(r"\s(?:&&|\||;)\s|\s&$", match.group(1))[0]
    rest = re.sub(r"\$\([^)]*\)|\"\$\w+\"|\$\w+", "VALUE", rest)
    return shlex.split(rest)


@pytest.mark.parametrize(("where", "command"), [c for c in COMMANDS if _lychee_argv(c[1]) is not None])
def test_every_lychee_grpc_command_line_parses(where, command):
    argv = _lychee_argv(command)
    assert argv
    errors = io.StringIO()
    with contextlib.redirect_stderr(errors):
        try:
            if argv[0] == "serve":
                serve_parser({}).parse_args(argv[1:])
            else:
                cli_parser().parse_args(argv)
        except SystemExit as exc:
            pytest.fail(f"{where}: `{command}` does not parse ({exc.code}): {errors.getvalue().strip()}")
