"""The README is a short guide whose commands run as written: every command of its ```bash blocks that
starts one of the package's programs answers `--help`, and CI finds the test command after its marker.

A command is a line of a bash block (lines ending in `\\` joined), split on `&&`, comments dropped. The
program part of a command is what comes before its arguments: `python -m MODULE`, `python SCRIPT.py`,
`accelerate launch [options] SCRIPT.py | -m MODULE`, `clipseg-drywall-*` (a console script, resolved
through setup.py's entry points), and `python -m data_builders build|push` (the subcommand included).
Each distinct program is called once, with `--help`, from the repository root.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
MAX_LINES = 210
TEST_MARKER = "<!-- test-command -->"
TEST_COMMAND = "python -m pytest -q tests"

PYTHONS = {"python", "python3"}
SKIPPED_PROGRAMS = {"pip", "pip3", ".", "source"}  # installing and activating, not the package's programs
SKIPPED_MODULES = {"venv", "pip", "pytest"}
SCRIPTS = {"train.py", "evaluate.py"}  # the repo's own thin scripts
SUBCOMMAND_MODULES = {"data_builders"}  # `python -m data_builders build|push`: --help per subcommand
SUBCOMMAND_SCRIPTS = {"clipseg-drywall-dataset"}
ENV_ASSIGNMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")


def bash_blocks(text: str) -> list[str]:
    """The bodies of the ```bash fences, in order."""
    return re.findall(r"^```bash[ \t]*\n(.*?)^```[ \t]*$", text, flags=re.M | re.S)


def commands(block: str) -> list[list[str]]:
    """A block's commands as token lists: continuation lines joined, comments and blank lines dropped,
    each line split on `&&`."""
    logical, pending = [], ""
    for line in block.splitlines():
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        logical.append(pending + line)
        pending = ""
    if pending:
        logical.append(pending)
    found = []
    for line in logical:
        current: list[str] = []
        for token in shlex.split(line, comments=True):
            if token == "&&":
                found.append(current)
                current = []
            else:
                current.append(token)
        found.append(current)
    return [command for command in found if command]


def console_scripts() -> dict[str, tuple[str, str]]:
    """setup.py's console scripts: name -> (module, function)."""
    text = (REPO / "setup.py").read_text(encoding="utf-8")
    return {name: (module, function) for name, module, function in
            re.findall(r"""["']([\w-]+)\s*=\s*([\w.]+):(\w+)["']""", text)}


def module_program(module: str, rest: list[str]) -> list[str] | None:
    """The program part of `python -m MODULE REST...` with `python` as in the README; None: not ours to run."""
    if module in SKIPPED_MODULES:
        return None
    if module in SUBCOMMAND_MODULES:
        return ["python", "-m", module, *rest[:1]]
    return ["python", "-m", module]


def program(command: list[str]) -> list[str] | None:
    """The program part of a README command, spelt as in the README but with `accelerate launch` reduced to
    the `python` it starts; None for what is not one of the package's programs (pip, venv, pytest, ...).
    Raises ValueError for a command the test does not know how to check."""
    tokens = list(command)
    while tokens and ENV_ASSIGNMENT.match(tokens[0]):  # VAR=value prefixes
        tokens.pop(0)
    if not tokens or tokens[0] in SKIPPED_PROGRAMS:
        return None
    head, rest = tokens[0], tokens[1:]
    if head in PYTHONS:
        if rest[:1] == ["-m"] and len(rest) > 1:
            return module_program(rest[1], rest[2:])
        if rest and rest[0] in SCRIPTS:
            return ["python", rest[0]]
    elif head == "accelerate" and rest[:1] == ["launch"]:
        options = rest[1:]
        for i, token in enumerate(options):  # accelerate's own options come first, some with a value
            if token == "-m" and i + 1 < len(options):
                return module_program(options[i + 1], options[i + 2:])
            if token in SCRIPTS:
                return ["python", token]
    elif head.startswith("clipseg-drywall-"):
        if head in SUBCOMMAND_SCRIPTS:
            return [head, *rest[:1]]
        return [head]
    raise ValueError(f"README command not understood (not one of the package's programs): {shlex.join(command)}")


def argv_of(program_part: list[str]) -> list[str]:
    """The argv that runs a program part with `--help` in this interpreter."""
    head, rest = program_part[0], program_part[1:]
    if head == "python":
        return [sys.executable, *rest, "--help"]
    scripts = console_scripts()
    assert head in scripts, f"{head}: not a console script in setup.py's entry_points"
    module, function = scripts[head]
    # what the installed script does, without depending on it being installed
    code = f"import sys; from {module} import {function} as main; sys.argv[0] = {head!r}; sys.exit(main())"
    return [sys.executable, "-c", code, *rest, "--help"]


def readme_programs() -> tuple[list[list[str]], list[str]]:
    """Every distinct program part of the README's bash blocks, in order of first appearance, and the
    commands the test does not understand."""
    seen: dict[tuple[str, ...], list[str]] = {}
    unknown = []
    for block in bash_blocks(README.read_text(encoding="utf-8")):
        for command in commands(block):
            try:
                part = program(command)
            except ValueError as error:
                unknown.append(str(error))
                continue
            if part is not None:
                seen.setdefault(tuple(part), part)
    return list(seen.values()), unknown


PROGRAMS, UNKNOWN = readme_programs()


def test_readme_is_short():
    lines = README.read_text(encoding="utf-8").splitlines()
    assert len(lines) <= MAX_LINES, f"README.md has {len(lines)} lines; at most {MAX_LINES}: move detail to docs/"


def test_readme_gives_the_test_command():
    """.ci/run reads the second line after the marker (`grep -A2 MARKER | tail -n 1`)."""
    lines = README.read_text(encoding="utf-8").splitlines()
    assert TEST_MARKER in lines, f"no {TEST_MARKER} line in README.md"
    at = lines.index(TEST_MARKER)
    assert lines[at + 1 : at + 3] == ["```bash", TEST_COMMAND]


def test_every_readme_command_is_understood():
    """A command this test cannot map to a program would go unchecked: extend `program` instead."""
    assert not UNKNOWN, "\n".join(UNKNOWN)


def test_readme_has_the_setup_programs():
    """The extraction finds the set-up command's programs (so the --help checks below check something)."""
    parts = [" ".join(p) for p in PROGRAMS]
    assert {"python -m data_builders build", "python train.py", "python evaluate.py"} <= set(parts), parts


@pytest.mark.parametrize("page", [README, *sorted((REPO / "docs").glob("*.md"))], ids=lambda p: p.name)
def test_links_resolve(page):
    """Every relative link of the README and the docs/ pages names a file of the repo."""
    text = page.read_text(encoding="utf-8")
    missing = [target for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text)
               if "://" not in target and not (page.parent / target).exists()]
    assert not missing, f"{page.relative_to(REPO)} links to missing files: {missing}"


@pytest.mark.parametrize("program_part", PROGRAMS, ids=[" ".join(p) for p in PROGRAMS])
def test_readme_command_answers_help(program_part):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    run = subprocess.run(argv_of(program_part), cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    output = run.stdout + run.stderr
    assert run.returncode == 0, f"{' '.join(program_part)} --help exited {run.returncode}:\n{output[-3000:]}"
    assert "usage" in output.lower(), f"{' '.join(program_part)} --help printed no usage:\n{output[-3000:]}"
