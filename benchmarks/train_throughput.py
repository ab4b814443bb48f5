"""Training throughput, measured side by side in one run: the data pipeline's cost, a step split into its
parts, and the Trainer's samples/s with its model FLOPs utilisation.

  data     CPU milliseconds per sample, on one core of this process, to turn the sampler's picks into a
           batch (read the rows, decode, augment, preprocess, collate): the reference path of before (rows
           pre-resized as PNG, read a row at a time, the image processor on PIL images) and the package's
           (rows pre-resized as BMP with fast-PNG masks, a batch in one read, the processor's steps as a
           lookup table), on the same rows and draws. Their batches must be equal, bit for bit.
  step     one training step split into data wait, forward, native-resolution loss, backward and optimizer,
           each timed between device synchronisations (`torch.profiler` would add its own overhead to a
           tiny model's step), over --steps steps after --warmup
  trainer  samples/s of `Trainer.train()` with the options `train.py` fits to the device (workers, pinned
           memory, bf16), the share of a step spent waiting for data, and the model FLOPs utilisation where
           the device's peak is known: 3 x the vision pass's FLOPs per sample (`model_cost.vision_flops`;
           the text tower and the decoder add a few percent) against the peak of the format it trains in

    python benchmarks/train_throughput.py                    # configs/clipseg-small at 224 px, batch 8 (CPU)
    python benchmarks/train_throughput.py --config_overrides 'vision_config.num_hidden_layers=1,text_config.num_hidden_layers=1'
    python benchmarks/train_throughput.py --config ../shared/clipseg-rd64-refined --image_size 352 \\
        --batch_size 32 --device cuda                        # the full fine-tune on a GPU

Its last lines: `data_ms_per_sample=<x> reference_data_ms_per_sample=<y> data_cost_ratio=<x/y>` and
`samples_per_second=<s> mfu=<m>` (mfu=n/a where the peak is unknown).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.common import SHARED, fresh_train_subset, timed_training  # noqa: E402
from clipseg_drywall.arguments import DataArguments  # noqa: E402
from clipseg_drywall.data import load_train_eval_splits  # noqa: E402
from clipseg_drywall.losses import segmentation_loss  # noqa: E402
from clipseg_drywall.model_cost import vision_flops  # noqa: E402
from clipseg_drywall.training.collator import CLIPSegCollator, resize_images  # noqa: E402
from clipseg_drywall.training.run_training import build_trainer, fit_to_device, parse_training_arguments  # noqa: E402
from clipseg_drywall.training.sampling import DrawDataset, DrawSampler  # noqa: E402

# dense peak TFLOP/s of GPUs by name: bf16 (and tf32, what fp32 matmuls run in with TF32 on)
GPU_PEAKS = {"H200": {"bf16": 989e12, "fp32": 494e12}, "H100": {"bf16": 989e12, "fp32": 494e12},
             "A100": {"bf16": 312e12, "fp32": 156e12}, "L40S": {"bf16": 362e12, "fp32": 183e12}}
STEP_PARTS = ("data wait", "forward", "loss", "backward", "optimizer")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset_path", help="a save_to_disk DatasetDict (default: built from ../shared/data)")
    p.add_argument("--config", default=str(REPO / "configs" / "clipseg-small"), help="the model config (random weights)")
    p.add_argument("--config_overrides", help="as train.py's, e.g. fewer layers to make the model tiny")
    p.add_argument("--tokenizer", default=str(SHARED / "clipseg-rd64-refined"))
    p.add_argument("--image_size", type=int, default=224)
    p.add_argument("--batch_size", type=int, default=8)
    p.add_argument("--rows", type=int, default=256, help="train rows used (the same for every part)")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--device", default="cpu", help="cpu, cuda or mps")
    p.add_argument("--output_dir", default=str(REPO / "runs" / "train-throughput"))
    p.add_argument("--train_flags", nargs=argparse.REMAINDER, default=[],
                   help="train.py flags for the step and Trainer parts, e.g. --optim adamw_torch_fused")
    return p


def training_argv(args, work: Path) -> list[str]:
    """The small recipe's data options and loss, on the model and device asked for: what train.py would run."""
    argv = [str(REPO / "configs" / "small-from-scratch.json"), "--config_name", args.config,
            "--tokenizer_name", args.tokenizer, "--image_size", str(args.image_size),
            "--dataset_path", str(work / "data"), "--output_dir", str(work / "run"), "--max_steps", str(args.warmup + args.steps),
            "--per_device_train_batch_size", str(args.batch_size), "--logging_steps", "1", "--eval_strategy", "no",
            "--save_strategy", "no", "--disable_tqdm", "true", "--warmup_steps", "0"]
    if args.config_overrides:
        argv += ["--config_overrides", args.config_overrides]
    return argv + (["--use_cpu", "true"] if args.device == "cpu" else []) + args.train_flags


# ---- data: the reference path against the package's, CPU time on one core ----

def data_cost(args, trainer) -> tuple[float, float]:
    """(ms per sample of the package's path, of the reference path): the same picks, batches compared. The
    reference reads the rows stored as `datasets` stores images by default (PNG), the package its own way."""
    processor = trainer.processing_class
    rows = load_train_eval_splits(DataArguments(dataset_path=str(Path(args.output_dir) / "data")))[0]
    dataset = DrawDataset(resize_images(rows, processor))
    stored_as_before = DrawDataset(resize_images(rows, processor, decode_fast=False))
    picks = list(DrawSampler(dataset.tasks, seed=0, balance_tasks=True))
    batches = [picks[i:i + args.batch_size] for i in range(0, len(picks) - args.batch_size + 1, args.batch_size)]
    options = {"resample_prompts": True, "augment": True, "negative_prompt_ratio": 0.25}
    fast = CLIPSegCollator(processor, **options)
    reference = CLIPSegCollator(processor, preprocess="processor", **options)
    for keys in batches[:4]:  # what training sees is unchanged
        ours, theirs = fast(dataset.__getitems__(keys)), reference([stored_as_before[key] for key in keys])
        if any(not torch.equal(ours[key], theirs[key]) for key in ours):
            raise RuntimeError("the package's data path gives other batches than the reference path")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # cost per core: CPU time of this process on one thread
    try:
        times = {"package": [], "reference": []}
        for _ in range(2):  # alternated, the best of two: the other core's load shifts both alike
            times["package"].append(_cpu_ms(lambda: [fast(dataset.__getitems__(keys)) for keys in batches]))
            times["reference"].append(_cpu_ms(lambda: [reference([stored_as_before[k] for k in keys])
                                                        for keys in batches]))
    finally:
        torch.set_num_threads(threads)
    samples = len(batches) * args.batch_size
    return min(times["package"]) / samples, min(times["reference"]) / samples


def _cpu_ms(work: Callable[[], object]) -> float:
    start = time.process_time()
    work()
    return (time.process_time() - start) * 1000


# ---- step: its parts between device synchronisations ----

def step_breakdown(args, trainer) -> dict[str, float]:
    """Mean ms of each part of a training step, over `--steps` steps after `--warmup`."""
    model, device = trainer.model.to(trainer.args.device), trainer.args.device
    model.train()
    optimizer = trainer.create_optimizer()
    loader = trainer.get_train_dataloader()
    options = {"dice_weight": trainer.args.dice_weight, "pos_weight": trainer.args.pos_weight}
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=trainer.args.bf16)
    totals = dict.fromkeys(STEP_PARTS, 0.0)
    batches = iter(loader)
    for step in range(args.warmup + args.steps):
        marks = [_synchronized(device)]
        batch = next(batches, None)
        if batch is None:  # an epoch ended: the next one, as the Trainer goes on
            batches = iter(loader)
            batch = next(batches)
        batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
        marks.append(_synchronized(device))
        with autocast:
            logits = model(pixel_values=batch["pixel_values"], input_ids=batch["input_ids"],
                           attention_mask=batch["attention_mask"]).logits
        marks.append(_synchronized(device))
        loss = segmentation_loss(logits.float(), batch["labels"], **options)
        marks.append(_synchronized(device))
        loss.backward()
        marks.append(_synchronized(device))
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        marks.append(_synchronized(device))
        if step >= args.warmup:
            for part, start, end in zip(STEP_PARTS, marks, marks[1:]):
                totals[part] += (end - start) * 1000 / args.steps
    return totals


def _synchronized(device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


# ---- trainer: samples/s and MFU ----

def trainer_throughput(args, trainer) -> tuple[float, float]:
    """(samples/s over the steps after --warmup, share of a step spent waiting for the next batch)."""
    step_seconds, wait_seconds = timed_training(trainer, args.warmup)
    return args.batch_size / step_seconds, wait_seconds / step_seconds


def peak_flops(device: torch.device, bf16: bool) -> tuple[float | None, str]:
    """(peak FLOP/s of the format the model trains in, where it comes from), None where unknown."""
    kind = "bf16" if bf16 else "fp32"
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        peak = next((peaks[kind] for gpu, peaks in GPU_PEAKS.items() if gpu in name), None)
        return peak, f"{name} {kind} dense peak" if peak else f"{name}: peak unknown"
    if device.type == "cpu":
        from benchmarks.inference import cpu_peaks

        peaks, how = cpu_peaks()
        return peaks[kind], how
    return None, f"{device.type}: peak unknown"


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    work = Path(args.output_dir)
    fresh_train_subset(args.dataset_path, args.rows, work)
    fitted_argv, fitted = fit_to_device(training_argv(args, work))
    print(f"{args.rows} train rows, {args.config}{' with ' + args.config_overrides if args.config_overrides else ''} "
          f"at {args.image_size} px, batch {args.batch_size}; {fitted}", flush=True)

    trainer = build_trainer(*parse_training_arguments(fitted_argv))
    package_ms, reference_ms = data_cost(args, trainer)
    print(f"\ndata path, CPU ms per sample on one core: package {package_ms:.2f}, reference {reference_ms:.2f} "
          f"(batches equal)")

    parts = step_breakdown(args, trainer)
    step_ms = sum(parts.values())
    print(f"\nstep on {trainer.args.device} ({args.steps} steps after {args.warmup}): {step_ms:.1f} ms, "
          f"{args.batch_size / step_ms * 1000:.1f} samples/s")
    for part, ms in parts.items():
        print(f"  {part:10} {ms:8.2f} ms {ms / step_ms:6.1%}")

    trainer = build_trainer(*parse_training_arguments(fitted_argv))  # fresh weights and optimizer
    samples_per_second, wait_share = trainer_throughput(args, trainer)
    size = args.image_size
    flops = 3 * vision_flops(trainer.model.config, size)
    peak, source = peak_flops(trainer.args.device, trainer.args.bf16)
    mfu = samples_per_second * flops / peak if peak else None
    print(f"\nTrainer.train(): {samples_per_second:.1f} samples/s, waiting for data {wait_share:.1%} of a step; "
          f"{flops / 1e9:.2f} GFLOP per sample; peak: {source}")
    print(f"data_ms_per_sample={package_ms:.2f} reference_data_ms_per_sample={reference_ms:.2f} "
          f"data_cost_ratio={package_ms / reference_ms:.2f}")
    print(f"samples_per_second={samples_per_second:.1f} mfu={f'{mfu:.4f}' if mfu is not None else 'n/a'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
