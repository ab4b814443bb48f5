"""Training memory and speed of the ways to fine-tune CIDAS, each variant in its own fresh process.

Full-size CIDAS config (random weights), batch 8 at the processor's 352 px, on the CPU, the same rows,
seed and data options for every variant:

  decoder/cached     decoder only, from CLIP features cached on disk (`cidas-decoder-cached`; the cache is
                     built beforehand, in a process of its own)
  decoder/live       decoder only, the frozen encoder run every step (--freeze_encoder)
  full               the whole model, encoder at its own rate (`cidas-finetune`)
  full+ckpt          the same with --gradient_checkpointing
  lora8              LoRA rank 8 on the CLIP towers + the decoder (`cidas-lora` without checkpointing)
  lora8+ckpt         the same with --gradient_checkpointing (`cidas-lora`)
  small              the small recipe (configs/clipseg-small at 224 px, whole model): for the loss share

For each: the child's peak RSS (`os.wait4`, measured from outside), seconds per step (median of
`--steps` steps after `--warmup`), trainable parameters, and where the memory goes: weights, gradients
and AdamW state (from the trainable count), the tensors autograd keeps for backward in one training
forward (saved-tensor hooks, parameters excluded), and the share of one step the loss at native
resolution takes (upsample to each mask's size, BCE and Dice, forward and backward, timed alone on a
real batch's masks).

    python benchmarks/train_memory.py            # all variants, one after the other (~15 min on 2 cores)
    python benchmarks/train_memory.py --variants lora8 full --steps 5

Last line: `lora_memory_vs_full=<x> checkpointing_memory_vs_full=<y> lora_ckpt_memory_vs_full=<z> lora_step_vs_full=<w>`.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.common import SHARED, StepClock, fresh_train_subset  # noqa: E402

CIDAS = SHARED / "clipseg-rd64-refined"
VARIANTS = {  # name: (config, image size, training arguments, cached features)
    "decoder/cached": (CIDAS, None, {"freeze_encoder": True}, True),
    "decoder/live": (CIDAS, None, {"freeze_encoder": True}, False),
    "full": (CIDAS, None, {"encoder_learning_rate": 1e-5}, False),
    "full+ckpt": (CIDAS, None, {"encoder_learning_rate": 1e-5, "gradient_checkpointing": True}, False),
    "lora8": (CIDAS, None, {"encoder_learning_rate": 2e-4, "lora_rank": 8, "lora_alpha": 16.0}, False),
    "lora8+ckpt": (CIDAS, None, {"encoder_learning_rate": 2e-4, "lora_rank": 8, "lora_alpha": 16.0,
                                 "gradient_checkpointing": True}, False),
    "small": (REPO / "configs" / "clipseg-small", 224, {"encoder_learning_rate": 3e-4}, False),
}


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    p.add_argument("--dataset_path", help="a save_to_disk DatasetDict (default: built from ../shared/data)")
    p.add_argument("--rows", type=int, default=64)
    p.add_argument("--batch_size", type=int, default=8)
    p.add_argument("--steps", type=int, default=5, help="timed steps (the median is reported)")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--output_dir", default=str(REPO / "runs" / "train-memory"))
    p.add_argument("--child", help=argparse.SUPPRESS)  # run one variant in this process and print its JSON
    p.add_argument("--build_cache", action="store_true", help=argparse.SUPPRESS)
    return p


def _trainer(args, work: Path, name: str, cache_only: bool = False):
    from clipseg_drywall.arguments import CLIPSegTrainingArguments, DataArguments, ModelArguments
    from clipseg_drywall.training.run_training import build_trainer

    config, size, training, cached = VARIANTS[name]
    return build_trainer(
        ModelArguments(config_name=str(config), tokenizer_name=str(CIDAS), image_size=size),
        DataArguments(dataset_path=str(work / "data"), cache_features=cached and not cache_only,
                      feature_cache_dir=str(work / "feature_cache"), resample_prompts=True, negative_prompt_ratio=0.25),
        CLIPSegTrainingArguments(
            output_dir=str(work / name.replace("/", "-")), max_steps=args.warmup + args.steps + 1,
            per_device_train_batch_size=args.batch_size, logging_steps=1, eval_strategy="no", save_strategy="no",
            report_to=[], dataloader_pin_memory=False, disable_tqdm=True, seed=0, **training),
        callbacks=[StepClock()])


def saved_for_backward_bytes(trainer) -> int:
    """Bytes of the tensors autograd keeps for backward in one training forward (parameters excluded)."""
    import torch

    parameters = {p.untyped_storage().data_ptr() for p in trainer.model.parameters()}
    storages: dict[int, int] = {}

    def pack(tensor):
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in parameters:
            storages[storage.data_ptr()] = storage.nbytes()
        return tensor

    inputs = trainer._prepare_inputs(next(iter(trainer.get_train_dataloader())))
    trainer.model.train()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        loss = trainer.compute_loss(trainer.model, inputs)
    del loss
    return sum(storages.values())


def loss_seconds(trainer, repeats: int = 5) -> float:
    """Forward + backward of the native-resolution loss alone, on a real batch's masks (median)."""
    import torch

    from clipseg_drywall.losses import segmentation_loss

    inputs = next(iter(trainer.get_train_dataloader()))
    size = trainer.processing_class.image_processor.size["height"]
    logits = torch.randn(len(inputs["labels"]), size, size, requires_grad=True)
    times = []
    for _ in range(repeats + 1):
        start = time.perf_counter()
        segmentation_loss(logits, inputs["labels"], None, dice_weight=1.0, pos_weight=3.0).backward()
        times.append(time.perf_counter() - start)
    return statistics.median(times[1:])


def child(args, work: Path) -> dict:
    from clipseg_drywall.training.adapters import parameter_counts

    if args.build_cache:
        from clipseg_drywall.training.feature_cache import build_feature_cache

        trainer = _trainer(args, work, args.child, cache_only=True)
        build_feature_cache(trainer.model, trainer.processing_class, trainer.train_dataset.rows, work / "feature_cache")
        return {}
    trainer = _trainer(args, work, args.child)
    trainable, total = parameter_counts(trainer.model)
    clock = next(c for c in trainer.callback_handler.callbacks if isinstance(c, StepClock))
    trainer.train()
    steps = [b - a for a, b in zip(clock.times, clock.times[1:])][args.warmup:]
    labels = next(iter(trainer.get_train_dataloader()))["labels"]
    return {"step_seconds": statistics.median(steps), "steps": steps, "trainable": trainable, "total": total,
            "saved_for_backward_mb": saved_for_backward_bytes(trainer) / 2**20,
            "loss_seconds": loss_seconds(trainer), "mask_size": list(labels.shape[1:])}


def run_child(args, work: Path, name: str, build_cache: bool = False) -> dict:
    """One variant in a fresh process: its JSON line and its peak RSS (MiB) as the kernel counted it."""
    command = [sys.executable, __file__, "--child", name, "--output_dir", str(work), "--steps", str(args.steps),
               "--warmup", str(args.warmup), "--batch_size", str(args.batch_size)] + (["--build_cache"] if build_cache else [])
    log = open(work / f"{name.replace('/', '-')}{'-cache' if build_cache else ''}.log", "w")
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=log, text=True, cwd=REPO)
    out = process.stdout.read()
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        raise RuntimeError(f"{name} failed ({process.returncode}); see {log.name}")
    result = json.loads(out.strip().splitlines()[-1])
    result["peak_rss_mb"] = usage.ru_maxrss / 1024  # kilobytes on Linux
    return result


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    work = Path(args.output_dir)
    if args.child:
        print(json.dumps(child(args, work)), flush=True)
        return 0
    rows = fresh_train_subset(args.dataset_path, args.rows, work)
    print(f"{len(rows)} rows, batch {args.batch_size}, {args.warmup} warm-up + {args.steps} timed steps, "
          f"torch threads {os.cpu_count()} cores; {time.strftime('%Y-%m-%d')}", flush=True)
    results = {}
    for name in args.variants:
        if VARIANTS[name][3]:
            run_child(args, work, name, build_cache=True)
        results[name] = run_child(args, work, name)
        r = results[name]
        print(f"{name}: {r['peak_rss_mb']:.0f} MiB, {r['step_seconds']:.2f} s/step, {r['trainable']:,} trainable", flush=True)
    print(f"\n{'variant':16} {'peak RSS MiB':>12} {'s/step':>7} {'samples/s':>9} {'trainable':>12} {'weights+grad+Adam MiB':>21} "
          f"{'saved for bw MiB':>16} {'loss share':>10}")
    for name, r in results.items():
        states = (r["total"] * 4 + r["trainable"] * 12) / 2**20
        saved = f"{r['saved_for_backward_mb']:.0f}"
        print(f"{name:16} {r['peak_rss_mb']:12.0f} {r['step_seconds']:7.2f} {args.batch_size / r['step_seconds']:9.2f} "
              f"{r['trainable']:12,} {states:21.0f} {saved:>16} {r['loss_seconds'] / r['step_seconds']:9.1%}")
    for name, r in results.items():
        print(f"{name}: loss at native resolution {r['loss_seconds'] * 1000:.0f} ms per step (masks {r['mask_size']}), "
              f"steps {', '.join(f'{s:.2f}' for s in r['steps'])} s")
    (work / "results.json").write_text(json.dumps(results, indent=2))
    if {"full", "full+ckpt", "lora8", "lora8+ckpt"} <= results.keys():
        full = results["full"]
        print(f"lora_memory_vs_full={results['lora8']['peak_rss_mb'] / full['peak_rss_mb']:.2f} "
              f"checkpointing_memory_vs_full={results['full+ckpt']['peak_rss_mb'] / full['peak_rss_mb']:.2f} "
              f"lora_ckpt_memory_vs_full={results['lora8+ckpt']['peak_rss_mb'] / full['peak_rss_mb']:.2f} "
              f"lora_step_vs_full={results['lora8']['step_seconds'] / full['step_seconds']:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
