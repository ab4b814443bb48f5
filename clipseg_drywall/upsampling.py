"""Native resolution: the one place decoder logits become probabilities at an image's own size.

A leaf module (torch only): the loss, the scoring path, the Segmenter and the evaluation job all
upsample through it, so a mask is scored as it is trained and as it is written.
"""

from __future__ import annotations

import torch
from torch import nn


def upsample_logits(logits: torch.Tensor, height_width: tuple[int, int]) -> torch.Tensor:
    """Bilinear resize of decoder logits (B, h, w) to `height_width` = (height, width)."""
    if tuple(logits.shape[-2:]) == tuple(height_width):
        return logits
    return nn.functional.interpolate(
        logits.unsqueeze(1), size=tuple(height_width), mode="bilinear", align_corners=False
    ).squeeze(1)


def native_probabilities(logits: torch.Tensor, height_width: tuple[int, int]) -> torch.Tensor:
    """Probabilities (P, height, width) of one image's decoder logits (P, h, w) at its native size.

    Logits are upsampled in float32 *before* the sigmoid and the threshold, as the loss sees them.
    Every score and every written mask of the package starts here.
    """
    return upsample_logits(logits.float(), height_width).sigmoid()
