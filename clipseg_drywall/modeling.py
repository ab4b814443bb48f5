"""CLIPSeg forward passes that the stock model does not offer.

`CLIPSegForImageSegmentation.forward` runs both CLIP encoders under `torch.no_grad()`, so an
encoder learning rate there trains nothing. The functions below recompute exactly what the
decoder consumes (the `extract_layers` activations and the text conditional embedding) with
autograd left to the caller, and stop the vision tower after the deepest extracted layer.
They work on the stock class, so every checkpoint stays a plain `CLIPSegForImageSegmentation`.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import CLIPSegConfig, CLIPSegForImageSegmentation


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
