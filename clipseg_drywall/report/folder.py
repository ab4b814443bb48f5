"""The report folder's lifecycle: a folder is tied to the arguments that made it (run.json); the same
arguments go on where an earlier run stopped, other ones are refused naming what differs, and
--overwrite clears only what this command wrote.
"""

from __future__ import annotations

import datetime
import json
import shutil
from pathlib import Path

from ..atomic_files import atomic_path
from .journal import JOURNAL_FILE, JOURNAL_GLOB
from .page import PAGE_FILE, THUMBS_DIR
from .review import REVIEW_FILE

RUN_FILE = "run.json"
MASKS_DIR = "masks"
# What --overwrite removes: only what this command writes, never anything else in the folder.
OWN_FILES = (RUN_FILE, JOURNAL_FILE, PAGE_FILE, "findings.csv", "findings.jsonl", REVIEW_FILE)
OWN_FOLDERS = (MASKS_DIR, THUMBS_DIR)
# The arguments a report folder is tied to, with the flag that sets each (named when they differ).
ARGUMENT_FLAGS = {"inputs": "PHOTOS", "model": "--model", "model_fingerprint": "--model (its files changed)",
                  "backend": "--backend", "prompts": "--prompt", "threshold": "--threshold",
                  "batch_size": "--batch_size", "device": "--device", "speed": "--speed",
                  "mm_per_pixel": "--mm_per_pixel", "scales": "--scale_file", "flag": "--flag",
                  "severity_bands": "--severity_bands", "min_region_px": "--min_region_px"}


# What a run.json written before an argument existed meant by its absence (no speck filter then).
ABSENT_MEANT = {"min_region_px": 0}


def differences(saved: dict, arguments: dict) -> list[str]:
    """'--flag: X then, Y now' for each argument that differs from the folder's run."""
    then = {key: saved.get(key, ABSENT_MEANT.get(key)) for key in ARGUMENT_FLAGS}
    return [f"{flag}: {then[key]!r} then, {arguments[key]!r} now" for key, flag in ARGUMENT_FLAGS.items()
            if then[key] != arguments[key]]


def check_folder(output: Path, arguments: dict, overwrite: bool) -> bool:
    """Refuse a folder tied to other arguments, or holding report files without a run file (nothing is
    written or removed here); True when the run starts afresh, False when it goes on."""
    run_file = output / RUN_FILE
    if overwrite:
        return True
    if run_file.is_file():
        try:
            saved = json.loads(run_file.read_text(encoding="utf-8"))["arguments"]
        except (ValueError, KeyError):
            raise ValueError(f"--output {output}: {run_file} is not a report's run file; add --overwrite "
                             "to start afresh") from None
        if changed := differences(saved, arguments):
            raise ValueError(f"--output {output} holds a report made with other arguments ({'; '.join(changed)}): "
                             "run with the same arguments to go on, add --overwrite to start afresh, or choose "
                             "another --output")
        return False
    if found := [name for name in (*OWN_FILES, *OWN_FOLDERS) if (output / name).exists()]:
        raise FileExistsError(f"--output {output} holds {', '.join(found)} but no {RUN_FILE}: not a folder this "
                              "report made; add --overwrite to replace them, or choose another --output")
    return True


def start_folder(output: Path, arguments: dict, model_facts: dict) -> None:
    """Clear what an earlier report wrote (only this command's own files) and tie `output` to these
    arguments (run.json, with the model's threshold, its origin and card: `page.model_facts`). Called once
    the model has loaded, so a failed start loses no earlier report."""
    for path in [*(output / name for name in OWN_FILES), *output.glob(JOURNAL_GLOB)]:
        path.unlink(missing_ok=True)
    for name in OWN_FOLDERS:
        shutil.rmtree(output / name, ignore_errors=True)
    output.mkdir(parents=True, exist_ok=True)
    started = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
    write_text(output / RUN_FILE, json.dumps({"arguments": arguments, "started": started, **model_facts},
                                                  indent=2) + "\n")


def write_text(target: Path, text: str) -> None:
    with atomic_path(target) as temporary:
        temporary.write_text(text, encoding="utf-8")
