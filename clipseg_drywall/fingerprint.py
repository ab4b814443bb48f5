"""The model fingerprint: what a mask was made by, recorded beside it so a resumed run redoes
masks of another model instead of keeping them."""

from __future__ import annotations

import hashlib
from pathlib import Path

MODEL_FILE_SUFFIXES = (".safetensors", ".bin", ".onnx", ".npz", ".json")  # what a model folder's outputs depend on


def model_fingerprint(model: str) -> str:
    """SHA-256 of a local model folder's weights and configs (a checkpoint or an ONNX export); a Hub id
    stands for itself."""
    folder = Path(model).expanduser()
    if not folder.is_dir():
        return f"hub:{model}"
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.iterdir() if p.is_file() and p.suffix in MODEL_FILE_SUFFIXES):
        digest.update(path.name.encode())
        with open(path, "rb") as handle:
            while block := handle.read(1 << 22):
                digest.update(block)
    return digest.hexdigest()
