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
    # the first column and row hold every valid row and column: no pass over the whole batch
    heights = (labels[:, :, 0] != IGNORE_INDEX).sum(dim=1).tolist()
    widths = (labels[:, 0, :] != IGNORE_INDEX).sum(dim=1).tolist()
    return list(zip(heights, widths))


class BCEDiceSum(torch.autograd.Function):
    """Summed BCE (`pos_weight`) + `dice_scale` x the per-image soft Dice losses of (B, H, W) logits, with the
    gradient in closed form. Autograd through the composite BCE and Dice made about thirty passes over
    each full-size (640x640) mask and kept as many tensors; this makes about a dozen and keeps the sigmoid.

    BCE = sum x - sum t x - sum log s(x) - (w - 1) sum t log s(x)   (s: sigmoid, w: pos_weight)
    d/dx BCE = s(x) (1 + (w - 1) t) - w t;  d/dx Dice_b = s'(x) ((2 I + k) - 2 t D) / D^2,
    with I = sum s(x) t, D = sum s(x) + sum t + k over image b, k = `SMOOTH` (1: an empty target with an
    empty prediction has a Dice loss near 0).
    """

    SMOOTH = 1.0

    @staticmethod
    def forward(ctx, logits, target, pos_weight, dice_scale: float):
        flat_logits, flat_target = logits.flatten(1), target.flatten(1)
        log_probabilities = F.logsigmoid(flat_logits)
        weighted = torch.linalg.vecdot(flat_target, log_probabilities).sum()
        total = flat_logits.sum() - torch.linalg.vecdot(flat_target, flat_logits).sum() - log_probabilities.sum()
        if pos_weight is not None:
            total = total - (pos_weight - 1.0) * weighted
        probabilities = logits.sigmoid()
        intersection = denominator = None
        if dice_scale:
            intersection = torch.linalg.vecdot(probabilities.flatten(1), flat_target)
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
        else:  # s (1 + (w - 1) t) - w t = s + t ((w - 1) s - w)
            gradient = torch.addcmul(probabilities, target, probabilities * (pos_weight - 1.0) - pos_weight)
        if ctx.dice_scale:
            scale = ctx.dice_scale / denominator**2
            per_image = (scale * (2.0 * intersection + BCEDiceSum.SMOOTH))[:, None, None]
            per_target = (-2.0 * scale * denominator)[:, None, None]
            slope = torch.addcmul(probabilities, probabilities, probabilities, value=-1.0)  # s (1 - s)
            gradient.addcmul_(slope, torch.addcmul(per_image, target, per_target))
        return gradient.mul_(grad_output), None, None, None


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
    # (slices: views, where a list of rows would copy the labels)
    groups = [(slice(None), sizes[0])] if len(set(sizes)) == 1 else [(slice(i, i + 1), s) for i, s in enumerate(sizes)]
    # at least float32: bf16 autocast logits lose the thin-crack boundary detail otherwise (float64 stays)
    dtype = torch.promote_types(logits.dtype, torch.float32)
    total = logits.new_zeros((), dtype=dtype)
    pixels = 0
    for rows, (height, width) in groups:
        upsampled = upsample_logits(logits[rows].to(dtype), (height, width))
        target = labels[rows, :height, :width].to(dtype)
        total = total + BCEDiceSum.apply(upsampled, target, weight, dice_weight * height * width)
        pixels += len(target) * height * width
    denominator = num_items_in_batch if num_items_in_batch is not None else max(pixels, 1)
    if torch.is_tensor(denominator):
        denominator = denominator.to(total.device, total.dtype)
    return total / denominator
