"""The inspection report's page: one self-contained HTML file (inline CSS, SVG and JS; no CDN, no server).
The HTML, CSS and JS are package data in templates/ (page.html, page.css, page.js), inlined when written.

At the top, what the findings rest on (model and card, threshold and its origin, date, scale, speck
filter, flag rules, severity bands), the counts (photos, flagged per prompt, skipped and why) and a
coverage histogram per prompt. Then one row per finding (photo x prompt), photos worst first: the
overlay thumbnail linking to the full-size overlay, coverage, regions, for cracks length, widths and
severity band, why it was flagged, and the review: accept / reject and a note, kept in the browser's
storage under the report's identity, exported as punch-list.csv. Clicking a column header sorts by it;
a text box and a check box filter the rows; keys move between findings and review them (the page
lists them). Images are linked by paths relative to the page, so the folder can be zipped and opened
anywhere. The page fits a 1280-px-wide window: one row per finding keeps the table narrow, and long
photo names are cut short, whole on hover."""

from __future__ import annotations

import datetime
import functools
import html
import importlib.resources
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from .findings import FINDING_COLUMNS, csv_value, is_crack_prompt
from .measurements import SEVERITY_NAMES

PAGE_FILE = "index.html"
THUMBS_DIR = "thumbs"
COVERAGE_BINS = (0.0, 0.1, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0)  # % of the photo


@dataclass
class PageSummary:
    model: str
    model_card: str | None  # the model folder's README.md, if any
    backend: str
    threshold: float
    threshold_origin: str
    date: str
    prompts: list[str]
    mm_per_pixel: float | None
    flag_rules: list[str]
    default_flag_rules: bool
    severity_edges: Sequence[float]
    report_id: str  # run.json's start time and the model's fingerprint: the key of the review in the browser
    scale_file: str | None  # --scale_file: a scale per photo (mm_per_pixel is then None)
    min_region_px: int  # the speck filter


def thumbnail_name(overlay: str) -> str:
    """Where the thumbnail of an overlay lives, relative to the report folder."""
    return f"{THUMBS_DIR}/{Path(overlay).name}"


def _e(value) -> str:
    return html.escape(str(value), quote=True)


def _number(value, digits: int = 2) -> str:
    return "" if value is None else (str(value) if isinstance(value, int) else f"{value:.{digits}f}")


def worst_first(photos: Sequence[str], rows_of: dict[str, dict[str, dict]]) -> list[str]:
    """Photos ordered worst first: most prompts flagged, then widest crack, then highest coverage; skipped last."""
    def key(photo: str) -> tuple:
        rows = list(rows_of[photo].values())
        if any(row["status"] == "skipped" for row in rows):
            return (1, 0, 0, 0)
        widths = [row["max_width_px"] or 0.0 for row in rows]
        return (0, -sum(row["flagged"] for row in rows), -max(widths, default=0.0),
                -max(row["coverage_percent"] for row in rows))
    return sorted(photos, key=key)  # stable: ties keep the photos' order


def histogram_svg(values: Sequence[float], label: str) -> str:
    """A bar chart of coverage values (%) over `COVERAGE_BINS`, as inline SVG."""
    counts = [0] * (len(COVERAGE_BINS) - 1)
    for value in values:
        index = next(i for i in range(len(counts)) if value < COVERAGE_BINS[i + 1] or i == len(counts) - 1)
        counts[index] += 1
    width, height, bar = 380, 150, 40
    top = max(counts, default=0) or 1
    parts = [f'<svg class="hist" role="img" aria-label="{_e(label)}" width="{width}" height="{height}" '
             f'viewBox="0 0 {width} {height}">']
    for i, count in enumerate(counts):
        x, h = 8 + i * bar, round(90 * count / top)
        parts.append(f'<rect x="{x}" y="{110 - h}" width="{bar - 6}" height="{h}"><title>{count} photo(s) with '
                     f'{COVERAGE_BINS[i]:g}-{COVERAGE_BINS[i + 1]:g}%</title></rect>'
                     f'<text x="{x + (bar - 6) / 2}" y="{106 - h}" class="count">{count}</text>'
                     f'<text x="{x + (bar - 6) / 2}" y="126" class="tick">{COVERAGE_BINS[i]:g}</text>')
    parts.append(f'<text x="{width / 2}" y="145" class="axis">coverage of the photo, % (bin starts)</text></svg>')
    return "".join(parts)


def _scale_text(summary: PageSummary, unscaled: Sequence[str]) -> str:
    """What the header says of the scale: one for all photos, per photo from a file (naming those left in
    pixels), or none."""
    if summary.scale_file:
        left = (f"; in pixels, not in the scale file ({len(unscaled)}): "
                + ", ".join(f"<code>{_e(Path(photo).name)}</code>" for photo in unscaled[:20])
                + (f" and {len(unscaled) - 20} more" if len(unscaled) > 20 else "")) if unscaled else ""
        return f"per photo, from <code>{_e(summary.scale_file)}</code> (--scale_file): lengths and widths in mm{left}"
    if summary.mm_per_pixel:
        return f"{summary.mm_per_pixel:g} mm per pixel: lengths and widths in mm"
    return "not given (--mm_per_pixel or --scale_file): lengths and widths in pixels, no severity band"


def _speck_text(min_region_px: int) -> str:
    if min_region_px > 1:
        return (f"regions under {min_region_px} px were dropped before measuring (--min_region_px "
                f"{min_region_px}); the mask files keep them")
    return "off (--min_region_px 0): every region counts, however small"


def _header(summary: PageSummary, photos: int, skipped: dict[str, str], rows: Sequence[dict]) -> str:
    unscaled = [row["photo"] for row in rows if row["status"] == "ok" and row["mm_per_pixel"] is None
                and row["prompt"] == summary.prompts[0]]
    edges, names = list(summary.severity_edges), SEVERITY_NAMES
    bands = " &le; ".join(f"{names[i]} &lt; {edges[i]:g} mm" for i in range(len(edges))) + f" &le; {names[-1]}"
    rules = "; ".join(_e(rule) for rule in summary.flag_rules) + (" (the default)" if summary.default_flag_rules else "")
    card = (f"<details><summary>model card</summary><pre>{_e(summary.model_card)}</pre></details>"
            if summary.model_card else " <span class='muted'>(no model card in the model folder)</span>")
    items = [("Model", f"<code>{_e(summary.model)}</code> ({_e(summary.backend)} backend){card}"),
             ("Threshold", f"{summary.threshold:g}: {_e(summary.threshold_origin)}"),
             ("Date", _e(summary.date)),
             ("Photos", f"{photos}: {photos - len(skipped)} measured, {len(skipped)} skipped"),
             ("Flagged when", rules), ("Scale", _scale_text(summary, unscaled)),
             ("Speck filter", _speck_text(summary.min_region_px)), ("Severity bands (largest width)", bands)]
    summary_list = "".join(f"<dt>{name}</dt><dd>{value}</dd>" for name, value in items)
    cards = []
    for prompt in summary.prompts:
        measured = [row for row in rows if row["prompt"] == prompt and row["status"] == "ok"]
        flagged = sum(row["flagged"] for row in measured)
        cards.append(f'<div class="prompt-card"><h3>{_e(prompt)}</h3><p class="flagged-count">flagged: '
                     f'<b>{flagged}</b> of {len(measured)} photos</p>'
                     f'{histogram_svg([row["coverage_percent"] for row in measured], "coverage of " + prompt)}</div>')
    skipped_list = "".join(f"<li><code>{_e(name)}</code>: {_e(why)}</li>" for name, why in skipped.items())
    skipped_html = (f'<section id="skipped"><h2>Skipped ({len(skipped)})</h2><ul>{skipped_list}</ul></section>'
                    if skipped else "")
    return (f'<header><h1>Drywall inspection report</h1><dl class="summary">{summary_list}</dl></header>'
            f'<section id="prompts">{"".join(cards)}</section>{skipped_html}')


def _columns(summary: PageSummary) -> list[tuple[str, str]]:
    """(header, key) of the table's columns: one row per finding (photo x prompt), so that each prompt's
    numbers stack under the same columns instead of widening the table; a length reads mm or px per row."""
    columns = [("#", "rank"), ("overlay", "overlay"), ("photo", "photo"), ("prompt", "prompt"),
               ("coverage %", "coverage_percent"), ("regions", "regions")]
    if any(is_crack_prompt(prompt) for prompt in summary.prompts):
        columns += [("length", "length"), ("largest width", "max_width"), ("mean width", "mean_width")]
        columns += [("severity", "severity")] if summary.mm_per_pixel or summary.scale_file else []
    return [*columns, ("flagged because", "flag_reason"), ("review", "review"), ("note", "note")]


def _table_head(columns: Sequence[tuple[str, str]]) -> str:
    return "<tr>" + "".join(f'<th data-col="{index}" title="click to sort">{_e(name)}</th>'
                            for index, (name, _) in enumerate(columns)) + "</tr>"


def _length(row: dict, name: str) -> tuple[str, str]:
    """(sort value, shown html) of a length or width: in mm where the photo has a scale, else in px."""
    unit = "mm" if row["mm_per_pixel"] is not None else "px"
    value = row[f"{name}_{unit}"]
    if value is None:
        return "", ""
    return _number(value, 6), f'{_number(value, 3 if unit == "mm" else 1)}<small class="unit">{unit}</small>'


def _cell(key: str, rank: int, row: dict) -> tuple[str, str]:
    """(sort value, shown html) of one cell of a finding's row."""
    photo = row["photo"]
    if key == "rank":
        return str(rank), str(rank)
    if key == "photo":
        return photo, f'<span class="name" title="{_e(photo)}">{_e(Path(photo).name)}</span>'
    if key == "prompt":
        return row["prompt"], _e(row["prompt"])
    if key == "overlay":
        link = (f'<a href="{_e(row["overlay"])}"><img src="{_e(thumbnail_name(row["overlay"]))}" loading="lazy" '
                f'alt="{_e(row["prompt"])} overlay of {_e(Path(photo).name)}"></a>') if row["overlay"] else ""
        return "", link
    if key == "review":
        return row["review"], ('<button type="button" class="accept" title="accept (a)">&#10003;</button>'
                               '<button type="button" class="reject" title="reject (r)">&#10007;</button>')
    if key == "note":
        return row["note"], f'<input class="note" type="text" maxlength="200" aria-label="note" value="{_e(row["note"])}">'
    if row["status"] == "skipped":
        return "", f'<span class="muted">skipped: {_e(row["skip_reason"])}</span>' if key == "flag_reason" else ""
    if key in ("length", "max_width", "mean_width"):
        return _length(row, key)
    value = row[key]
    if key == "severity":
        rank_of = {name: i for i, name in enumerate(SEVERITY_NAMES)}
        return str(rank_of.get(value, -1)), _e(value)
    if key == "flag_reason":
        return ("1 " if row["flagged"] else "0 ") + value, _e(value)
    return _number(value, 6), _number(value, 2)


def _data(summary: PageSummary, ordered: Sequence[dict]) -> str:
    """The findings as the page's script reads them (for the punch list it exports): the report's identity,
    the columns and each row's values as findings.csv writes them, in the table's first order."""
    data = {"report": summary.report_id, "columns": list(FINDING_COLUMNS),
            "rows": [[csv_value(row[column]) for column in FINDING_COLUMNS] for row in ordered]}
    return json.dumps(data, ensure_ascii=False).replace("</", "<\\/")  # no "</script>" inside the script


def render_page(summary: PageSummary, photos: Sequence[str], rows: Sequence[dict]) -> str:
    """The whole page for the findings `rows` (one per photo and prompt, `findings.FINDING_COLUMNS`)."""
    rows_of: dict[str, dict[str, dict]] = {photo: {} for photo in photos}
    for row in rows:
        rows_of[row["photo"]][row["prompt"]] = row
    skipped = {photo: next(iter(found.values()))["skip_reason"] for photo, found in rows_of.items()
               if any(row["status"] == "skipped" for row in found.values())}
    columns = _columns(summary)
    ordered = [row for photo in worst_first(photos, rows_of) for row in rows_of[photo].values()]
    body = []
    for rank, row in enumerate(ordered, start=1):
        cells = [_cell(key, rank, row) for _, key in columns]
        start = ' class="photo-start"' if rank == 1 or ordered[rank - 2]["photo"] != row["photo"] else ""
        body.append(f'<tr data-key="{rank - 1}"{start} data-flagged="{int(row["flagged"])}" data-review="{row["review"]}">'
                    + "".join(f'<td data-v="{_e(value)}">{shown}</td>' for value, shown in cells) + "</tr>")
    return _template("page.html").format(
        title=f"Drywall inspection report: {len(photos)} photos", header=_header(summary, len(photos), skipped, rows),
        head=_table_head(columns), body="\n".join(body), data=_data(summary, ordered), style=_template("page.css"),
        script=_template("page.js"))


def model_config_and_card(model: str, hub: bool = True) -> tuple[dict, str | None]:
    """(the model's config.json as a dict, its card text): from a local folder, or (with `hub`) the Hub cache."""
    folder = Path(model).expanduser()

    def read(name: str) -> str | None:
        if folder.is_dir():
            return (folder / name).read_text(encoding="utf-8") if (folder / name).is_file() else None
        if not hub:
            return None
        try:
            from huggingface_hub import hf_hub_download

            return Path(hf_hub_download(model, name)).read_text(encoding="utf-8")
        except Exception:  # offline, no such file, no access: the page says what it has
            return None

    return json.loads(read("config.json") or "{}"), read("README.md")


def threshold_origin(given: float | None, config: dict) -> str:
    if given is not None:
        return "given on the command line (--threshold)"
    if config.get("segmentation_threshold") is not None:
        return "calibrated on validation photos, stored in the model's config.json"
    return "the package default: the model has no calibrated threshold"


def model_facts(model: str, given: float | None, threshold: float, hub: bool = True) -> dict:
    """What the page says of the model: the threshold the masks were made with (`given`: --threshold), where
    it came from, and the model's card. A run records them in run.json once the model has loaded, so that a
    re-render needs neither the model folder nor the network."""
    config, card = model_config_and_card(model, hub)
    return {"threshold": threshold, "threshold_origin": threshold_origin(given, config), "model_card": card}


def page_summary(arguments: dict, facts: dict, default_flag_rules: Sequence[str], report_id: str) -> PageSummary:
    """What the page's header says the findings rest on, from the report's arguments and the model's `facts`
    (`model_facts`); `report_id` names the report in the browser's storage, where the page keeps its review."""
    return PageSummary(
        model=arguments["model"], model_card=facts["model_card"], backend=arguments["backend"],
        threshold=facts["threshold"], threshold_origin=facts["threshold_origin"],
        date=datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"), prompts=arguments["prompts"],
        mm_per_pixel=arguments["mm_per_pixel"], flag_rules=arguments["flag"],
        default_flag_rules=tuple(arguments["flag"]) == tuple(default_flag_rules),
        severity_edges=arguments["severity_bands"], report_id=report_id, scale_file=arguments.get("scale_file"),
        min_region_px=arguments.get("min_region_px", 0))


@functools.cache
def _template(name: str) -> str:
    """One of the page's files in templates/ (package data, found alike from a checkout and a wheel)."""
    return importlib.resources.files(__package__).joinpath("templates", name).read_text(encoding="utf-8")
