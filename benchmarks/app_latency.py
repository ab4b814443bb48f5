"""How long the demo takes to answer one 640x640 photo with two prompts, on this machine's CPU.

For each model config (random weights: speed does not depend on their values) the app is served
on 127.0.0.1 and called through its API with `gradio_client` (upload, segmentation, overlay and
zip, download of the results: what a user waits for); the handler alone (`segment_photos`,
no HTTP, in a worker thread as gradio runs it) is timed too. One warm-up call, then the median and the fastest of --repeats calls.

    python benchmarks/app_latency.py [--repeats 5] [--threads N]

On a machine shared with other work, `--threads 1` gives the stable figures: with more torch threads
than free cores, OpenMP threads wait for each other and single calls vary up to 20x.

Configs: `small` = configs/clipseg-small (what the README's trained models use), `full` = the
CIDAS/clipseg-rd64-refined config in ../shared/clipseg-rd64-refined (the released model's size).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch
from transformers import CLIPSegConfig, CLIPSegProcessor

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.app_screenshot import free_port  # noqa: E402
from benchmarks.common import SHARED  # noqa: E402
from clipseg_drywall.app import DEFAULT_PROMPTS, build_demo, example_photos, launch, segment_photos  # noqa: E402
from clipseg_drywall.modeling import model_from_config  # noqa: E402
from clipseg_drywall.segmenters.pytorch import Segmenter  # noqa: E402

PROCESSOR = SHARED / "clipseg-rd64-refined"
CONFIGS = {"small": REPO / "configs" / "clipseg-small", "full": PROCESSOR}


def random_segmenter(config_dir: Path) -> Segmenter:
    torch.manual_seed(0)
    model = model_from_config(CLIPSegConfig.from_pretrained(config_dir))
    return Segmenter(model, CLIPSegProcessor.from_pretrained(PROCESSOR))


def seconds(call, repeats: int) -> tuple[float, float]:
    """(median, fastest) of `repeats` calls after a warm-up; on a shared machine the fastest is the
    closest to the uncontended time, the median what a user would see there."""
    call()  # warm-up: first-call allocations, prompt embeddings cached
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        call()
        times.append(time.perf_counter() - started)
    return statistics.median(times), min(times)


def measure(name: str, photo: Path, repeats: int) -> dict[str, float | tuple[float, float]]:
    from gradio_client import Client, handle_file

    segmenter = random_segmenter(CONFIGS[name])
    with tempfile.TemporaryDirectory() as folder, ThreadPoolExecutor(1) as worker:
        # in a worker thread, as gradio calls it
        handler = seconds(lambda: worker.submit(segment_photos, segmenter, [photo], DEFAULT_PROMPTS, "", None,
                                                work_dir=tempfile.mkdtemp(dir=folder)).result(), repeats)
        demo = build_demo(segmenter)
        port = free_port()
        launch(demo, "127.0.0.1", port, block=False)
        try:
            client = Client(f"http://127.0.0.1:{port}/", verbose=False, download_files=folder)
            served = seconds(lambda: client.predict([handle_file(str(photo))], DEFAULT_PROMPTS, "",
                                                           segmenter.threshold, api_name="/segment"), repeats)
        finally:
            demo.close()
    parameters = sum(p.numel() for p in segmenter.model.parameters()) / 1e6
    return {"parameters_m": parameters, "handler_s": handler, "served_s": served}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    photos = [p for p in example_photos() if p.parent.name == "images"]  # the crack export's 640x640 photos
    if not photos or not PROCESSOR.is_dir():
        raise SystemExit(f"needs the real photos and processor files in {SHARED}")
    print(f"photo {photos[0].name}, prompts {DEFAULT_PROMPTS}, torch threads {torch.get_num_threads()}, "
          f"median (fastest) of {args.repeats} after one warm-up")
    for name in CONFIGS:
        result = measure(name, photos[0], args.repeats)
        (handler, handler_min), (served, served_min) = result["handler_s"], result["served_s"]
        print(f"{name:5s} {result['parameters_m']:6.1f} M parameters: handler {handler:.3f} s (fastest {handler_min:.3f}), "
              f"served (gradio_client round trip) {served:.3f} s (fastest {served_min:.3f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
