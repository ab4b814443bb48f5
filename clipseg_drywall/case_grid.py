"""The evaluation's PNG figure: best and worst cases per task (image | ground truth | prediction)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from .plotting import pyplot, save_figure

THUMBNAIL = 256  # px on the long side: enough to see the masks, small enough for a model card


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
    figure, axes = pyplot().subplots(len(cases), 3, figsize=(9, 3 * len(cases)), squeeze=False)
    for row, case in zip(axes, cases):
        panels = (case.image, Image.fromarray(case.target), Image.fromarray(case.prediction))
        for axis, panel, label in zip(row, panels, ("image", "ground truth", "prediction")):
            axis.imshow(_thumbnail(panel), cmap="gray" if panel.mode == "L" else None, vmin=0, vmax=255)
            axis.set_xticks([])
            axis.set_yticks([])
            axis.set_title(f"{case.title}\n{label}" if label == "image" else label, fontsize=8)
    return save_figure(figure, path, dpi=80)
