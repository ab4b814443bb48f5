"""How closely OnnxSegmenter follows the PyTorch Segmenter on real photos, float32 and int8.

Exports a checkpoint twice into a temporary folder (float32, `--quantize int8`), segments the same
validation photos of both tasks with all three under 2 prompts at the checkpoint's threshold, and
prints the share of mask pixels on which ORT float32 agrees with PyTorch, the largest probability
difference, and for int8 the agreement and the IoU of its foreground with PyTorch's.

    python benchmarks/onnx_parity.py --model runs/learn-from-scratch/seed0 [--photos 20]

Last line: `fp32_pixel_agreement=<x> int8_pixel_agreement=<y> int8_foreground_iou=<z>`.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.common import SHARED  # noqa: E402
from clipseg_drywall.segmenters.export import export  # noqa: E402
from clipseg_drywall.segmenters.onnx import OnnxSegmenter  # noqa: E402
from clipseg_drywall.segmenters.pytorch import Segmenter  # noqa: E402

PROMPTS = ["segment crack", "segment taping area"]


def photos(per_task: int) -> list[Path]:
    """Every tenth validation photo of each task, `per_task` of each."""
    folders = [SHARED / "data" / "cracks" / "valid" / "images", SHARED / "data" / "drywall-join-detect" / "valid"]
    return [p for folder in folders for p in sorted(folder.glob("*.jpg"))[::10][:per_task]]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="a checkpoint folder")
    parser.add_argument("--photos", type=int, default=20, help="photos per task")
    args = parser.parse_args()
    paths = photos(args.photos)
    reference = Segmenter.from_pretrained(args.model, batch_size=4)
    with tempfile.TemporaryDirectory(prefix="clipseg-parity-") as scratch:
        fp32 = OnnxSegmenter.from_pretrained(export(args.model, Path(scratch) / "fp32"), batch_size=4)
        int8 = OnnxSegmenter.from_pretrained(export(args.model, Path(scratch) / "int8", quantize="int8"), batch_size=4)
        results = zip(reference.iter_segment(paths, PROMPTS, return_probabilities=True),
                      fp32.iter_segment(paths, PROMPTS, return_probabilities=True), int8.iter_segment(paths, PROMPTS))
        counts = np.zeros(5)  # pixels, fp32 agreeing, int8 agreeing, int8 & torch foreground, int8 | torch foreground
        largest = 0.0
        for expected, exported, quantized in results:
            for prompt in PROMPTS:
                truth, mask, mask8 = expected.masks[prompt] > 0, exported.masks[prompt] > 0, quantized.masks[prompt] > 0
                counts += [truth.size, (truth == mask).sum(), (truth == mask8).sum(), (truth & mask8).sum(),
                           (truth | mask8).sum()]
                largest = max(largest, float(np.abs(expected.probabilities[prompt] - exported.probabilities[prompt]).max()))
    pixels, agree, agree8, intersection, union = counts
    print(f"{len(paths)} photos x {len(PROMPTS)} prompts, threshold {reference.threshold}: ORT fp32 masks agree with "
          f"PyTorch on {agree / pixels:.5%} of pixels (largest probability difference {largest:.1e}); ORT int8 on "
          f"{agree8 / pixels:.4%}, foreground IoU with PyTorch {intersection / max(union, 1):.4f}")
    print(f"fp32_pixel_agreement={agree / pixels:.6f} int8_pixel_agreement={agree8 / pixels:.6f} "
          f"int8_foreground_iou={intersection / max(union, 1):.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
