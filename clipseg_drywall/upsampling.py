"""Native resolution: the one place decoder logits become probabilities at an image's own size, and
probabilities become {0, 255} masks.

A leaf module (torch and numpy only): the loss, the scoring path, the Segmenter and the evaluation job all
upsample through it, so a mask is scored as it is trained and as it is written.
"""

from __future__ import annotations

import numpy as np
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


def threshold_masks(probabilities: torch.Tensor, threshold: float) -> torch.Tensor:
    """uint8 {0, 255} masks of native-size probabilities, on their device."""
    if probabilities.device.type != "cpu" or probabilities.dtype != torch.float32:
        return (probabilities > threshold).to(torch.uint8).mul_(255)
    # numpy on the CPU: one thread and two passes (torch's three start an OpenMP team each, which in the
    # pipeline's write threads competes with the model's); the same float32 comparison
    above = np.greater(probabilities.detach().numpy(), np.float32(threshold)).view(np.uint8)
    return torch.from_numpy(np.multiply(above, 255, out=above))
