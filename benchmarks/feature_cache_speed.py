"""Frozen-encoder training speed (the feature cache against pixels), measured side by side in one run (same config, data and seed).

  pixels/raw      the plain Trainer loop: decode the 640x640 JPEG, processor resize, CLIP + decoder
  pixels/resized  the same loop on images stored pre-resized (`--preresize_images`, the default)
  cached          `--cache_features`: the decoder trained from CLIP features cached on disk

  pixels/resized+1 worker   (--with_worker) the same with one dataloader worker preparing batches

For each: samples/s over the timed steps (the first `--warmup` steps excluded), the share of a
step the training loop spends waiting for its batch (`Trainer.get_batch_samples`, timed), and
the loss of the first `--steps` steps, which must agree between the paths (same examples;
float16 features). Also the cache build time and its size on disk.

    python benchmarks/feature_cache_speed.py                  # the full-size CIDAS config at 352 px
    python benchmarks/feature_cache_speed.py --config configs/clipseg-small --image_size 224 --batch_size 8 --with_worker

Last line: `speedup_cached_vs_plain=<x> speedup_cached_vs_resized=<y> loss_max_rel_diff=<z>`.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.common import SHARED, fresh_train_subset, timed_training  # noqa: E402
from clipseg_drywall.arguments import CLIPSegTrainingArguments, DataArguments, ModelArguments  # noqa: E402
from clipseg_drywall.training.feature_cache import FeatureCache, build_feature_cache  # noqa: E402
from clipseg_drywall.training.run_training import build_trainer  # noqa: E402


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset_path", help="a save_to_disk DatasetDict (default: built from ../shared/data)")
    p.add_argument("--config", default=str(SHARED / "clipseg-rd64-refined"),
                   help="default: the full-size CIDAS config (random weights), the model users fine-tune")
    p.add_argument("--tokenizer", default=str(SHARED / "clipseg-rd64-refined"))
    p.add_argument("--image_size", type=int, default=None, help="default: the processor's (352 for CIDAS)")
    p.add_argument("--rows", type=int, default=200, help="train rows used (the same for every path)")
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--batch_size", type=int, default=4)
    p.add_argument("--with_worker", action="store_true", help="also time the resized path with 1 dataloader worker")
    p.add_argument("--output_dir", default=str(REPO / "runs" / "train-throughput"))
    return p


def _arguments(args, work: Path, name: str, preresize: bool, cache: bool, workers: int = 0):
    return (
        ModelArguments(config_name=args.config, tokenizer_name=args.tokenizer, image_size=args.image_size),
        DataArguments(dataset_path=str(work / "data"), preresize_images=preresize, cache_features=cache,
                      feature_cache_dir=str(work / "feature_cache"), resample_prompts=True, negative_prompt_ratio=0.25),
        CLIPSegTrainingArguments(
            output_dir=str(work / name), freeze_encoder=True, max_steps=args.steps,
            per_device_train_batch_size=args.batch_size, logging_steps=1, eval_strategy="no", save_strategy="no",
            report_to=[], dataloader_pin_memory=False, disable_tqdm=True, seed=0, dataloader_num_workers=workers,
        ),
    )


def run(args, work: Path, name: str, preresize: bool, cache: bool, workers: int = 0) -> dict:
    trainer = build_trainer(*_arguments(args, work, name, preresize, cache, workers))
    step_seconds, wait_seconds = timed_training(trainer, args.warmup)
    losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    return {"samples_per_second": args.batch_size / step_seconds, "step_seconds": step_seconds,
            "data_share": wait_seconds / step_seconds, "losses": losses}


def build_cache(args, work: Path) -> tuple[float, FeatureCache]:
    """Build the cache the cached run will read (same seed, so the same random weights): timed alone."""
    trainer = build_trainer(*_arguments(args, work, "cache-build", preresize=True, cache=False))
    start = time.perf_counter()
    cache = build_feature_cache(trainer.model, trainer.processing_class, trainer.train_dataset.rows,
                                work / "feature_cache")
    return time.perf_counter() - start, cache


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    work = Path(args.output_dir)
    rows = fresh_train_subset(args.dataset_path, args.rows, work)
    print(f"{len(rows)} train rows, config {args.config} at {args.image_size or 'processor'} px, batch {args.batch_size}, "
          f"{args.steps} steps ({args.warmup} untimed), frozen encoder", flush=True)

    results = {"pixels/raw": run(args, work, "raw", preresize=False, cache=False),
               "pixels/resized": run(args, work, "resized", preresize=True, cache=False)}
    if args.with_worker:
        results["pixels/resized+1 worker"] = run(args, work, "worker", preresize=True, cache=False, workers=1)
    build_seconds, cache = build_cache(args, work)
    results["cached"] = run(args, work, "cached", preresize=True, cache=True)
    if len(list((work / "feature_cache").iterdir())) != 1:
        raise RuntimeError("the cached run did not find the cache built beforehand (its key differs)")
    cache_mb = cache.size_on_disk() / 2**20

    print(f"\n{'path':24} {'samples/s':>10} {'s/step':>8} {'data wait':>10}")
    for name, r in results.items():
        print(f"{name:24} {r['samples_per_second']:10.1f} {r['step_seconds']:8.3f} {r['data_share']:9.1%}")
    reference = results["pixels/resized"]["losses"]
    diffs = {name: max(abs(a - b) / abs(b) for a, b in zip(r["losses"], reference)) for name, r in results.items()}
    for name, diff in diffs.items():
        print(f"loss curve vs pixels/resized over {len(reference)} steps, {name}: max relative difference {diff:.2e}")
    print(f"feature cache: {len(rows)} rows built in {build_seconds:.1f} s, {cache_mb:.1f} MiB on disk "
          f"({cache_mb / len(rows):.2f} MiB per image)")
    plain, resized, cached = (results[k]["samples_per_second"] for k in ("pixels/raw", "pixels/resized", "cached"))
    print(f"speedup_cached_vs_plain={cached / plain:.2f} speedup_cached_vs_resized={cached / resized:.2f} "
          f"loss_max_rel_diff={diffs['cached']:.2e}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
