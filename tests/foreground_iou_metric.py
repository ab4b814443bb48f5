"""Foreground IoU / Dice of binary masks as an `evaluate` metric module: the tests' cross-check of the
scoring path (`clipseg_drywall.scoring`), through another library's machinery.

Loads offline from this file (no Hub download, unlike `evaluate.load("mean_iou")`, which also
averages the background class in):

    import evaluate, tests.foreground_iou_metric as module
    metric = evaluate.load(module.__file__)        # or: module.ForegroundIoU()
    metric.add_batch(predictions=[pred_mask], references=[true_mask])
    metric.compute()  # {"miou": .., "dice": .., "dataset_iou": .., "n_images": ..}

The package scores through `clipseg_drywall.scoring`; both use the definitions of `clipseg_drywall.metrics`. Masks
may differ in size between images (each pair must match); `evaluate` stores them as PNG images
(`datasets.Image`), so any {0,255} uint8 array, bool array or mode-L image is accepted.
"""

import datasets
import numpy as np

import evaluate
from clipseg_drywall.metrics import as_bool, mask_counts, scores_from_counts

_DESCRIPTION = """Foreground IoU and Dice of binary masks: mean of per-image scores (an image where prediction
and reference are both empty scores 1) and dataset-level IoU (intersections and unions summed)."""

_KWARGS_DESCRIPTION = """
Args:
    predictions: binary masks (uint8 {0,255} or {0,1}, bool, or mode-L PIL images), one per image.
    references: ground-truth masks, same sizes as the predictions.
Returns:
    miou: mean per-image foreground IoU; dice: mean per-image Dice; dataset_iou: summed intersection
    over summed union; n_images.
"""


def _as_mask_image(mask) -> np.ndarray:
    """uint8 {0,255} (what `datasets.Image` stores losslessly as PNG), foreground as metrics.py reads it."""
    return as_bool(np.asarray(mask)).astype(np.uint8) * 255


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class ForegroundIoU(evaluate.Metric):
    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({"predictions": datasets.Image(), "references": datasets.Image()}),
        )

    def add_batch(self, *, predictions=None, references=None, **kwargs):
        """Add masks of a batch (any binary encoding; converted to {0,255} PNGs)."""
        predictions = None if predictions is None else [_as_mask_image(m) for m in predictions]
        references = None if references is None else [_as_mask_image(m) for m in references]
        return super().add_batch(predictions=predictions, references=references, **kwargs)

    def add(self, *, prediction=None, reference=None, **kwargs):
        """Add one (prediction, reference) pair of masks."""
        return self.add_batch(predictions=[prediction], references=[reference], **kwargs)

    def _compute(self, predictions, references) -> dict:
        counts = np.array([mask_counts(np.asarray(p), np.asarray(r)) for p, r in zip(predictions, references)])
        return scores_from_counts(*counts.reshape(-1, 3).T)
