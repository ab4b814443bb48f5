"""The gradient forward the trainer installs: what it supports, its loss, and its undo."""

from __future__ import annotations

import pytest
import torch
from transformers import CLIPSegConfig

from clipseg_drywall.losses import segmentation_loss
from clipseg_drywall.modeling import model_from_config, restore_stock_forward, use_gradient_forward

from .helpers import tiny_config_dict

HEAVY = ("lxml", "datasets", "matplotlib", "evaluate", "data_builders", "peft")


def _pixels_and_tokens():
    torch.manual_seed(0)
    return torch.randn(2, 3, 224, 224), torch.tensor([[49406, 320, 49407], [49406, 321, 49407]])


def test_training_forward_names_what_it_does_not_support_and_honours_labels():
    model = use_gradient_forward(model_from_config(CLIPSegConfig(**tiny_config_dict())), dice_weight=1.0, pos_weight=3.0)
    pixels, tokens = _pixels_and_tokens()
    with pytest.raises(TypeError, match="output_attentions.*restore_stock_forward"):
        model(pixel_values=pixels, input_ids=tokens, output_attentions=True)
    with pytest.raises(TypeError, match="position_ids"):
        model(pixel_values=pixels, input_ids=tokens, position_ids=None)
    labels = (torch.rand(2, 40, 30) > 0.5).float()
    output = model(pixel_values=pixels, input_ids=tokens, labels=labels, output_attentions=False)
    assert output.loss is not None and output.loss.requires_grad and output.loss > 0
    loss, logits = model(pixel_values=pixels, input_ids=tokens, labels=labels, return_dict=False)
    assert torch.equal(loss, output.loss) and torch.equal(logits, output.logits)
    # `labels` give the loss the Trainer optimises (its Dice and foreground weights), not a plain BCE
    assert torch.equal(output.loss, segmentation_loss(output.logits, labels, dice_weight=1.0, pos_weight=3.0))
    assert not torch.allclose(output.loss, segmentation_loss(output.logits, labels))
    halved = model(pixel_values=pixels, input_ids=tokens, labels=labels, num_items_in_batch=2 * labels.numel()).loss
    assert torch.allclose(halved, output.loss / 2)


def test_restoring_the_stock_forward_is_one_call():
    model = model_from_config(CLIPSegConfig(**tiny_config_dict())).eval()
    pixels, tokens = _pixels_and_tokens()
    with torch.no_grad():
        stock = model(pixel_values=pixels, input_ids=tokens)
    use_gradient_forward(model)
    restore_stock_forward(model)
    assert "forward" not in model.__dict__
    with torch.no_grad():
        again = model(pixel_values=pixels, input_ids=tokens, output_attentions=True)
    assert torch.allclose(stock.logits, again.logits) and again.vision_model_output is not None
