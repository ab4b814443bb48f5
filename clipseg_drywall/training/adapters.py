"""LoRA adapters (peft) in CLIPSeg's CLIP towers, merged back into a plain checkpoint for saving.

Between training the whole encoder (`cidas-finetune`) and the decoder alone (`cidas-decoder-cached`):
low-rank adapters on the attention and MLP projections of
- the CLIP vision layers up to the deepest in `config.extract_layers` (the decoder never reads
  the later ones, which stay frozen without adapters), and
- every CLIP text layer (the prompt embedding the decoder is conditioned on),
while the decoder trains in full. The decoder's own layers are `CLIPSegDecoderLayer`s with the same
module names (`self_attn.q_proj`, `mlp.fc1`, ...), so the targets are one regular expression over
full module names, scoped to `clip.` (peft full-matches a string target).

The adapters are injected in place (`peft.inject_adapter_in_model`), so the model stays a
`CLIPSegForImageSegmentation` with the package's gradient forward (the stock forward runs CLIP under
`no_grad`, where adapters learn nothing), and the Trainer saves and resumes it as any model: its
checkpoints hold the full state dict (frozen base weights, adapters, decoder). `merge_adapters` folds
them into the base weights for the final, plain checkpoint; `save_adapter` keeps the adapter alone.

Only training imports this module: the inference install has no peft.
"""

from __future__ import annotations

import re
from pathlib import Path

import peft
import torch
from peft.tuners.tuners_utils import BaseTunerLayer
from peft.utils import get_peft_model_state_dict
from safetensors.torch import save_file
from transformers import CLIPSegConfig, CLIPSegForImageSegmentation

from ..modeling import DECODER_PREFIX

# the attention and MLP projections of a CLIP encoder layer (`CLIPSegEncoderLayer`)
LORA_PROJECTIONS = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.out_proj", "mlp.fc1", "mlp.fc2")
ADAPTER_DIR = "adapter"  # beside the merged model: adapter_model.safetensors + adapter_config.json
PEFT_PREFIX = "base_model.model."  # how a PeftModel names the wrapped model's weights in adapter files


def adapted_layers(config: CLIPSegConfig) -> dict[str, list[int]]:
    """The CLIP layers that get adapters: vision up to the deepest extracted layer, every text layer."""
    return {"vision_model": list(range(max(config.extract_layers) + 1)),
            "text_model": list(range(config.text_config.num_hidden_layers))}


def lora_target_pattern(config: CLIPSegConfig) -> str:
    """A regex peft full-matches against module names: the projections of `adapted_layers`, under `clip.` only."""
    towers = "|".join(rf"{tower}\.encoder\.layers\.({'|'.join(map(str, layers))})"
                      for tower, layers in adapted_layers(config).items())
    projections = "|".join(map(re.escape, LORA_PROJECTIONS))
    return rf"clip\.({towers})\.({projections})"


def describe_targets(config: CLIPSegConfig) -> str:
    """The target set in words, for the model card."""
    layers = adapted_layers(config)
    names = ", ".join(p.split(".")[-1] for p in LORA_PROJECTIONS)
    return (f"{names} of CLIP vision layers 0-{layers['vision_model'][-1]} and text layers "
            f"0-{layers['text_model'][-1]}")


def lora_config(config: CLIPSegConfig, rank: int, alpha: float, dropout: float) -> peft.LoraConfig:
    return peft.LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout, target_modules=lora_target_pattern(config),
                           bias="none")


def has_adapters(model: torch.nn.Module) -> bool:
    return any(isinstance(module, BaseTunerLayer) for module in model.modules())


def apply_lora(model: CLIPSegForImageSegmentation, rank: int, alpha: float = 16.0,
               dropout: float = 0.0) -> CLIPSegForImageSegmentation:
    """Inject LoRA adapters in place (see the module doc); only they and the decoder require gradients."""
    if has_adapters(model):
        raise ValueError("the model already holds adapters; merge them (adapters.merge_adapters) before adding new ones")
    peft.inject_adapter_in_model(lora_config(model.config, rank, alpha, dropout), model)
    # peft froze everything but the adapters; the decoder is trained in full
    for name, parameter in model.named_parameters():
        if name.startswith(DECODER_PREFIX):
            parameter.requires_grad_(True)
    return model


def adapted_module_names(model: torch.nn.Module) -> list[str]:
    return [name for name, module in model.named_modules() if isinstance(module, BaseTunerLayer)]


def merge_adapters(model: CLIPSegForImageSegmentation) -> CLIPSegForImageSegmentation:
    """Fold every adapter into its base weight and put the plain `nn.Linear` back (peft's
    `merge_and_unload`, for a model adapted in place): in place, and returned."""
    for name in adapted_module_names(model):
        module = model.get_submodule(name)
        module.merge(safe_merge=True)  # safe: refuses NaN weights instead of saving them
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent), child, module.get_base_layer())
    model.__dict__.pop("peft_config", None)  # set by the injection; a plain model has none
    return model


def save_adapter(model: CLIPSegForImageSegmentation, folder: str | Path, base_model: str | None = None) -> Path:
    """The adapter alone, as `PeftModel.from_pretrained(base, folder)` reads it: the LoRA weights and,
    since the decoder trained in full, the decoder's weights (`modules_to_save`)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    config = model.peft_config["default"]
    config = peft.LoraConfig(**{**config.to_dict(), "modules_to_save": ["decoder"], "inference_mode": True,
                                "base_model_name_or_path": base_model})
    weights = {PEFT_PREFIX + k: v for k, v in get_peft_model_state_dict(model).items()}
    weights.update({f"{PEFT_PREFIX}decoder.{k}": v for k, v in model.decoder.state_dict().items()})
    save_file({k: v.detach().cpu().contiguous() for k, v in weights.items()}, folder / "adapter_model.safetensors",
              metadata={"format": "pt"})
    config.save_pretrained(folder)
    return folder


def parameter_counts(model: torch.nn.Module) -> tuple[int, int]:
    """(trainable, total) parameters, adapters included."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return trainable, sum(p.numel() for p in model.parameters())
