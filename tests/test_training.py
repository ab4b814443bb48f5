"""CLIPSegTrainer and train.py on tiny random configs and a handful of real rows.

Encoder moves / stays frozen, parameter groups, accumulation == big batch, reload equality,
resume after a kill, DDP == one process with the double batch, the CLI's saved files.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import CLIPSegConfig, CLIPSegForImageSegmentation, CLIPSegProcessor

from clipseg_drywall.modeling import model_from_config, segmentation_logits, unused_parameter_names
from clipseg_drywall.training.collator import CLIPSegCollator
from clipseg_drywall.training.run_training import cpu_threads_per_process, main
from clipseg_drywall.training.trainer import CLIPSegTrainer

from .helpers import CLIPSEG_FILES, REPO, make_trainer, requires_shared, tiny_config_dict

pytestmark = requires_shared





def _snapshot(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def _cli(config_dir: Path, data_dir: Path, output_dir: Path, *extra: str) -> list[str]:
    return ["--config_name", str(config_dir), "--tokenizer_name", str(CLIPSEG_FILES), "--dataset_path", str(data_dir),
            "--output_dir", str(output_dir), "--report_to", "none", "--dataloader_pin_memory", "false",
            "--disable_tqdm", "true", *extra]


def _losses(output_dir: Path) -> list[tuple[int, float]]:
    history = json.loads((output_dir / "trainer_state.json").read_text())["log_history"]
    return [(e["step"], e["loss"]) for e in history if "loss" in e]


def test_initial_logits_are_order_one():
    """transformers 5 inits the decoder with std 1.0 (logits in the thousands); `model_from_config` fixes it."""
    torch.manual_seed(0)
    pixels, tokens = torch.randn(2, 3, 224, 224), torch.tensor([[49406, 320, 49407], [49406, 321, 49407]])
    for config in (tiny_config_dict(), json.loads((REPO / "configs/clipseg-small/config.json").read_text())):
        model = model_from_config(CLIPSegConfig(**config)).eval()
        with torch.no_grad():
            logits = model(input_ids=tokens, pixel_values=pixels).logits
        assert logits.abs().max() < 20 and logits.std() < 5, (logits.abs().max(), logits.std())


def test_encoder_moves_after_one_step(tiny_config_dir, tiny_drywall_dir, tmp_path):
    trainer = make_trainer(tmp_path, tiny_drywall_dir, config_dir=tiny_config_dir)  # default encoder lr 1e-6
    before = _snapshot(trainer.model)
    trainer.train()
    unused = set(unused_parameter_names(trainer.model))
    for name, parameter in trainer.model.named_parameters():
        if name in unused:
            assert torch.equal(parameter, before[name]), f"{name} is never used by the decoder yet changed"
        else:
            assert not torch.equal(parameter, before[name]), f"{name} did not move"
    names = {g["name"]: g for g in trainer.optimizer.param_groups}
    assert set(names) == {"decoder", "decoder_no_decay", "encoder", "encoder_no_decay"}
    assert names["encoder"]["initial_lr"] == 1e-6 and names["decoder"]["initial_lr"] == 1e-3  # before the schedule
    assert names["decoder"]["weight_decay"] == 1e-4 and names["encoder_no_decay"]["weight_decay"] == 0.0
    no_decay = {n for n, p in trainer.model.named_parameters()
                if any(p is q for g in trainer.optimizer.param_groups if "no_decay" in g["name"] for q in g["params"])}
    assert "clip.vision_model.pre_layrnorm.weight" in no_decay and "decoder.film_mul.bias" in no_decay
    assert "clip.vision_model.encoder.layers.0.self_attn.q_proj.weight" not in no_decay


def test_freeze_encoder_keeps_it_bit_identical(tiny_config_dir, tiny_drywall_dir, tmp_path):
    trainer = make_trainer(tmp_path, tiny_drywall_dir, config_dir=tiny_config_dir, freeze_encoder=True)
    before = _snapshot(trainer.model)
    trainer.train()
    for name, parameter in trainer.model.named_parameters():
        if name.startswith("clip."):
            assert torch.equal(parameter, before[name]) and parameter.grad is None, name
    assert not torch.equal(trainer.model.decoder.film_mul.weight, before["decoder.film_mul.weight"])
    assert {g["name"] for g in trainer.optimizer.param_groups} == {"decoder", "decoder_no_decay"}


class _MeanPerMicroBatchTrainer(CLIPSegTrainer):
    """The accumulation bug the normalisation exists to prevent: each micro-batch's loss a mean over its own pixels."""

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        return super().compute_loss(model, inputs, return_outputs, num_items_in_batch=None)


def _sgd_updates(config_dir: Path, data_dir: Path, output_dir: Path, trainer_class=None, **overrides):
    """(first logged loss, {name: parameter update}) of one float64 SGD step.

    float64 because fp32 cannot promise these equalities across CPUs: a decoder bias's gradient is a
    sum of dL/dlogit over every pixel of the batch, positive and negative terms cancelling, and its
    summation order (which differs between AVX2 and AVX-512 kernels) moved it by 0.06% of its update.
    In float64 that rounding is ~1e-13 of an update, far inside the tolerance, on any CPU."""
    # SGD: the update is proportional to the gradient (Adam's first step would be ~sign(grad))
    options = {"optim": "sgd", "decoder_learning_rate": 0.5, "encoder_learning_rate": 0.5,
               "dice_weight": 1.0, "pos_weight": 3.0, **overrides}
    trainer = make_trainer(output_dir, data_dir, config_dir=config_dir, **options)
    if trainer_class is not None:
        trainer.__class__ = trainer_class
    trainer.model.double()
    start = _snapshot(trainer.model)
    trainer.train()
    return trainer.state.log_history[0]["loss"], {n: p.detach() - start[n] for n, p in trainer.model.named_parameters()}


def _floor(updates: dict[str, torch.Tensor]) -> float:
    """Below this an update is float64 rounding: a key projection's bias, for one, has an exactly zero
    gradient (softmax ignores a shift shared by every key), so its "update" is noise of ~1e-16 of the step."""
    return 1e-12 * max(float(update.norm()) for update in updates.values())


def _disagreeing(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], rtol: float = 1e-9) -> list[str]:
    """Parameters whose updates differ by more than `rtol` of the update's size (float64 keeps ~1e-13)."""
    floor = _floor(a)
    return [name for name in a if (a[name] - b[name]).norm() > rtol * a[name].norm() + floor]


def test_accumulation_matches_the_big_batch(tiny_config_dir, tiny_drywall_dir, tmp_path):
    big_loss, big = _sgd_updates(tiny_config_dir, tiny_drywall_dir, tmp_path / "big", per_device_train_batch_size=4)
    small_loss, small = _sgd_updates(tiny_config_dir, tiny_drywall_dir, tmp_path / "small",
                                     per_device_train_batch_size=2, gradient_accumulation_steps=2)
    assert big_loss == pytest.approx(small_loss, rel=1e-9)
    assert _disagreeing(big, small) == []
    assert small["decoder.film_mul.weight"].abs().max() > 0 and big["decoder.transposed_convolution.4.bias"].abs() > 0
    # the comparison bites: each micro-batch normalised by its own pixels doubles every update
    _, wrong = _sgd_updates(tiny_config_dir, tiny_drywall_dir, tmp_path / "wrong", _MeanPerMicroBatchTrainer,
                            per_device_train_batch_size=2, gradient_accumulation_steps=2)
    moved = [name for name, update in big.items() if update.norm() > _floor(big)]
    assert "decoder.transposed_convolution.4.bias" in moved and _disagreeing(big, wrong) == moved


@pytest.mark.slow
def test_saved_model_reloads_with_the_same_logits(tiny_config_dir, tiny_drywall_dir, tmp_path):
    trainer = make_trainer(tmp_path, tiny_drywall_dir, config_dir=tiny_config_dir, max_steps=2, encoder_learning_rate=1e-3)
    trainer.train()
    trainer.save_model()
    assert (tmp_path / "model.safetensors").is_file() and not (tmp_path / "pytorch_model.bin").exists()
    reloaded = CLIPSegForImageSegmentation.from_pretrained(tmp_path).eval()
    processor = CLIPSegProcessor.from_pretrained(tmp_path)
    assert reloaded.config.segmentation_threshold == 0.5
    rows = [trainer.eval_dataset[i] for i in range(2)]
    batch = CLIPSegCollator(processor, train=False)(rows)
    trainer.model.eval()
    with torch.no_grad():
        trained = segmentation_logits(trainer.model, batch["pixel_values"], batch["input_ids"], batch["attention_mask"])
        stock = reloaded(pixel_values=batch["pixel_values"], input_ids=batch["input_ids"],
                         attention_mask=batch["attention_mask"]).logits
    assert torch.allclose(trained, stock, atol=1e-5)


@pytest.mark.slow
def test_evaluation_reports_per_task_scores(tiny_config_dir, tiny_drywall_dir, tmp_path):
    trainer = make_trainer(tmp_path, tiny_drywall_dir, config_dir=tiny_config_dir, max_steps=2, eval_strategy="steps",
                       eval_steps=2, save_strategy="steps", save_steps=2, load_best_model_at_end=True)
    trainer.train()
    metrics = [e for e in trainer.state.log_history if "eval_mean_iou" in e][0]
    for key in ("eval_iou_crack", "eval_iou_taping", "eval_dice_crack", "eval_dice_taping", "eval_loss"):
        assert 0.0 <= metrics[key] <= 1.5, key
    assert metrics["eval_mean_iou"] == pytest.approx((metrics["eval_iou_crack"] + metrics["eval_iou_taping"]) / 2)
    assert trainer.state.best_metric == metrics["eval_mean_iou"]
    assert (tmp_path / "training_curves.png").stat().st_size > 1000


KILLED_RUN = """
import os, signal, sys
from transformers import TrainerCallback
from clipseg_drywall.training.run_training import main

class KillAfterSave(TrainerCallback):
    def on_save(self, args, state, control, **kwargs):
        if state.global_step == 4:
            os.kill(os.getpid(), signal.SIGKILL)  # no cleanup, no final save: a real crash

main(sys.argv[1:], callbacks=[KillAfterSave()])
"""


@pytest.mark.slow
def test_resume_after_a_kill_loses_and_repeats_no_step(tiny_config_dir, tiny_drywall_dir, tmp_path):
    # random prompts, flips and negatives on: resuming must replay the same examples too
    extra = ["--max_steps", "6", "--per_device_train_batch_size", "2", "--logging_steps", "1", "--save_strategy",
             "steps", "--save_steps", "2", "--eval_strategy", "no", "--resample_prompts", "--augment",
             "--negative_prompt_ratio", "0.3", "--encoder_learning_rate", "1e-3"]
    main(_cli(tiny_config_dir, tiny_drywall_dir, tmp_path / "straight", *extra))
    killed = tmp_path / "killed"
    run = subprocess.run([sys.executable, "-c", KILLED_RUN, *_cli(tiny_config_dir, tiny_drywall_dir, killed, *extra)],
                         capture_output=True, text=True, cwd=REPO, timeout=300)
    assert run.returncode == -9, run.stderr[-3000:]
    assert (killed / "checkpoint-4").is_dir() and not (killed / "checkpoint-6").exists()
    main(_cli(tiny_config_dir, tiny_drywall_dir, killed, *extra, "--resume_from_checkpoint", str(killed / "checkpoint-4")))
    straight, resumed = _losses(tmp_path / "straight"), _losses(killed)
    assert [s for s, _ in resumed] == [1, 2, 3, 4, 5, 6]
    assert [loss for _, loss in resumed] == pytest.approx([loss for _, loss in straight], rel=1e-5)
    a = CLIPSegForImageSegmentation.from_pretrained(tmp_path / "straight")
    b = CLIPSegForImageSegmentation.from_pretrained(killed)
    for (name, p), q in zip(a.named_parameters(), b.parameters()):
        assert torch.allclose(p, q, atol=1e-6), name


@pytest.mark.slow
def test_ddp_two_processes_match_one_with_double_batch(tiny_config_dir, tiny_drywall_dir, tmp_path):
    """`accelerate launch --multi_gpu --num_processes 2 train.py --use_cpu` = DDP over gloo on CPU.

    (`accelerate launch --cpu --num_processes 2` starts a single process in accelerate 1.x unless
    mpirun is configured, so the two-process CPU launch goes through torchrun this way.)
    """
    extra = ["--max_steps", "3", "--logging_steps", "1", "--eval_strategy", "no", "--save_strategy", "steps",
             "--save_steps", "3", "--encoder_learning_rate", "1e-3", "--dice_weight", "1", "--keep_checkpoints"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
              "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "train.py", "--use_cpu"]
    run = subprocess.run([*launch, *_cli(tiny_config_dir, tiny_drywall_dir, tmp_path / "ddp", *extra,
                                         "--per_device_train_batch_size", "2")],
                         capture_output=True, text=True, cwd=REPO, env=env, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    main(_cli(tiny_config_dir, tiny_drywall_dir, tmp_path / "one", *extra, "--per_device_train_batch_size", "4"))
    ddp, one = _losses(tmp_path / "ddp"), _losses(tmp_path / "one")
    assert [s for s, _ in ddp] == [1, 2, 3]
    assert [loss for _, loss in ddp] == pytest.approx([loss for _, loss in one], rel=1e-5)
    assert (tmp_path / "ddp" / "checkpoint-3" / "model.safetensors").is_file()
    CLIPSegForImageSegmentation.from_pretrained(tmp_path / "ddp")


@pytest.mark.slow
def test_accelerate_launch_cli_leaves_a_loadable_model(tiny_config_dir, tiny_drywall_dir, tmp_path):
    """The issue's acceptance command, verbatim apart from paths."""
    output = tmp_path / "out"
    command = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "1", "--num_machines", "1",
               "--mixed_precision", "no", "--dynamo_backend", "no", "train.py",
               "--config_name", str(tiny_config_dir), "--tokenizer_name", str(CLIPSEG_FILES),
               "--dataset_path", str(tiny_drywall_dir), "--output_dir", str(output), "--max_steps", "20",
               "--per_device_train_batch_size", "2", "--eval_strategy", "no", "--save_strategy", "steps",
               "--save_steps", "10", "--report_to", "none"]
    run = subprocess.run(command, capture_output=True, text=True, cwd=REPO, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    assert (output / "model.safetensors").is_file()
    assert not list(output.glob("checkpoint-*"))  # optimizer state is gone once training has finished
    umask = os.umask(0)
    os.umask(umask)
    assert (output / "model.safetensors").stat().st_mode & 0o777 == 0o666 & ~umask
    CLIPSegForImageSegmentation.from_pretrained(output)
    CLIPSegProcessor.from_pretrained(output)
    card = (output / "README.md").read_text()  # model_card.md rendered: metadata, hyperparameters, hardware
    assert "library_name: transformers" in card and "pipeline_tag: image-segmentation" in card
    assert "decoder_learning_rate" in card and "CIDAS" not in card.split("---")[1]
    # accelerate sets OMP_NUM_THREADS=1 without --cpu: training still uses every core (footprint.device_name)
    assert re.search(rf"- \*\*hardware\*\*: cpu \(.+, {cpu_threads_per_process()} threads\)\n", card), card
    assert "trained from randomly initialised weights" in card  # --config_name: no pretrained base
    assert not list(output.glob("**/pytorch_model*.bin"))  # weights are safetensors only
