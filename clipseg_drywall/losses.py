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

from .upsampling import upsample_logits

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


class BCEDiceSum(torch.autograd.Function):
    """Summed BCE (`pos_weight`) + `dice_scale` x the per-image soft Dice losses of (B, H, W) logits, with the
    gradient in closed form: autograd through the composite BCE and Dice kept about twenty full-size
    (640x640) tensors per mask and took most of the loss's time; this keeps the sigmoid only.

    d/dx BCE = sigmoid(x) (1 + (w - 1) t) - w t;  d/dx Dice_b = sigmoid'(x) ((2 I + s) - 2 t D) / D^2,
    with I = sum sigmoid(x) t, D = sum sigmoid(x) + sum t + s over the image, s = `smooth` of `soft_dice_loss`.
    """

    SMOOTH = 1.0

    @staticmethod
    def forward(ctx, logits, target, pos_weight, dice_scale: float):
        total = F.binary_cross_entropy_with_logits(logits, target, pos_weight=pos_weight, reduction="sum")
        probabilities = logits.sigmoid()
        intersection = denominator = None
        if dice_scale:
            intersection = (probabilities * target).sum(dim=(-2, -1))
            denominator = probabilities.sum(dim=(-2, -1)) + target.sum(dim=(-2, -1)) + BCEDiceSum.SMOOTH
            total = total + dice_scale * (1.0 - (2.0 * intersection + BCEDiceSum.SMOOTH) / denominator).sum()
        ctx.save_for_backward(probabilities, target, pos_weight, intersection, denominator)
        ctx.dice_scale = dice_scale
        return total

    @staticmethod
    def backward(ctx, grad_output):
        probabilities, target, pos_weight, intersection, denominator = ctx.saved_tensors
        if pos_weight is None:
            gradient = probabilities - target
        else:
            gradient = probabilities * (1.0 + (pos_weight - 1.0) * target) - pos_weight * target
        if ctx.dice_scale:
            numerator = (2.0 * intersection + BCEDiceSum.SMOOTH)[:, None, None]
            scale = (ctx.dice_scale / denominator**2)[:, None, None]
            slope = probabilities * (1.0 - probabilities)
            gradient = gradient + slope * scale * (numerator - 2.0 * target * denominator[:, None, None])
        return gradient * grad_output, None, None, None


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
    # at least float32: bf16 autocast logits lose the thin-crack boundary detail otherwise (float64 stays)
    dtype = torch.promote_types(logits.dtype, torch.float32)
    total = logits.new_zeros((), dtype=dtype)
    pixels = 0
    for rows, (height, width) in groups:
        upsampled = upsample_logits(logits[rows].to(dtype), (height, width))
        target = labels[rows, :height, :width].to(dtype)
        total = total + BCEDiceSum.apply(upsampled, target, weight, dice_weight * height * width)
        pixels += len(rows) * height * width
    denominator = num_items_in_batch if num_items_in_batch is not None else max(pixels, 1)
    if torch.is_tensor(denominator):
        denominator = denominator.to(total.device, total.dtype)
    return total / denominator
