"""Which segmenter a command runs, chosen by name, imported only when chosen.

`torch` is the `segmenters.pytorch.Segmenter` (PyTorch + transformers); `onnx` the onnxruntime one of
`onnx_inference` (exported with `python -m clipseg_drywall.segmenters.export`), which needs neither. This
module imports neither (both are imported by name when chosen), so `predict --backend onnx` runs on
the slim install; what the two share is the contract in `segmenter`.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterable

from .base import BatchedSegmenter

BACKENDS = ("torch", "onnx")


def load_segmenter(
    model: str,
    backend: str = "torch",
    threshold: float | None = None,
    batch_size: int = 8,
    device: str | None = None,
    speed_options: Iterable[str] = (),
    num_threads: int | None = None,
) -> BatchedSegmenter:
    """A `Segmenter` (torch) or `OnnxSegmenter` (onnx) for `model`, a checkpoint or export folder or Hub id;
    `num_threads`: the CPU threads it may use (default: the library's own choice)."""
    if backend == "torch":
        module = importlib.import_module(".pytorch", __package__)
        return module.Segmenter.from_pretrained(model, threshold=threshold, batch_size=batch_size, device=device,
                                                speed_options=speed_options, num_threads=num_threads)
    if backend != "onnx":
        raise ValueError(f"unknown backend {backend!r}; choose from {BACKENDS}")
    if device not in (None, "cpu") or list(speed_options):
        raise ValueError("--device and --speed apply to the torch backend; the onnx backend runs on onnxruntime's CPU "
                         "provider (export with --quantize int8 for its speed-up)")
    module = importlib.import_module(".onnx", __package__)
    return module.OnnxSegmenter.from_pretrained(model, threshold=threshold, batch_size=batch_size,
                                                num_threads=num_threads)
