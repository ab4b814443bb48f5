"""The package's PNG figures, on one matplotlib set-up (Agg, no display): the evaluation's best and
worst cases per task (image | ground truth | prediction), and the training curves."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from .prompts import TASKS

THUMBNAIL = 256  # px on the long side: enough to see the masks, small enough for a model card


def _pyplot():
    """matplotlib's pyplot on the Agg backend: figures are written where there is no display."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(figure, path: str | Path, dpi: int) -> Path:
    path = Path(path)
    figure.tight_layout()
    figure.savefig(path, dpi=dpi)
    _pyplot().close(figure)
    return path


@dataclass
class Case:
    title: str
    image: Image.Image
    target: np.ndarray
    prediction: np.ndarray


def _thumbnail(image: Image.Image) -> Image.Image:
    image = image.copy()
    image.thumbnail((THUMBNAIL, THUMBNAIL))
    return image


def case_grid(cases: Sequence[Case], path: str | Path) -> Path:
    """One row per case: image, ground truth, prediction."""
    figure, axes = _pyplot().subplots(len(cases), 3, figsize=(9, 3 * len(cases)), squeeze=False)
    for row, case in zip(axes, cases):
        panels = (case.image, Image.fromarray(case.target), Image.fromarray(case.prediction))
        for axis, panel, label in zip(row, panels, ("image", "ground truth", "prediction")):
            axis.imshow(_thumbnail(panel), cmap="gray" if panel.mode == "L" else None, vmin=0, vmax=255)
            axis.set_xticks([])
            axis.set_yticks([])
            axis.set_title(f"{case.title}\n{label}" if label == "image" else label, fontsize=8)
    return _save(figure, path, dpi=80)


def plot_training_curves(log_history: list[dict], path: str | Path) -> Path | None:
    """Write loss and IoU curves from a Trainer `log_history`; None when nothing was logged."""
    def series(key: str) -> tuple[list[int], list[float]]:
        points = [(e["step"], e[key]) for e in log_history if key in e and "step" in e]
        return [s for s, _ in points], [v for _, v in points]

    curves = {k: series(k) for k in ("loss", "eval_loss", *(f"eval_iou_{t}" for t in TASKS), "eval_mean_iou")}
    if not any(steps for steps, _ in curves.values()):
        return None
    figure, (loss_axis, iou_axis) = _pyplot().subplots(1, 2, figsize=(11, 4))
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
    return _save(figure, path, dpi=100)
