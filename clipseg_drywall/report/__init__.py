"""The inspection report: `clipseg-drywall-report` / `python -m clipseg_drywall.report`.

command (arguments, checks, main) -> runner (segment, measure, write masks; the work loop) -> journal
(one line per finished photo, for resume) -> findings (rows, flag rules, CSV/JSONL) and page (the
offline HTML, from templates/); folder ties a report folder to its arguments; measurements holds the
scikit-image measurements of one mask.
"""
