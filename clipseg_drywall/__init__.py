"""clipseg-drywall: text-prompted drywall QA segmentation with CLIPSeg.

The public API, imported on first use so that `from clipseg_drywall import OnnxSegmenter` needs no torch:

    from clipseg_drywall import load_segmenter
    segmenter = load_segmenter("org/clipseg-drywall")            # or backend="onnx" on an export folder
    masks = segmenter.segment(["photo.jpg"], ["segment crack"])  # [{prompt: uint8 {0,255} mask}]
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

__version__ = "0.1.0"
__all__ = ["OnnxSegmenter", "Segmenter", "load_segmenter"]

# name -> the module that holds it; imported when the name is first used
_PUBLIC = {"Segmenter": ".segmenters.pytorch", "OnnxSegmenter": ".segmenters.onnx", "load_segmenter": ".segmenters"}

if TYPE_CHECKING:
    from .segmenters import load_segmenter
    from .segmenters.onnx import OnnxSegmenter
    from .segmenters.pytorch import Segmenter


def __getattr__(name: str):
    if name not in _PUBLIC:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(_PUBLIC[name], __name__), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_PUBLIC])
