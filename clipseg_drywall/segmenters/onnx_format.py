"""The ONNX export folder's format: written by `segmenters.export`, read by `segmenters.onnx`.

File names, opset, graph metadata keys, the config fingerprint and the errors a bad folder raises.
Torch-free and onnxruntime-free: only the standard library.
"""

from __future__ import annotations

import hashlib
import json
import re

FORMAT = "clipseg-drywall-onnx"
FORMAT_VERSION = 1
# Opset 17 has LayerNormalization as one op (fewer nodes, fused kernels in onnxruntime);
# onnxruntime runs opset 17 from release 1.13 on.
OPSET = 17
MIN_ONNXRUNTIME = "1.13.0"
CONFIG_FILE = "config.json"
TOKENIZER_FILE = "tokenizer.json"
EMBEDDINGS_FILE = "prompt_embeddings.npz"
GRAPH_FILES = {"image_encoder": "image_encoder.onnx", "text_encoder": "text_encoder.onnx", "decoder": "decoder.onnx"}
# what each graph carries in its metadata, so graphs of another export or config are caught
FINGERPRINT_KEY = "clipseg_drywall.config_fingerprint"
EXPORT_ID_KEY = "clipseg_drywall.export_id"
PIXEL_INPUT = "pixel_values"
CONDITIONAL_INPUT = "conditional_embeddings"
# keys of a model config that change no graph: provenance and the calibrated threshold
_UNFINGERPRINTED = ("segmentation_threshold", "transformers_version")


class OnnxExportError(ValueError):
    """An export folder that cannot be used: a corrupt or mismatched file (the message names it)."""


class OnnxRuntimeTooOldError(OnnxExportError):
    """The installed onnxruntime cannot run the export's opset."""


def activation_name(index: int) -> str:
    return f"activation_{index}"


def config_fingerprint(model_config: dict) -> str:
    """SHA-256 of the model config (canonical JSON) without the keys that change no graph."""
    def strip(value):
        if isinstance(value, dict):
            return {k: strip(v) for k, v in value.items() if k not in _UNFINGERPRINTED and not k.startswith("_")}
        return value

    as_stored = json.loads(json.dumps(model_config))  # as config.json holds it: keys are strings
    text = json.dumps(strip(as_stored), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def version_tuple(version: str) -> tuple[int, ...]:
    """(1, 20, 1) from '1.20.1' or '1.20.1+cpu' (no `packaging` in the slim install)."""
    return tuple(int(part) for part in re.findall(r"\d+", version.split("+")[0])[:3])
