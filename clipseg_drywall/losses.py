"""The training loss: BCE on logits upsampled to each mask's native size, plus optional soft Dice.

Labels come from the collator as one float tensor (B, H, W) holding {0, 1} and padded with
`IGNORE_INDEX` to the largest mask of the batch. The loss is a *sum* over labelled pixels divided
by `num_items_in_batch` (the Trainer's count of labelled pixels over all micro-batches of one
optimizer step, and over all processes), so gradient accumulation and DDP give the same update as
one big batch. Without it (evaluation), it divides by this batch's own pixel count.
"""

from __future__ import annotations

import torch
from torch.nn import functional as F

from .modeling import upsample_logits

IGNORE_INDEX = -100.0  # the Trainer counts `labels.ne(-100)` as the items of a batch


def label_sizes(labels: torch.Tensor) -> list[tuple[int, int]]:
    """The (height, width) of each mask inside its `IGNORE_INDEX` padding (padding is bottom/right)."""
    valid = labels != IGNORE_INDEX
    heights = valid.any(dim=2).sum(dim=1).tolist()
    widths = valid.any(dim=1).sum(dim=1).tolist()
    return list(zip(heights, widths))


def soft_dice_loss(logits: torch.Tensor, target: torch.Tensor, smooth: float = 1.0) -> torch.Tensor:
    """1 - soft Dice per image of (B, H, W) logits and targets, shape (B,); `smooth` keeps an empty
    target with an empty prediction near 0."""
    probabilities = logits.sigmoid()
    intersection = (probabilities * target).sum(dim=(-2, -1))
    return 1.0 - (2.0 * intersection + smooth) / (probabilities.sum(dim=(-2, -1)) + target.sum(dim=(-2, -1)) + smooth)


def segmentation_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    num_items_in_batch: torch.Tensor | int | None = None,
    dice_weight: float = 0.0,
    pos_weight: float | None = None,
) -> torch.Tensor:
    """Per-pixel BCE (+ `dice_weight` x soft Dice) at native resolution, normalised by labelled pixels.

    The Dice term of each image is weighted by its pixel count, so with equal-sized masks it is
    the mean Dice loss over images, and it too sums exactly across micro-batches.
    """
    if logits.shape[0] != labels.shape[0]:
        raise ValueError(f"{logits.shape[0]} logits for {labels.shape[0]} labels; pass one mask per prompt")
    weight = None if pos_weight is None else torch.tensor(float(pos_weight), device=logits.device)
    sizes = label_sizes(labels)
    # one native size for the whole batch (the usual case): one upsample and one BCE call, no loop
    groups = [(list(range(len(sizes))), sizes[0])] if len(set(sizes)) == 1 else [([i], s) for i, s in enumerate(sizes)]
    total = logits.new_zeros((), dtype=torch.float32)
    pixels = 0
    for rows, (height, width) in groups:
        # upsample in float32: bf16 autocast logits lose the thin-crack boundary detail otherwise
        upsampled = upsample_logits(logits[rows].float(), (height, width))
        target = labels[rows, :height, :width].float()
        total = total + F.binary_cross_entropy_with_logits(upsampled, target, pos_weight=weight, reduction="sum")
        if dice_weight:
            total = total + dice_weight * height * width * soft_dice_loss(upsampled, target).sum()
        pixels += len(rows) * height * width
    denominator = num_items_in_batch if num_items_in_batch is not None else max(pixels, 1)
    if torch.is_tensor(denominator):
        denominator = denominator.to(total.device, total.dtype)
    return total / denominator
