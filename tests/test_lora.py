"""LoRA adapters (`--lora_rank`) and gradient checkpointing (`--gradient_checkpointing`) on tiny configs.

Targets scoped to the CLIP towers; adapters learn only through the gradient forward; base weights stay
bit-identical while adapters and decoder move; the merged checkpoint loads without peft with the
adapted model's logits; refusals name their reason; checkpointing recomputes and changes nothing;
a killed LoRA run resumes to the same weights.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file
from transformers import CLIPSegConfig, TrainerCallback

from clipseg_drywall.arguments import ModelArguments
from clipseg_drywall.losses import segmentation_loss
from clipseg_drywall.modeling import model_from_config, segmentation_logits, use_gradient_forward
from clipseg_drywall.training.adapters import (
    ADAPTER_DIR,
    adapted_module_names,
    apply_lora,
    has_adapters,
    lora_target_pattern,
    parameter_counts,
)
from clipseg_drywall.training.run_training import finish_adapters, main

from .helpers import CLIPSEG_FILES, REPO, exit_code, make_trainer, requires_shared, tiny_config_dict

LORA = {"lora_rank": 4, "lora_alpha": 8.0, "lora_dropout": 0.1, "encoder_learning_rate": 1e-3}


def _tiny_model(**config) -> torch.nn.Module:
    torch.manual_seed(0)
    return model_from_config(CLIPSegConfig(**{**tiny_config_dict(), **config}))


def _batch():
    torch.manual_seed(1)
    pixels, tokens = torch.randn(2, 3, 224, 224), torch.tensor([[49406, 320, 49407], [49406, 321, 49407]])
    return pixels, tokens, (torch.rand(2, 40, 30) > 0.5).float()




def test_targets_are_the_clip_layers_the_decoder_reads():
    # the decoder reads vision layers 0-1: layer 2 gets no adapter; the decoder's same-named layers none either
    model = apply_lora(_tiny_model(extract_layers=[0, 1]), rank=4)
    names = adapted_module_names(model)
    projections = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.out_proj", "mlp.fc1", "mlp.fc2")
    expected = {f"clip.{tower}.encoder.layers.{i}.{p}" for tower, layers in (("vision_model", (0, 1)), ("text_model", (0, 1)))
                for i in layers for p in projections}
    assert set(names) == expected
    assert any(n.startswith("decoder.layers.0.self_attn.q_proj") for n, _ in model.named_parameters())
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {n for n, _ in model.named_parameters() if "lora_" in n or n.startswith("decoder.")}
    rank4 = parameter_counts(model)[0] - sum(p.numel() for p in model.decoder.parameters())
    assert rank4 == 4 * sum(m.in_features + m.out_features for m in (model.get_submodule(n).base_layer for n in names))
    assert lora_target_pattern(model.config).startswith(r"clip\.")
    with pytest.raises(ValueError, match="already holds adapters"):
        apply_lora(model, rank=4)


def test_adapters_learn_through_the_gradient_forward_and_not_the_stock_one():
    pixels, tokens, labels = _batch()
    model = apply_lora(_tiny_model(), rank=4, dropout=0.0)
    lora = {n: p for n, p in model.named_parameters() if "lora_" in n}
    # the stock forward runs CLIP under no_grad: the loss reaches the decoder only
    segmentation_loss(model(pixel_values=pixels, input_ids=tokens).logits, labels).backward()
    assert all(p.grad is None for p in lora.values()) and model.decoder.film_mul.weight.grad is not None
    model.zero_grad(set_to_none=True)
    use_gradient_forward(model)
    model(pixel_values=pixels, input_ids=tokens, labels=labels).loss.backward()
    # B starts at zero, so only B has a gradient on the first step
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for n, p in lora.items() if "lora_B" in n)
    with torch.no_grad():
        for name, parameter in lora.items():
            if "lora_B" in name:
                parameter.normal_(std=0.02)
    model.zero_grad(set_to_none=True)
    model(pixel_values=pixels, input_ids=tokens, labels=labels).loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in lora.values())
    assert all(p.grad is None for n, p in model.named_parameters() if n.startswith("clip.") and "lora_" not in n)


@requires_shared
def test_a_lora_run_moves_adapters_and_decoder_and_keeps_clip_bit_identical(tiny_config_dir, tiny_drywall_dir, tmp_path):
    trainer = make_trainer(tmp_path, tiny_drywall_dir, config_dir=tiny_config_dir, max_steps=2, **LORA)
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    trainer.train()
    for name, parameter in trainer.model.named_parameters():
        if "lora_" in name or name.startswith("decoder."):
            assert not torch.equal(parameter, before[name]), f"{name} did not move"
        else:
            assert torch.equal(parameter, before[name]) and parameter.grad is None, f"{name} is frozen yet changed"
    rates = {g["name"]: g["initial_lr"] for g in trainer.optimizer.param_groups}
    assert rates == {"decoder": 1e-3, "decoder_no_decay": 1e-3, "encoder": 1e-3}  # adapters: the encoder rate


PEFT_BLOCKED = """
import sys
sys.modules["peft"] = None  # `import peft` fails, as in the inference install
try:
    import peft
    raise SystemExit("peft imported")
except ImportError:
    pass
import torch
from transformers import CLIPSegForImageSegmentation
inputs = torch.load(sys.argv[2])
model = CLIPSegForImageSegmentation.from_pretrained(sys.argv[1]).eval()
with torch.no_grad():
    logits = model(**inputs["batch"]).logits
difference = (logits - inputs["logits"]).abs().max().item()
print(difference)
assert difference < 1e-5, difference
assert "peft" not in {m.split(".")[0] for m in sys.modules if sys.modules[m] is not None}
"""


@requires_shared
def test_the_merged_checkpoint_is_plain_and_loads_without_peft(tiny_model_dir, tiny_drywall_dir, tmp_path):
    from peft import PeftModel
    from transformers import CLIPSegForImageSegmentation

    trainer = make_trainer(tmp_path / "out", tiny_drywall_dir, model_dir=tiny_model_dir, max_steps=2, **LORA)
    trainer.train()
    batch = next(iter(trainer.get_eval_dataloader()))
    batch = {k: batch[k] for k in ("pixel_values", "input_ids", "attention_mask")}
    trainer.model.eval()
    with torch.no_grad():
        adapted = segmentation_logits(trainer.model, **batch)
    finish_adapters(trainer, ModelArguments(model_name_or_path=str(tiny_model_dir)))
    trainer.save_model()
    output = tmp_path / "out"
    assert not has_adapters(trainer.model)
    keys = load_file(output / "model.safetensors").keys()
    assert not [k for k in keys if "lora_" in k or "base_layer" in k]
    assert not list(output.glob("pytorch_model*"))  # safetensors only
    torch.save({"batch": batch, "logits": adapted}, tmp_path / "expected.pt")
    run = subprocess.run([sys.executable, "-c", PEFT_BLOCKED, str(output), str(tmp_path / "expected.pt")],
                         capture_output=True, text=True, cwd=REPO / "tests", timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    # the adapter kept beside it (adapters + the trained decoder) rebuilds the same model on the base checkpoint
    assert json.loads((output / ADAPTER_DIR / "adapter_config.json").read_text())["modules_to_save"] == ["decoder"]
    rebuilt = PeftModel.from_pretrained(CLIPSegForImageSegmentation.from_pretrained(tiny_model_dir), output / ADAPTER_DIR)
    with torch.no_grad():
        assert (rebuilt.eval()(**batch).logits - adapted).abs().max() < 1e-5


@pytest.mark.parametrize("flags, reason", [
    (["--freeze_encoder"], "--lora_rank trains adapters inside the CLIP encoders, which --freeze_encoder"),
    (["--encoder_learning_rate", "0"], "--encoder_learning_rate 0"),
    (["--cache_features"], "their features change every step and cannot be cached: drop --cache_features"),
    (["--lora_rank", "0"], "--lora_rank must be a positive rank"),
])
def test_lora_refuses_what_would_train_nothing(flags, reason, tiny_config_dir, tmp_path, capsys):
    argv = ["--config_name", str(tiny_config_dir), "--dataset_name", "someone/drywall-qa", "--output_dir",
            str(tmp_path / "out"), "--lora_rank", "8", *flags]
    assert exit_code(main, argv) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("error: ") and reason in error and "\n" not in error


def _layer_calls(model) -> dict[str, list]:
    """Forward calls of each tower's first layer norm: a checkpointed layer runs again in the backward (up to
    the last tensor its backward needs: torch stops the recompute early, so a layer's final fc2 never reruns)."""
    layers = {"vision": model.clip.vision_model.encoder.layers[0], "text": model.clip.text_model.encoder.layers[0],
              "decoder": model.decoder.layers[0]}
    calls = {name: [] for name in layers}
    for name, layer in layers.items():
        layer.layer_norm1.register_forward_hook(lambda module, args, output, name=name: calls[name].append(1))
    return calls


class StepRecorder(TrainerCallback):
    """The loss and gradients of the first optimizer step, as the Trainer computed them."""

    def __init__(self, trainer):
        self.trainer, self.losses, self.gradients = trainer, [], {}
        compute_loss = trainer.compute_loss
        trainer.compute_loss = lambda *a, **k: self.losses.append(compute_loss(*a, **k)) or self.losses[-1]

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        self.gradients = {n: p.grad.clone() for n, p in self.trainer.model.named_parameters() if p.requires_grad}


@requires_shared
@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
def test_checkpointing_recomputes_and_changes_neither_loss_nor_gradients(lora, tiny_config_dir, tiny_drywall_dir,
                                                                          tmp_path):
    results = {}
    for checkpointing in (False, True):
        # the Trainer's flag; LoRA dropout on: the recompute must draw the same masks (the RNG state is kept)
        trainer = make_trainer(tmp_path / str(checkpointing), tiny_drywall_dir, config_dir=tiny_config_dir,
                           gradient_checkpointing=checkpointing, **(LORA if lora else {"encoder_learning_rate": 1e-3}))
        recorder = StepRecorder(trainer)
        trainer.add_callback(recorder)
        calls = _layer_calls(trainer.model)
        trainer.train()
        model = trainer.model
        assert all(layer.gradient_checkpointing == checkpointing for layer in
                   [*model.clip.vision_model.encoder.layers, *model.clip.text_model.encoder.layers])
        # a checkpointed layer runs again in the backward pass: vision, text and decoder alike
        assert {name: len(c) for name, c in calls.items()} == dict.fromkeys(calls, 2 if checkpointing else 1)
        results[checkpointing] = recorder.losses[0].detach(), recorder.gradients
    (plain_loss, plain), (checked_loss, checked) = results[False], results[True]
    assert torch.equal(plain_loss, checked_loss)
    assert plain.keys() == checked.keys() and any("lora_" in n for n in plain) == lora
    for name, gradient in plain.items():
        assert torch.allclose(gradient, checked[name], rtol=1e-5, atol=1e-7), name


KILLED_RUN = """
import os, signal, sys
from transformers import TrainerCallback
from clipseg_drywall.training.run_training import main

class KillAfterSave(TrainerCallback):
    def on_save(self, args, state, control, **kwargs):
        if state.global_step == 2:
            os.kill(os.getpid(), signal.SIGKILL)  # no cleanup, no merge, no final save: a real crash

main(sys.argv[1:], callbacks=[KillAfterSave()])
"""


@requires_shared
@pytest.mark.slow
def test_a_killed_lora_run_resumes_to_the_same_weights(tiny_config_dir, tiny_drywall_dir, tmp_path):
    from transformers import CLIPSegForImageSegmentation

    cli = ["--config_name", str(tiny_config_dir), "--tokenizer_name", str(CLIPSEG_FILES), "--dataset_path",
           str(tiny_drywall_dir), "--report_to", "none", "--dataloader_pin_memory", "false", "--disable_tqdm", "true",
           "--max_steps", "4", "--per_device_train_batch_size", "2", "--logging_steps", "1", "--save_strategy", "steps",
           "--save_steps", "2", "--eval_strategy", "no", "--resample_prompts", "--augment", "--lora_rank", "4",
           "--lora_dropout", "0.1", "--encoder_learning_rate", "1e-3", "--gradient_checkpointing"]
    main([*cli, "--output_dir", str(tmp_path / "straight")])
    killed = tmp_path / "killed"
    run = subprocess.run([sys.executable, "-c", KILLED_RUN, *cli, "--output_dir", str(killed)],
                         capture_output=True, text=True, cwd=REPO, timeout=300)
    assert run.returncode == -9, run.stderr[-3000:]
    assert (killed / "checkpoint-2").is_dir() and not (killed / "checkpoint-4").exists()
    main([*cli, "--output_dir", str(killed), "--resume_from_checkpoint", str(killed / "checkpoint-2")])
    losses = [[e["loss"] for e in json.loads((folder / "trainer_state.json").read_text())["log_history"] if "loss" in e]
              for folder in (tmp_path / "straight", killed)]
    assert len(losses[1]) == 4 and losses[1] == pytest.approx(losses[0], rel=1e-5)
    a = CLIPSegForImageSegmentation.from_pretrained(tmp_path / "straight")
    b = CLIPSegForImageSegmentation.from_pretrained(killed)
    for (name, p), q in zip(a.named_parameters(), b.parameters()):
        assert torch.allclose(p, q, atol=1e-6), name
    assert (killed / ADAPTER_DIR / "adapter_model.safetensors").is_file()
    card = (killed / "README.md").read_text()
    assert "**LoRA**: rank 4" in card and "**trainable parameters**" in card
