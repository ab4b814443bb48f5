"""predict over one process and over two, side by side: the same photos, the same model, on the CPU.

    python benchmarks/predict_scaling.py [--photos 64] [--config ../shared/clipseg-rd64-refined]

Rows: `python -m clipseg_drywall.predict` as 1 process x 2 threads, then `accelerate launch --multi_gpu
--num_processes 2 -m clipseg_drywall.predict` as 2 processes x 1 thread (gloo, no GPU), each a fresh
command timed from start to exit (model load included), on the full-size CIDAS config with random
weights (speed does not depend on the values), 2 prompts per photo, photos from ../shared/data listed
with --input_list. It checks that both wrote the same bytes, and prints the ratio line last.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.common import SHARED  # noqa: E402

PROMPTS = ["--prompt", "segment crack", "--prompt", "segment taping area"]
LAUNCH_TWO = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
              "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]


def cpu_name() -> str:
    """The CPU model and its widest vector extension, as lscpu shows them."""
    try:
        info = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return platform.processor() or "unknown CPU"
    model = next((line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("Model name")), "?")
    flags = next((line for line in info.splitlines() if line.startswith("Flags")), "")
    widest = "AVX-512" if "avx512f" in flags else "AVX2" if "avx2" in flags else "no AVX2"
    return f"{model} ({widest}, {os.cpu_count()} cores)"


def save_model(config: Path, folder: Path) -> None:
    from transformers import CLIPSegConfig, CLIPSegProcessor

    from clipseg_drywall.modeling import model_from_config

    model_from_config(CLIPSegConfig.from_pretrained(config)).save_pretrained(folder)
    CLIPSegProcessor.from_pretrained(config).save_pretrained(folder)


def timed(command: list[str], threads: int) -> float:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    started = time.perf_counter()
    run = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True)
    if run.returncode != 0:
        raise SystemExit(f"{' '.join(command[:6])} ... failed:\n{run.stderr[-3000:]}")
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--photos", type=int, default=64)
    parser.add_argument("--config", type=Path, default=SHARED / "clipseg-rd64-refined")
    parser.add_argument("--batch_size", type=int, default=8)
    args = parser.parse_args()
    source = SHARED / "data" / "cracks" / "valid" / "images"
    if not source.is_dir() or not args.config.is_dir():
        raise SystemExit(f"needs {source} and {args.config} (../shared)")
    with tempfile.TemporaryDirectory(prefix="predict-scaling-") as scratch:
        root = Path(scratch)
        save_model(args.config, root / "model")
        photos = sorted(source.glob("*.jpg"))[: args.photos]
        (root / "photos.txt").write_text("".join(f"{p}\n" for p in photos))
        predict = ["-m", "clipseg_drywall.predict", "--input_list", str(root / "photos.txt"), "--model",
                   str(root / "model"), *PROMPTS, "--batch_size", str(args.batch_size)]
        rows = {"1 process x 2 threads": timed([sys.executable, *predict, "--output", str(root / "one")], 2),
                "2 processes x 1 thread": timed([*LAUNCH_TWO, *predict, "--output", str(root / "two")], 1)}
        same = all((root / "one" / p.name).read_bytes() == p.read_bytes() for p in (root / "two").iterdir()
                   if p.is_file()) and len(list((root / "one").iterdir())) == len(list((root / "two").iterdir()))
        shutil.rmtree(root / "one")
    print(f"{cpu_name()}; {len(photos)} photos of 640x640, 2 prompts, batch {args.batch_size}, full-size CIDAS config "
          f"(random weights); wall time from start to exit, model load included; outputs identical: {same}")
    print("| run | seconds | photos/s |\n|---|---:|---:|")
    for name, seconds in rows.items():
        print(f"| {name} | {seconds:.1f} | {len(photos) / seconds:.2f} |")
    one, two = rows.values()
    print(f"two_processes_vs_one={one / two:.2f} seconds_per_photo_one={one / len(photos):.3f} "
          f"seconds_per_photo_two={two / len(photos):.3f}")


if __name__ == "__main__":
    main()
