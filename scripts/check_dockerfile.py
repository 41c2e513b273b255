"""Checks the Dockerfile against its build context without a Docker engine (CI has none).

What it checks:
  * every COPY/ADD source exists in the context and is not dropped by .dockerignore;
  * the files the package build needs (pyproject.toml, its readme, the package folders) are copied;
  * the ENTRYPOINT is exec form and names a console script of pyproject.toml;
  * every LYCHEE_* variable set by ENV is a real setting (read from `lychee-grpc serve --help`);
  * the final stage runs as a non-root USER and EXPOSEs the port that LYCHEE_PORT sets;
  * the package builds from exactly the copied files: the COPYs of the stage that installs the package
    are replayed into a temporary tree (honouring .dockerignore, WORKDIR and destinations), its RUNs of
    scripts/gen_proto.py and `pip install .` are replayed in order, and the wheel must hold the generated
    stubs and the console script.

Usage: python scripts/check_dockerfile.py [--context DIR] [--dockerfile PATH] [--no-build]
"""

from __future__ import annotations

import argparse
import configparser
import fnmatch
import os
import posixpath
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import dockerfile
import tomllib
from docker.utils.build import exclude_paths

ROOT = Path(__file__).resolve().parent.parent
# Written by scripts/gen_proto.py, imported by the server; git-ignored, so only the image build makes them.
GENERATED_STUBS = ("lychee_client/proto/lychee_pb2.py", "lychee_client/proto/lychee_pb2_grpc.py")
_ENV_WORD = re.compile(r"\bLYCHEE_[A-Z0-9_]+\b")


@dataclass
class Stage:
    name: str
    commands: list[dockerfile.Command] = field(default_factory=list)


@dataclass
class Report:
    problems: list[str] = field(default_factory=list)

    def add(self, line: int, message: str) -> None:
        self.problems.append(f"Dockerfile:{line}: {message}" if line else message)


def parse_stages(path: Path) -> list[Stage]:
    stages: list[Stage] = []
    for cmd in dockerfile.parse_file(str(path)):
        if cmd.cmd == "FROM":
            name = cmd.value[2] if len(cmd.value) >= 3 and cmd.value[1].upper() == "AS" else str(len(stages))
            stages.append(Stage(name))
        elif stages:
            stages[-1].commands.append(cmd)
    return stages


def dockerignore_patterns(context: Path) -> list[str]:
    path = context / ".dockerignore"
    if not path.exists():
        return []
    lines = (line.strip() for line in path.read_text().splitlines())
    return [line for line in lines if line and not line.startswith("#")]


def context_files(context: Path, patterns: list[str]) -> set[str]:
    """Regular files Docker would send as the build context (paths relative to it, '/'-separated)."""
    kept = exclude_paths(str(context), patterns)
    return {p for p in kept if (context / p).is_file()}


def _copy_parts(cmd: dockerfile.Command) -> tuple[list[str], str] | None:
    """Sources and destination of a COPY/ADD from the build context; None for COPY --from and URLs."""
    if any(flag.startswith("--from") for flag in cmd.flags):
        return None
    *sources, dest = cmd.value
    sources = [s for s in sources if not re.match(r"^(https?|git)://|^git@", s)]
    return (sources, dest) if sources else None


def _resolve_source(source: str, context: Path, kept: set[str]) -> tuple[list[str], bool, str | None]:
    """(copied files, source is a folder, problem): what one COPY source brings in from the context."""
    clean = posixpath.normpath(source.lstrip("/"))
    if clean == ".." or clean.startswith("../"):
        return [], False, f"source {source!r} is outside the build context"
    if clean == ".":
        return sorted(kept), True, None
    if any(ch in clean for ch in "*?["):
        matches = [p for p in sorted(kept) if fnmatch.fnmatchcase(p, clean)]
        if not matches:
            return [], False, f"source {source!r} matches no file of the build context"
        return matches, False, None
    on_disk = context / clean
    if not on_disk.exists():
        return [], False, f"source {source!r} does not exist"
    if on_disk.is_dir():
        files = [p for p in sorted(kept) if p.startswith(clean + "/")]
        if not files:
            return [], True, f"source {source!r} is entirely excluded by .dockerignore"
        return files, True, None
    if clean not in kept:
        return [], False, f"source {source!r} is excluded by .dockerignore"
    return [clean], False, None


def _placements(sources: list[str], dest: str, workdir: str, context: Path, kept: set[str], report: Report,
                line: int) -> dict[str, str]:
    """Image path -> context path for one COPY, following Docker's rules for folders and trailing slashes."""
    target = dest if dest.startswith("/") else posixpath.join(workdir, dest)
    into_dir = dest.endswith("/") or len(sources) > 1
    placed: dict[str, str] = {}
    for source in sources:
        files, is_dir, problem = _resolve_source(source, context, kept)
        if problem:
            report.add(line, problem)
            continue
        base = posixpath.normpath(source.lstrip("/"))
        for rel in files:
            if is_dir:
                inner = rel if base == "." else rel[len(base) + 1 :]
                placed[posixpath.normpath(posixpath.join(target, inner))] = rel
            elif into_dir or len(files) > 1:
                placed[posixpath.normpath(posixpath.join(target, posixpath.basename(rel)))] = rel
            else:
                placed[posixpath.normpath(target)] = rel
    return placed


def _env_pairs(cmd: dockerfile.Command) -> list[tuple[str, str]]:
    values = list(cmd.value)
    return [(values[i], values[i + 1].strip("\"'")) for i in range(0, len(values) - 1, 2)]


def _pyproject(context: Path) -> dict:
    return tomllib.loads((context / "pyproject.toml").read_text())


def build_inputs(context: Path) -> list[str]:
    """Context paths the package build reads: pyproject.toml, its readme and each top-level package folder."""
    project = _pyproject(context)
    needed = ["pyproject.toml"]
    readme = project.get("project", {}).get("readme")
    if isinstance(readme, dict):
        readme = readme.get("file")
    if readme:
        needed.append(readme)
    find = project.get("tool", {}).get("setuptools", {}).get("packages", {}).get("find", {})
    for pattern in find.get("include", []):
        top = pattern.split(".")[0].rstrip("*")
        if top and (context / top / "__init__.py").exists():
            needed.append(f"{top}/__init__.py")
    return needed


def settings_from_help(context: Path, script: str, args: list[str]) -> set[str]:
    """LYCHEE_* names the CLI documents, from `<script> <args> --help` run on the context's own code."""
    target = _pyproject(context)["project"]["scripts"][script]
    module, _, func = target.partition(":")
    code = f"import sys; from {module} import {func} as main; sys.argv[0] = {script!r}; sys.exit(main())"
    env = {**os.environ, "PYTHONPATH": str(context), "COLUMNS": "200"}
    out = subprocess.run([sys.executable, "-c", code, *args, "--help"], cwd=context, env=env, capture_output=True,
                         text=True, timeout=300)
    if out.returncode != 0:
        raise RuntimeError(f"`{script} {' '.join(args)} --help` failed ({out.returncode}): {out.stderr.strip()[-500:]}")
    return set(_ENV_WORD.findall(out.stdout))


def _build_wheel(src: Path, out: Path, report: Report, line: int) -> Path | None:
    out = out / src.name
    out.mkdir(parents=True, exist_ok=True)
    res = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                          str(out), str(src)], capture_output=True, text=True, timeout=600)
    if res.returncode != 0:
        report.add(line, f"the package does not build from the copied files: {res.stderr.strip()[-800:]}")
        return None
    wheels = list(out.glob("*.whl"))
    return wheels[0] if wheels else None


def _check_wheels(wheels: list[Path], script: str | None, report: Report, line: int) -> None:
    """The wheels one RUN installs, together: the stubs and the console script must be among them."""
    names: set[str] = set()
    scripts: set[str] = set()
    for wheel in wheels:
        with zipfile.ZipFile(wheel) as zf:
            names |= set(zf.namelist())
            entry_points = next((n for n in zf.namelist() if n.endswith(".dist-info/entry_points.txt")), None)
            if entry_points:
                parser = configparser.ConfigParser()
                parser.read_string(zf.read(entry_points).decode())
                if parser.has_section("console_scripts"):
                    scripts |= set(parser.options("console_scripts"))
    for stub in GENERATED_STUBS:
        if stub not in names:
            report.add(line, f"the wheel built here lacks {stub}: generate the stubs (scripts/gen_proto.py) "
                             "before installing the package")
    if script and script not in scripts:
        report.add(line, f"the wheel built here has no console script {script!r}")


def _shell_steps(text: str) -> list[list[str]]:
    """The simple commands of a RUN line, in order (split at &&, ||, ; and |, quotes respected)."""
    lexer = shlex.shlex(text, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    steps: list[list[str]] = [[]]
    for token in lexer:
        if token in ("&&", "||", ";", "|", "&"):
            steps.append([])
        else:
            steps[-1].append(token)
    return [step for step in steps if step]


def _installed_paths(tokens: list[str]) -> list[str]:
    """The local folders of `pip install [...] . ./clients/python` (also `python -m pip`, `.[extra]`,
    `pip wheel`); empty when the command installs no local package."""
    if "pip" not in tokens and "pip3" not in tokens:
        return []
    rest = tokens[tokens.index("pip" if "pip" in tokens else "pip3") + 1 :]
    if not rest or rest[0] not in ("install", "wheel"):
        return []
    paths, args = [], iter(rest[1:])
    for token in args:
        if token in ("-r", "--requirement", "-c", "--constraint"):
            next(args, None)  # a requirements file, not a package folder
        elif token == "." or token.startswith((".[", "./", "/")):
            paths.append(token.split("[")[0])
    return paths


def _run_gen_proto(fs: Path, cwd: Path, workdir: str, token: str, report: Report, line: int) -> None:
    script_path = fs / token.lstrip("/") if token.startswith("/") else cwd / token
    if not script_path.exists():
        report.add(line, f"{token} is run but not copied into {workdir}")
        return
    res = subprocess.run([sys.executable, str(script_path)], cwd=cwd, capture_output=True, text=True, timeout=300)
    if res.returncode != 0:
        report.add(line, f"{token} fails on the copied files: {res.stderr.strip()[-500:]}")


def _replay_build(stage: Stage, context: Path, kept: set[str], script: str | None, report: Report) -> bool:
    """Replays one stage's COPYs and its gen_proto / `pip install .` RUNs in a temp tree; True if it installs."""
    with tempfile.TemporaryDirectory(prefix="dockerfile-check-") as tmp:
        fs = Path(tmp) / "root"
        workdir = "/"
        for cmd in stage.commands:
            if cmd.cmd == "WORKDIR":
                workdir = posixpath.normpath(posixpath.join(workdir, cmd.value[0]))
                (fs / workdir.lstrip("/")).mkdir(parents=True, exist_ok=True)
            elif cmd.cmd in ("COPY", "ADD") and (parts := _copy_parts(cmd)):
                placed = _placements(*parts, workdir, context, kept, Report(), cmd.start_line)
                for image_path, rel in placed.items():
                    dst = fs / image_path.lstrip("/")
                    dst.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(context / rel, dst)
            elif cmd.cmd == "RUN":
                cwd = fs / workdir.lstrip("/")
                # One shell command at a time, in order: generating the stubs after the install is too late.
                for tokens in _shell_steps(" ".join(cmd.value)):
                    proto_script = next((t for t in tokens if t.endswith("gen_proto.py")), None)
                    if proto_script:
                        _run_gen_proto(fs, cwd, workdir, proto_script, report, cmd.start_line)
                    elif paths := _installed_paths(tokens):
                        wheels = [_build_wheel(cwd / path, Path(tmp) / "wheel", report, cmd.start_line)
                                  for path in paths]
                        if all(wheels):
                            _check_wheels([w for w in wheels if w], script, report, cmd.start_line)
                        return True
    return False


def check(context: Path, dockerfile_path: Path, *, build: bool = True, settings: set[str] | None = None) -> list[str]:
    """Problems found, as 'Dockerfile:LINE: message' strings; empty when the Dockerfile is consistent."""
    report = Report()
    stages = parse_stages(dockerfile_path)
    if not stages:
        return ["Dockerfile: no FROM instruction"]
    kept = context_files(context, dockerignore_patterns(context))

    copied: set[str] = set()
    for stage in stages:
        workdir = "/"
        for cmd in stage.commands:
            if cmd.cmd == "WORKDIR":
                workdir = posixpath.normpath(posixpath.join(workdir, cmd.value[0]))
            elif cmd.cmd in ("COPY", "ADD") and (parts := _copy_parts(cmd)):
                copied.update(_placements(*parts, workdir, context, kept, report, cmd.start_line).values())
    for needed in build_inputs(context):
        if needed not in copied:
            report.add(0, f"Dockerfile: {needed} is needed to build the package but no COPY brings it in"
                          + (" (.dockerignore excludes it)" if needed not in kept else ""))

    final = stages[-1]
    entry = [c for c in final.commands if c.cmd == "ENTRYPOINT"]
    script: str | None = None
    if not entry:
        report.add(0, "Dockerfile: the final stage has no ENTRYPOINT")
    else:
        cmd = entry[-1]
        scripts = _pyproject(context).get("project", {}).get("scripts", {})
        if not cmd.json:
            report.add(cmd.start_line, "ENTRYPOINT must be exec form (a JSON list) so that the server is PID 1 "
                                       "and receives SIGTERM to drain")
        elif cmd.value[0] not in scripts:
            report.add(cmd.start_line, f"ENTRYPOINT runs {cmd.value[0]!r}, which is not a console script in "
                                       f"pyproject.toml ({', '.join(sorted(scripts)) or 'none'})")
        else:
            script = cmd.value[0]
            if settings is None:
                try:
                    settings = settings_from_help(context, script, list(cmd.value[1:]))
                except RuntimeError as exc:
                    report.add(cmd.start_line, str(exc))

    env: dict[str, tuple[str, int]] = {}
    for stage in stages:
        for cmd in stage.commands:
            if cmd.cmd == "ENV":
                for name, value in _env_pairs(cmd):
                    env[name] = (value, cmd.start_line)
                    if name.startswith("LYCHEE_") and settings is not None and name not in settings:
                        report.add(cmd.start_line, f"ENV {name} is not a setting of `lychee-grpc serve` "
                                                   f"(known: {', '.join(sorted(settings))})")

    users = [c for c in final.commands if c.cmd == "USER"]
    if not users or users[-1].value[0].split(":")[0] in ("root", "0"):
        report.add(users[-1].start_line if users else 0, "the final stage must run as a non-root USER")
    exposed = {v.split("/")[0] for c in final.commands if c.cmd == "EXPOSE" for v in c.value}
    if "LYCHEE_PORT" in env and env["LYCHEE_PORT"][0] not in exposed:
        report.add(env["LYCHEE_PORT"][1], f"LYCHEE_PORT={env['LYCHEE_PORT'][0]} is not EXPOSEd")

    if build:
        if not any(_replay_build(stage, context, kept, script, report) for stage in stages):
            report.add(0, "Dockerfile: no RUN installs the package from the copied files (`pip install .`)")
    return report.problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--context", type=Path, default=ROOT, help="build context (default: the repository)")
    parser.add_argument("--dockerfile", type=Path, default=None, help="default: CONTEXT/Dockerfile")
    parser.add_argument("--no-build", action="store_true", help="skip building the wheel from the copied files")
    a = parser.parse_args(argv)
    dockerfile_path = a.dockerfile or a.context / "Dockerfile"
    problems = check(a.context.resolve(), dockerfile_path, build=not a.no_build)
    for problem in problems:
        print(problem, file=sys.stderr)
    if problems:
        return 1
    print(f"{dockerfile_path}: build context, package build, ENTRYPOINT and settings are consistent")
    return 0


if __name__ == "__main__":
    sys.exit(main())
