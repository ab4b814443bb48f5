"""The inspection report: `clipseg-drywall-report` / `python -m clipseg_drywall.report`.

command (arguments, checks, main) -> runner (segment, measure, write masks; the work loop) -> journal
(one line per finished photo, for resume; each mask's SHA-256) -> render (findings and page from the
journal) -> findings (rows, flag rules, CSV/JSONL) and page (the offline HTML, from templates/, with the
review in the browser); rerender renders a finished folder again without a model; folder ties a report
folder to its arguments; measurements holds the scikit-image measurements of one mask and the speck
filter; scales the per-photo scale file; review the punch list read back.
"""
