"""training_curves.png: loss and validation IoU over the steps of a Trainer's log history."""

from __future__ import annotations

from pathlib import Path

from ..plotting import pyplot, save_figure
from ..prompts import TASKS


def plot_training_curves(log_history: list[dict], path: str | Path) -> Path | None:
    """Write loss and IoU curves from a Trainer `log_history`; None when nothing was logged."""
    def series(key: str) -> tuple[list[int], list[float]]:
        points = [(e["step"], e[key]) for e in log_history if key in e and "step" in e]
        return [s for s, _ in points], [v for _, v in points]

    curves = {k: series(k) for k in ("loss", "eval_loss", *(f"eval_iou_{t}" for t in TASKS), "eval_mean_iou")}
    if not any(steps for steps, _ in curves.values()):
        return None
    figure, (loss_axis, iou_axis) = pyplot().subplots(1, 2, figsize=(11, 4))
    for key in ("loss", "eval_loss"):
        if curves[key][0]:
            loss_axis.plot(*curves[key], label=key, marker="." if key.startswith("eval") else None)
    loss_axis.set(xlabel="step", ylabel="loss", title="loss")
    loss_axis.legend()
    for key in (*(f"eval_iou_{t}" for t in TASKS), "eval_mean_iou"):
        if curves[key][0]:
            iou_axis.plot(*curves[key], label=key.removeprefix("eval_"), marker=".")
    iou_axis.set(xlabel="step", ylabel="IoU (native resolution)", title="validation IoU", ylim=(0, 1))
    if any(curves[f"eval_iou_{t}"][0] for t in TASKS):
        iou_axis.legend()
    return save_figure(figure, path, dpi=100)
