"""CLIPSeg forward passes that the stock model does not offer.

`CLIPSegForImageSegmentation.forward` runs both CLIP encoders under `torch.no_grad()`, so an
encoder learning rate there trains nothing. The functions below recompute exactly what the
decoder consumes (the `extract_layers` activations and the text conditional embedding) with
autograd left to the caller, and stop the vision tower after the deepest extracted layer.
They work on the stock class, so every checkpoint stays a plain `CLIPSegForImageSegmentation`.
"""

from __future__ import annotations

import types

import torch
from torch import nn
from transformers import CLIPSegConfig, CLIPSegForImageSegmentation
from transformers.models.clipseg.modeling_clipseg import CLIPSegImageSegmentationOutput

from .losses import segmentation_loss

DEFAULT_BASE_MODEL = "CIDAS/clipseg-rd64-refined"  # the checkpoint fine-tuning starts from by default


def vision_activations(
    model: CLIPSegForImageSegmentation, pixel_values: torch.Tensor
) -> list[torch.Tensor]:
    """The hidden states after each layer in `config.extract_layers`, shallowest first."""
    vision = model.clip.vision_model
    hidden = vision.pre_layrnorm(vision.embeddings(pixel_values, interpolate_pos_encoding=True))
    wanted = set(model.config.extract_layers)
    activations = []
    for index, layer in enumerate(vision.encoder.layers[: max(wanted) + 1]):
        hidden = layer(hidden, None)
        if index in wanted:
            activations.append(hidden)
    return activations


def text_embeddings(
    model: CLIPSegForImageSegmentation,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """The projected text embedding the decoder is conditioned on, shape (B, projection_dim)."""
    return model.clip.get_text_features(input_ids=input_ids, attention_mask=attention_mask).pooler_output


def decode(
    model: CLIPSegForImageSegmentation,
    activations: list[torch.Tensor],
    conditional_embeddings: torch.Tensor,
) -> torch.Tensor:
    """Decoder logits (B, H, W) at the processor's resolution (352 for the CIDAS processor)."""
    return model.decoder(activations, conditional_embeddings).logits


def segmentation_logits(
    model: CLIPSegForImageSegmentation,
    pixel_values: torch.Tensor,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    train_encoder: bool = True,
) -> torch.Tensor:
    """Same logits as the stock forward, with gradients through the encoders when `train_encoder`."""
    with torch.set_grad_enabled(train_encoder and torch.is_grad_enabled()):
        activations = vision_activations(model, pixel_values)
        conditional = text_embeddings(model, input_ids, attention_mask)
    return decode(model, activations, conditional)


def decoder_init_modules(model: CLIPSegForImageSegmentation) -> list[nn.Module]:
    """The decoder modules transformers 5.x initialises with std = initializer_factor (1.0)."""
    decoder = model.decoder
    convolutions = [m for m in decoder.transposed_convolution.modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))]
    return [decoder.film_mul, decoder.film_add, *decoder.reduces, *convolutions]


def reset_decoder_init(model: CLIPSegForImageSegmentation) -> CLIPSegForImageSegmentation:
    """Give the decoder PyTorch's default init, as the original CLIPSeg code does.

    `CLIPSegConfig` has no `initializer_range`, so transformers' generic init draws these
    Linear/Conv weights with std 1.0: initial logits reach the thousands and the head's ReLUs die.
    """
    with torch.no_grad():
        for module in decoder_init_modules(model):
            module.reset_parameters()
    return model


def model_from_config(config: CLIPSegConfig) -> CLIPSegForImageSegmentation:
    """A randomly initialised model that can actually learn (see `reset_decoder_init`)."""
    return reset_decoder_init(CLIPSegForImageSegmentation(config))


# ---- training: which parameters learn, and a forward that DDP can wrap ----

ENCODER_PREFIX = "clip."
DECODER_PREFIX = "decoder."


def unused_parameter_names(model: CLIPSegForImageSegmentation) -> list[str]:
    """CLIP parameters the decoder never reaches: vision layers past the deepest extracted one,
    the vision head (post-norm, projection) and the contrastive `logit_scale`.

    They must not require gradients, or DDP waits forever for their (never produced) gradients.
    """
    deepest = max(model.config.extract_layers)
    unused = ("clip.vision_model.post_layernorm.", "clip.visual_projection.", "clip.logit_scale")
    names = []
    for name, _ in model.named_parameters():
        parts = name.split(".")
        past_deepest = name.startswith("clip.vision_model.encoder.layers.") and int(parts[4]) > deepest
        if past_deepest or name.startswith(unused):
            names.append(name)
    return names


def set_encoder_trainable(model: CLIPSegForImageSegmentation, trainable: bool) -> CLIPSegForImageSegmentation:
    """`requires_grad` for the CLIP encoders (off for the parts the decoder never uses); the decoder always trains."""
    unused = set(unused_parameter_names(model))
    for name, parameter in model.named_parameters():
        if name.startswith(ENCODER_PREFIX):
            parameter.requires_grad_(trainable and name not in unused)
        else:
            parameter.requires_grad_(True)
    return model


def encoder_is_trainable(model: CLIPSegForImageSegmentation) -> bool:
    return any(p.requires_grad for n, p in model.named_parameters() if n.startswith(ENCODER_PREFIX))


def _contiguous_input(module: nn.Module, args: tuple) -> tuple:
    return tuple(a.contiguous() if isinstance(a, torch.Tensor) else a for a in args)


def make_transposed_convolution_contiguous(model: CLIPSegForImageSegmentation) -> None:
    """The decoder feeds its head a transposed view; MPS's ConvTranspose2d backward needs contiguous
    inputs (wrong gradients or an error otherwise). A pre-hook fixes it once, for every device."""
    head = model.decoder.transposed_convolution
    if not getattr(head, "_contiguous_hook", False):
        head.register_forward_pre_hook(_contiguous_input)
        head._contiguous_hook = True


# the stock forward's arguments that the gradient forward accepts without changing its meaning
_ACCEPTED_FALSE = ("output_attentions", "output_hidden_states")


def _gradient_forward(
    self: CLIPSegForImageSegmentation,
    pixel_values: torch.Tensor | None = None,
    input_ids: torch.Tensor | None = None,
    attention_mask: torch.Tensor | None = None,
    activations: torch.Tensor | None = None,
    conditional_embeddings: torch.Tensor | None = None,
    labels: torch.Tensor | None = None,
    return_dict: bool | None = None,
    interpolate_pos_encoding: bool = True,
    num_items_in_batch: torch.Tensor | int | None = None,
    **kwargs,
) -> CLIPSegImageSegmentationOutput | tuple:
    """The stock forward's contract with gradients through the encoders (see `use_gradient_forward`).

    `labels` (B, H, W) in {0, 1} (padded with -100) give `loss`: the training loss itself
    (`losses.segmentation_loss` with the loss options of `use_gradient_forward`), normalised by
    `num_items_in_batch` when given (the Trainer passes it), else by this batch's labelled pixels.
    """
    unsupported = sorted(k for k, v in kwargs.items() if not (k in _ACCEPTED_FALSE and not v))
    if unsupported:
        raise TypeError(
            f"the training forward of clipseg_drywall does not support {', '.join(unsupported)}; "
            "call clipseg_drywall.modeling.restore_stock_forward(model) for the stock CLIPSeg forward"
        )
    if not interpolate_pos_encoding:
        raise TypeError("the training forward always interpolates position embeddings (any processor size)")
    if activations is not None:  # cached CLIP features (B, layers, tokens, hidden): the decoder alone
        logits = decode(self, list(activations.unbind(1)), conditional_embeddings)
    else:
        logits = segmentation_logits(self, pixel_values, input_ids, attention_mask,
                                     train_encoder=encoder_is_trainable(self))
    loss = None
    if labels is not None:
        loss = segmentation_loss(logits, labels, num_items_in_batch, **loss_options(self))
    if return_dict is False:
        return (logits,) if loss is None else (loss, logits)
    return CLIPSegImageSegmentationOutput(loss=loss, logits=logits)


LOSS_OPTIONS = "_clipseg_drywall_loss_options"  # instance attribute: the loss weights `labels` are scored with


def loss_options(model: CLIPSegForImageSegmentation) -> dict:
    """`dice_weight` and `pos_weight` of the loss this model's gradient forward computes."""
    return dict(getattr(model, LOSS_OPTIONS, {"dice_weight": 0.0, "pos_weight": None}))


def use_gradient_forward(
    model: CLIPSegForImageSegmentation, dice_weight: float = 0.0, pos_weight: float | None = None
) -> CLIPSegForImageSegmentation:
    """Make this instance's `forward` the gradient path (`segmentation_logits`), in place.

    Wrappers such as DDP only synchronise gradients of a forward they call themselves, so the
    gradient path has to be `model.forward`. Only the instance changes: the class, and therefore
    every saved checkpoint, stays a plain `CLIPSegForImageSegmentation`. Encoder gradients
    follow `requires_grad` (see `set_encoder_trainable`). Given `activations` (cached features,
    see `feature_cache.py`) and `conditional_embeddings`, only the decoder runs.
    `restore_stock_forward` undoes it. `dice_weight` and `pos_weight` are the loss that `labels` give,
    so `model(labels=...).loss` is the loss the Trainer optimises.
    """
    make_transposed_convolution_contiguous(model)
    setattr(model, LOSS_OPTIONS, {"dice_weight": float(dice_weight), "pos_weight": pos_weight})
    model.forward = types.MethodType(_gradient_forward, model)
    return model


def restore_stock_forward(model: CLIPSegForImageSegmentation) -> CLIPSegForImageSegmentation:
    """Undo `use_gradient_forward` and `set_encoder_trainable`: the class's own forward, every
    parameter trainable again (the contiguity pre-hook stays: it changes no value)."""
    model.__dict__.pop("forward", None)
    model.__dict__.pop(LOSS_OPTIONS, None)
    for parameter in model.parameters():
        parameter.requires_grad_(True)
    return model
