"""What every command-line tool of the package shares, and the console scripts' entry points.

`ArgumentParser` accepts each long option in both spellings, `--dry_run` and `--dry-run`, as
`HfArgumentParser` (train, evaluate) already does, so every command takes the same flag style.
The entry points check a job's optional dependencies (its extra) before importing it, so a core
install answers `clipseg-drywall-train` with the install command instead of an import traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import importlib.util
import os
import re
import sys
from pathlib import Path


def _both_spellings(option: str) -> list[str]:
    if not option.startswith("--"):
        return [option]
    name = option[2:]
    spellings = [option, "--" + name.replace("-", "_"), "--" + name.replace("_", "-")]
    return list(dict.fromkeys(spellings))


class ArgumentParser(argparse.ArgumentParser):
    """`argparse.ArgumentParser` whose long options answer to `_` and `-` alike (help shows the first),
    with a `--debug` flag (tracebacks, see `user_errors`) and usage errors on one line."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.add_argument("--debug", action="store_true", help="show the full traceback of an error")

    def error(self, message: str):
        self.exit(2, f"error: {self.prog}: {message} (see --help)\n")

    def add_argument(self, *names, **kwargs):
        spelled = [spelling for name in names for spelling in _both_spellings(name)]
        if names and names[0].startswith("--") and "dest" not in kwargs:
            kwargs["dest"] = names[0][2:].replace("-", "_")
        return super().add_argument(*spelled, **kwargs)


def require_extra(extra: str, modules: tuple[str, ...]) -> None:
    """Fail at import with the install command when a job's optional dependencies are missing."""
    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if missing:
        raise ImportError(f"this job needs {', '.join(missing)}, which the core install leaves out: "
                          f"pip install 'clipseg-drywall[{extra}]'")


def _run(extra: str, modules: tuple[str, ...], module: str) -> int:
    try:
        require_extra(extra, modules)
    except ImportError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return importlib.import_module(module).main()


def train() -> int:
    return _run("train", ("accelerate", "datasets", "matplotlib", "peft"), "clipseg_drywall.training.run_training")


def evaluate() -> int:
    return _run("eval", ("datasets", "matplotlib"), "clipseg_drywall.run_evaluation")


def report() -> int:
    return _run("report", ("skimage",), "clipseg_drywall.report.command")


@contextlib.contextmanager
def user_errors(argv: list[str] | None = None):
    """A usage or input problem (bad path, bad argument, missing split, unwritable folder) as one
    `error:` line and exit status 2 instead of a traceback. `--debug` among the arguments, or
    CLIPSEG_DRYWALL_TRACEBACK=1, shows the traceback instead."""
    arguments = sys.argv[1:] if argv is None else argv
    try:
        yield
    except (ValueError, OSError, ImportError) as error:
        if os.environ.get("CLIPSEG_DRYWALL_TRACEBACK") or "--debug" in arguments:
            raise
        print(f"error: {one_line(str(error)) or type(error).__name__}", file=sys.stderr)
        raise SystemExit(2) from None


def one_line(message: str) -> str:
    """A message's lines joined into one (errors are printed as one line)."""
    return " ".join(line.strip() for line in message.splitlines() if line.strip())


def check_model_source(name_or_path: str, what: str = "--model", needs_config: bool = True) -> None:
    """Before any model loads: a local folder must hold a checkpoint; a path that looks local
    (absolute, `./`, `~`, several `/`, or inside an existing folder) but does not exist is reported missing, not as a bad Hub id."""
    path = Path(name_or_path).expanduser()
    if path.exists():
        if not path.is_dir():
            raise NotADirectoryError(f"{what} {name_or_path} is a file; give the checkpoint folder (config.json inside)")
        if needs_config and not (path / "config.json").is_file():
            raise FileNotFoundError(f"{what} {name_or_path} has no config.json: give a folder written by save_pretrained")
        return
    text = str(name_or_path)
    if path.is_absolute() or text.startswith((".", "~")) or text.count("/") > 1 or "\\" in text \
            or ("/" in text and path.parent.is_dir()):  # "runs/model" beside an existing runs/
        raise FileNotFoundError(f"{what} {name_or_path}: no such folder")
    if not re.fullmatch(r"[\w.-]+(/[\w.-]+)?", text):
        raise ValueError(f"{what} {name_or_path!r} is neither a local folder nor a Hub id like 'org/clipseg-drywall'")
