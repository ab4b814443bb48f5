"""Packaging of clipseg-drywall. Tool settings (pytest, ruff) and the build system are in pyproject.toml."""

import re
from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).parent
VERSION = re.search(r'^__version__ = "([^"]+)"', (HERE / "clipseg_drywall" / "__init__.py").read_text(), re.M).group(1)


DATA = ["datasets>=4.0", "lxml"]
# peft: the LoRA adapters (--lora_rank), tested with peft 0.21.2 (transformers 5.24, torch 2.13)
TRAIN = ["accelerate>=1.0", "datasets>=4.0", "matplotlib", "peft>=0.21"]
EVAL = ["datasets>=4.0", "matplotlib"]
# OnnxSegmenter at run time (no torch needed: see README "Deploy"); the exporter also needs onnx
ONNX = ["onnxruntime>=1.13", "tokenizers>=0.15", "onnx>=1.13"]
DEMO = ["gradio>=6.0"]  # the Gradio app (python -m clipseg_drywall.app, space/)
REPORT = ["scikit-image>=0.19"]  # the inspection report's measurements (skeleton, distance transform, labels)
ALL = sorted(set(DATA + TRAIN + EVAL))

setup(
    name="clipseg-drywall",
    version=VERSION,
    description="Text-prompted drywall QA segmentation (cracks, taping areas) by fine-tuning CLIPSeg",
    long_description=(HERE / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.10",
    packages=find_packages(include=["clipseg_drywall", "clipseg_drywall.*", "data_builders", "data_builders.*"]),
    # the model card template is package data: found by importlib.resources alike from a checkout and a wheel
    # (the top-level model_card.md is a link to it, where people look for it)
    package_data={"clipseg_drywall": ["templates/model_card.md"], "clipseg_drywall.report": ["templates/*"]},
    # inference (Segmenter, predict, publish) needs only these
    install_requires=[
        "torch>=2.1",
        "transformers>=5.0,<6",  # CLIPSegTrainer relies on Trainer internals of the 5.x line
        "safetensors",
        "pillow>=10",
        "huggingface_hub>=1.0",
        "numpy",
        "tqdm",
        "zlib-ng",  # mask PNGs deflated 3-8x faster (clipseg_drywall/mask_png.py falls back to zlib without it)
    ],
    extras_require={
        "data": DATA,
        "train": TRAIN,
        "eval": EVAL,
        "all": ALL,
        "onnx": ONNX,
        "demo": DEMO,
        "report": REPORT,
        # selenium drives Debian's chromium in tests/test_app.py (.ci/run installs it)
        "test": ALL + ["evaluate>=0.4", "pytest>=8", "ruff"] + ONNX + DEMO + REPORT + ["selenium>=4.10"],
    },
    entry_points={
        "console_scripts": [
            "clipseg-drywall-train = clipseg_drywall.cli:train",
            "clipseg-drywall-evaluate = clipseg_drywall.cli:evaluate",
            "clipseg-drywall-predict = clipseg_drywall.predict:main",
            "clipseg-drywall-publish = clipseg_drywall.publish:main",
            "clipseg-drywall-export = clipseg_drywall.segmenters.export:main",
            "clipseg-drywall-app = clipseg_drywall.app:main",
            "clipseg-drywall-report = clipseg_drywall.cli:report",
            "clipseg-drywall-dataset = data_builders.__main__:main",
        ]
    },
)
