"""Findings: one row per (photo, prompt) from a mask's measurements, the flag rules, and the punch-list files.

A flag rule says when a (photo, prompt) needs someone's attention: `[SCOPE:] METRIC OP VALUE`, where
SCOPE is a prompt or a task (`crack`, `taping`; a free-text prompt containing "crack" counts as a
crack prompt), METRIC one of `coverage` (in %), `regions`, `length`, `max_width`, `mean_width` (in `px`
or `mm`), OP `>` or `>=`. Examples: `coverage > 0.5%`, `crack: max_width >= 0.3mm`,
`segment taping area: regions > 3`. A row is flagged when any rule that applies to its prompt holds;
the reason names the rules that held and the measured values. `DEFAULT_FLAG_RULES` is the default.

`findings.csv` and `findings.jsonl` hold the same rows, in photo order, then prompt order (the
report's page sorts them worst first). Nothing here imports torch.
"""

from __future__ import annotations

import csv
import io
import json
import operator
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ..atomic_files import atomic_path
from ..prompts import task_of_prompt
from .measurements import SEVERITY_EDGES_MM, severity, to_mm

DEFAULT_FLAG_RULES = ("coverage > 0.5%",)
METRIC_UNITS = {"coverage": ("%",), "regions": ("",), "length": ("px", "mm"), "max_width": ("px", "mm"),
                "mean_width": ("px", "mm")}
_OPERATORS = {">": operator.gt, ">=": operator.ge}
_RULE = re.compile(r"^\s*(?:(?P<scope>[^:]+?)\s*:)?\s*(?P<metric>[a-z_]+)\s*(?P<op>>=|>)\s*"
                   r"(?P<value>[0-9]*\.?[0-9]+)\s*(?P<unit>%|px|mm)?\s*$")
# findings.csv's columns, and the punch list's that the page exports (the same file, with a review in it):
# review is accepted, rejected or open (not reviewed yet); mm_per_pixel is the photo's scale, empty in pixels.
FINDING_COLUMNS = ("photo", "prompt", "review", "note", "status", "skip_reason", "flagged", "flag_reason",
                   "coverage_percent", "regions", "length_px", "max_width_px", "mean_width_px", "mm_per_pixel",
                   "length_mm", "max_width_mm", "mean_width_mm", "severity", "mask", "overlay")
REVIEW_STATES = ("accepted", "rejected", "open")


def prompt_kind(prompt: str) -> str | None:
    """The task of a vocabulary prompt; "crack" for free text that names a crack; None otherwise."""
    return task_of_prompt(prompt) or ("crack" if "crack" in prompt.casefold() else None)


def is_crack_prompt(prompt: str) -> bool:
    """Whether the prompt's masks are measured as cracks (skeleton length and widths)."""
    return prompt_kind(prompt) == "crack"


@dataclass(frozen=True)
class FlagRule:
    text: str  # as given, shown on the page
    scope: str | None  # a prompt or a task, case-folded; None: every prompt
    metric: str
    op: str
    value: float  # in `unit`; coverage in %
    unit: str

    def applies_to(self, prompt: str) -> bool:
        return self.scope is None or self.scope in (" ".join(prompt.casefold().split()), prompt_kind(prompt))

    def reason(self, row: dict) -> str | None:
        """Why the rule flags `row` ("coverage 2.31% > 0.5%"), or None when it does not (or cannot: no value)."""
        column = {"coverage": "coverage_percent", "regions": "regions"}.get(self.metric, f"{self.metric}_{self.unit}")
        measured = row.get(column)
        if measured is None or not self.applies_to(row["prompt"]):
            return None
        if not _OPERATORS[self.op](measured, self.value):
            return None
        shown = f"{measured:.2f}{self.unit}" if self.metric != "regions" else str(measured)
        return f"{self.metric} {shown} {self.op} {self.value:g}{self.unit}"


def parse_flag_rule(text: str) -> FlagRule:
    """A `FlagRule` from `[SCOPE:] METRIC OP VALUE[UNIT]`; a ValueError says the grammar."""
    found = _RULE.match(text.casefold())
    if not found or found["metric"] not in METRIC_UNITS:
        raise ValueError(f"--flag {text!r}: expected '[PROMPT_OR_TASK:] METRIC >|>= VALUE[UNIT]' with METRIC one of "
                         f"{', '.join(METRIC_UNITS)}, e.g. 'coverage > 0.5%' or 'crack: max_width >= 0.3mm'")
    unit = found["unit"] or ""
    if unit not in METRIC_UNITS[found["metric"]]:
        wanted = " or ".join(repr(u) for u in METRIC_UNITS[found["metric"]])
        raise ValueError(f"--flag {text!r}: {found['metric']} is given in {wanted}")
    scope = " ".join(found["scope"].split()) if found["scope"] else None
    return FlagRule(text.strip(), scope, found["metric"], found["op"], float(found["value"]), unit)


def check_flag_rules(texts: Sequence[str], scaled: bool) -> list[FlagRule]:
    """The parsed rules; a rule in mm needs a scale (`scaled`: --mm_per_pixel or --scale_file). With a scale
    file, a rule in mm holds only for the photos it gives a scale."""
    rules = [parse_flag_rule(text) for text in texts]
    for rule in rules:
        if rule.unit == "mm" and not scaled:
            raise ValueError(f"--flag {rule.text!r} is in mm: give --mm_per_pixel or --scale_file (the photos' "
                             "scale), or use px")
    return rules


def photo_index(photos: Sequence[str]) -> dict[str, str | None]:
    """{name: photo} for naming a report's photos in a CSV (a scale file, a review): by the path the report
    lists, or by its file name where no other photo has it (None: a file name two photos share)."""
    index: dict[str, str | None] = {}
    for photo in photos:
        name = Path(photo).name
        index[name] = None if index.get(name, photo) != photo else photo
    index.update({photo: photo for photo in photos})
    return index


def named_photo(name: str, index: dict[str, str | None]) -> str:
    """The report's photo that `name` names (`photo_index`), or a ValueError that says why none."""
    if name not in index:
        raise ValueError(f"{name!r} is not a photo of this report")
    if index[name] is None:
        raise ValueError(f"{name!r} names more than one photo of this report: give its path as findings.csv lists it")
    return index[name]


def finding_row(photo: str, prompt: str, found: dict | None, mm_per_pixel: float | None,
                rules: Sequence[FlagRule], severity_edges: Sequence[float] = SEVERITY_EDGES_MM,
                skip_reason: str = "") -> dict:
    """One row of `FINDING_COLUMNS` (typed: numbers or None) from a journal's measurement of one mask
    (`found`: coverage, regions, length_px, max_width_px, mean_width_px, mask, overlay) or, for a photo
    that was skipped, `skip_reason`."""
    row = dict.fromkeys(FINDING_COLUMNS)
    row.update(photo=photo, prompt=prompt, review="open", note="", status="skipped" if found is None else "ok",
               skip_reason=skip_reason, flagged=False, flag_reason="", severity="", mask="", overlay="")
    if found is None:
        return row
    row["mm_per_pixel"] = mm_per_pixel
    row.update(coverage_percent=100.0 * found["coverage"], regions=found["regions"], mask=found["mask"],
               overlay=found["overlay"])
    for name in ("length", "max_width", "mean_width"):
        row[f"{name}_px"] = found[f"{name}_px"]
        row[f"{name}_mm"] = to_mm(found[f"{name}_px"], mm_per_pixel)
    if row["regions"]:  # an empty crack mask has no width, hence no band
        row["severity"] = severity(row["max_width_mm"], tuple(severity_edges))
    reasons = [reason for rule in rules if (reason := rule.reason(row))]
    row.update(flagged=bool(reasons), flag_reason="; ".join(reasons))
    return row


def csv_value(value) -> str:
    """How a value is written in findings.csv: fixed decimals (the file is byte-identical on a re-run)."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)


def write_findings(rows: Sequence[dict], folder: Path) -> tuple[Path, Path]:
    """`folder/findings.csv` and `folder/findings.jsonl`, atomically."""
    text = io.StringIO(newline="")
    writer = csv.DictWriter(text, fieldnames=FINDING_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows({key: csv_value(row[key]) for key in FINDING_COLUMNS} for row in rows)
    written = []
    for name, content in (("findings.csv", text.getvalue()),
                          ("findings.jsonl", "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))):
        with atomic_path(Path(folder) / name) as temporary:
            temporary.write_text(content, encoding="utf-8")
        written.append(Path(folder) / name)
    return written[0], written[1]


def scale_of(photo: str, arguments: dict) -> float | None:
    """A photo's mm per pixel: --mm_per_pixel for every photo, or its row of --scale_file (None: not listed)."""
    scales = arguments.get("scales")  # keyed by the report's photos (scales.check_scales)
    return arguments["mm_per_pixel"] if scales is None else scales.get(photo)


def findings_rows(photos: Sequence[str], entries: dict[str, dict], arguments: dict) -> list[dict]:
    """One findings row per (photo, prompt), in photo order, then prompt order; every review open."""
    rules = check_flag_rules(arguments["flag"], arguments["mm_per_pixel"] is not None or bool(arguments.get("scales")))
    rows = []
    for photo in photos:
        entry = entries[photo]
        for prompt in arguments["prompts"]:
            found = entry["findings"][prompt] if entry["status"] == "ok" else None
            rows.append(finding_row(photo, prompt, found, scale_of(photo, arguments), rules,
                                    arguments["severity_bands"], skip_reason=entry.get("reason") or ""))
    return rows
