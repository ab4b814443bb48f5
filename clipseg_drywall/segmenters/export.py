"""`python -m clipseg_drywall.segmenters.export --model CHECKPOINT --output FOLDER [--quantize int8]`

Writes an export folder that `segmenters.onnx.OnnxSegmenter` runs without torch or transformers:

  image_encoder.onnx   pixel_values (B, 3, S, S) -> activation_0..k, the `extract_layers` hidden states
  text_encoder.onnx    input_ids, attention_mask (B, tokens) -> conditional embedding (B, projection_dim)
  decoder.onnx         activation_0..k + conditional_embeddings, one row per (image, prompt) pair -> logits
  config.json          segmentation_threshold, preprocessing constants, opset, image size, extract_layers,
                       the model config and its fingerprint (every graph carries it in its metadata)
  tokenizer.json       the fast tokenizer
  prompt_embeddings.npz  the 16 vocabulary prompts' embeddings, so they never need the text encoder

Three graphs instead of one keep the one-vision-pass design: the image encoder runs once per
batch of photos whatever the number of prompts. S is the processor's square size (fixed, so the
position-embedding interpolation is folded away); the batch axes are dynamic. The graphs come from
torch's TorchScript-based exporter (`dynamo=False`): it needs no onnxscript and traces these three
modules in seconds. `--quantize int8` quantises the image encoder and decoder dynamically (see
`quantize_int8`); the text encoder stays float32, since it runs once per new prompt.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import shutil
import sys
import tempfile
import uuid
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn
from transformers import CLIPSegForImageSegmentation, CLIPSegProcessor

from .. import __version__
from ..atomic_files import check_writable_folder
from ..cli import ArgumentParser, check_model_source, require_extra, user_errors
from ..modeling import decode, text_embeddings, vision_activations
from ..preprocessing import Preprocessing
from ..prompts import all_prompts
from . import onnx_format
from .base import threshold_of

QUANTIZATIONS = ("int8",)


class ImageEncoder(nn.Module):
    """pixel_values -> the hidden states of `extract_layers` (the vision tower stops at the deepest)."""

    def __init__(self, model: CLIPSegForImageSegmentation):
        super().__init__()
        self.model = model

    def forward(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(vision_activations(self.model, pixel_values))


class TextEncoder(nn.Module):
    def __init__(self, model: CLIPSegForImageSegmentation):
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return text_embeddings(self.model, input_ids, attention_mask)


class Decoder(nn.Module):
    def __init__(self, model: CLIPSegForImageSegmentation):
        super().__init__()
        self.model = model

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        *activations, conditional = inputs
        return decode(self.model, list(activations), conditional)


def image_size(processor: CLIPSegProcessor) -> int:
    """The processor's fixed square size; exports need one (the graph's input is fixed)."""
    images = processor.image_processor
    size = images.size if isinstance(images.size, dict) else vars(images.size)
    height, width = size.get("height"), size.get("width")
    if not images.do_resize or height is None or height != width:
        raise ValueError(f"the processor must resize to a fixed square (got do_resize={images.do_resize}, "
                         f"size={size}); an export has a fixed input size")
    return int(height)


def preprocessing_constants(processor: CLIPSegProcessor) -> dict:
    """What `preprocessing.Preprocessing` needs to reproduce the processor (disabled steps become identities)."""
    image_size(processor)  # a fixed square, or a clear error
    steps = Preprocessing.of(processor.image_processor)
    if steps is None:
        raise ValueError(f"the export reproduces a ViT image processor that resizes with PIL; "
                         f"{type(processor.image_processor).__name__} is not one")
    return {key: list(value) if isinstance(value, tuple) else value for key, value in dataclasses.asdict(steps).items()}


def _export(module: nn.Module, args: tuple, path: Path, inputs: list[str], outputs: list[str],
            dynamic: dict[str, dict[int, str]]) -> None:
    with warnings.catch_warnings():
        # the tracer warns about every Python-level shape check it folds; at a fixed image size they are constants
        warnings.simplefilter("ignore")
        torch.onnx.export(module, args, str(path), dynamo=False, opset_version=onnx_format.OPSET, input_names=inputs,
                          output_names=outputs, dynamic_axes=dynamic, do_constant_folding=True)


def export_graphs(model: CLIPSegForImageSegmentation, size: int, folder: Path) -> None:
    """The three float32 graphs, batch axes dynamic (and the token axis of the text encoder)."""
    layers = [onnx_format.activation_name(i) for i in range(len(model.config.extract_layers))]
    pixels = torch.zeros(1, 3, size, size)
    with torch.no_grad():
        activations = vision_activations(model, pixels)
        conditional = torch.zeros(1, model.config.projection_dim)
        ids = torch.tensor([[0, 1, 2, 3]])  # any ids: the graph does not depend on them
        _export(ImageEncoder(model), (pixels,), folder / onnx_format.GRAPH_FILES["image_encoder"], [onnx_format.PIXEL_INPUT], layers,
                {onnx_format.PIXEL_INPUT: {0: "images"}, **{name: {0: "images"} for name in layers}})
        _export(TextEncoder(model), (ids, torch.ones_like(ids)), folder / onnx_format.GRAPH_FILES["text_encoder"],
                ["input_ids", "attention_mask"], ["embedding"],
                {"input_ids": {0: "prompts", 1: "tokens"}, "attention_mask": {0: "prompts", 1: "tokens"},
                 "embedding": {0: "prompts"}})
        _export(Decoder(model), (*activations, conditional), folder / onnx_format.GRAPH_FILES["decoder"],
                [*layers, onnx_format.CONDITIONAL_INPUT], ["logits"],
                {**{name: {0: "pairs"} for name in layers}, onnx_format.CONDITIONAL_INPUT: {0: "pairs"}, "logits": {0: "pairs"}})


def stamp(path: Path, fingerprint: str, export_id: str) -> None:
    """Write the config fingerprint and export id into a graph's metadata (checked when it loads)."""
    import onnx

    graph = onnx.load(str(path))
    del graph.metadata_props[:]
    for key, value in ((onnx_format.FINGERPRINT_KEY, fingerprint), (onnx_format.EXPORT_ID_KEY, export_id)):
        graph.metadata_props.add(key=key, value=value)
    onnx.save(graph, str(path))


def quantize_int8(source: Path, target: Path) -> None:
    """Dynamic int8 quantisation of the MatMul/Gemm weights (activations quantised per call).

    Weights QInt8, activations QUInt8: onnxruntime's u8 x s8 kernels are the ones that use
    AVX512-VNNI (vpdpbusd multiplies unsigned by signed bytes) and AMX where present; u8 x u8 takes a
    path without them. On this project's CPU (Xeon with AVX512-VNNI and AMX-INT8) the full-size image
    encoder ran in 664 ms with QInt8 weights and 1289 ms with QUInt8 (fp32: 1469 ms), same error.
    """
    from onnxruntime.quantization import QuantType, quantize_dynamic

    # it logs advice to run its pre-processing first: measured here, that changed neither speed nor error
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        quantize_dynamic(str(source), str(target), weight_type=QuantType.QInt8, op_types_to_quantize=["MatMul", "Gemm"])
    finally:
        root.setLevel(level)


def vocabulary_embeddings(model: CLIPSegForImageSegmentation, processor: CLIPSegProcessor) -> tuple[list[str], np.ndarray]:
    """The vocabulary prompts' embeddings, each tokenized alone as `Segmenter.prompt_embeddings` does."""
    prompts = all_prompts()
    with torch.no_grad():
        rows = [text_embeddings(model, **processor.tokenizer([p], return_tensors="pt"))[0] for p in prompts]
    return prompts, torch.stack(rows).float().numpy()


def export_config(model: CLIPSegForImageSegmentation, processor: CLIPSegProcessor, export_id: str,
                  quantize: str | None) -> dict:
    model_config = json.loads(model.config.to_json_string(use_diff=False))
    return {
        "format": onnx_format.FORMAT,
        "format_version": onnx_format.FORMAT_VERSION,
        "exported_by": f"clipseg-drywall {__version__}, torch {torch.__version__}",
        "export_id": export_id,
        "opset": onnx_format.OPSET,
        "min_onnxruntime": onnx_format.MIN_ONNXRUNTIME,
        "quantization": quantize,
        "segmentation_threshold": threshold_of(model.config),
        "image_size": image_size(processor),
        "extract_layers": list(model.config.extract_layers),
        "max_position_embeddings": model.config.text_config.max_position_embeddings,
        "projection_dim": model.config.projection_dim,
        "graphs": onnx_format.GRAPH_FILES,
        "preprocessing": preprocessing_constants(processor),
        "config_fingerprint": onnx_format.config_fingerprint(model_config),
        "model_config": model_config,
    }


def export(model_path: str | Path, output: str | Path, quantize: str | None = None) -> Path:
    """Export a checkpoint folder to `output` (created; files there of an earlier export are replaced)."""
    if quantize not in (None, *QUANTIZATIONS):
        raise ValueError(f"unknown quantization {quantize!r}; choose from {QUANTIZATIONS}")
    output = Path(output)
    check_writable_folder(output)
    model = CLIPSegForImageSegmentation.from_pretrained(str(model_path), use_safetensors=True).eval()
    processor = CLIPSegProcessor.from_pretrained(str(model_path))
    config = export_config(model, processor, uuid.uuid4().hex, quantize)
    output.mkdir(parents=True, exist_ok=True)
    (output / onnx_format.CONFIG_FILE).unlink(missing_ok=True)  # written last: a folder without it is an unfinished export
    with tempfile.TemporaryDirectory(dir=output, prefix=".export-") as scratch:
        export_graphs(model, config["image_size"], Path(scratch))
        for role, name in onnx_format.GRAPH_FILES.items():
            stamp(Path(scratch) / name, config["config_fingerprint"], config["export_id"])
            if quantize == "int8" and role != "text_encoder":
                quantize_int8(Path(scratch) / name, output / name)
            else:
                shutil.move(Path(scratch) / name, output / name)
    processor.tokenizer.backend_tokenizer.save(str(output / onnx_format.TOKENIZER_FILE))
    prompts, embeddings = vocabulary_embeddings(model, processor)
    np.savez(output / onnx_format.EMBEDDINGS_FILE, prompts=np.array(prompts), embeddings=embeddings,
             export_id=np.array(config["export_id"]))
    (output / onnx_format.CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    return output


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="checkpoint folder (or Hub id) written by save_pretrained")
    parser.add_argument("--output", required=True, type=Path, help="export folder (created)")
    parser.add_argument("--quantize", choices=QUANTIZATIONS, default=None,
                        help="dynamic int8 quantisation of the image encoder and decoder (faster on CPUs with VNNI)")
    with user_errors(argv):
        args = parser.parse_args(argv)
        require_extra("onnx", ("onnx", "onnxruntime"))  # the install command, not a traceback mid-export
        check_model_source(args.model)
        check_writable_folder(args.output)
        folder = export(args.model, args.output, args.quantize)
    print(f"exported {args.model} to {folder} (opset {onnx_format.OPSET}"
          f"{', int8 image encoder and decoder' if args.quantize else ', float32'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
