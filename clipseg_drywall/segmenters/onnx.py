"""OnnxSegmenter: the `Segmenter` API on onnxruntime, with neither torch nor transformers.

It reads a folder written by `python -m clipseg_drywall.segmenters.export` and keeps the package's design:
one image-encoder pass per batch of photos for every prompt, each prompt's embedding computed
once (the 16 vocabulary prompts come precomputed), and only the small decoder run per
(image, prompt) pair. Preprocessing (resize, rescale, normalise) and the upsampling of logits to
each photo's size before the sigmoid are re-implemented here in numpy/Pillow, to the numerics of
`CLIPSegProcessor` and `upsampling.native_probabilities` (tests/test_onnx.py checks both).

Only onnxruntime, numpy, Pillow, tokenizers and the package's torch-free modules are imported,
so `pip install --no-deps clipseg-drywall onnxruntime numpy pillow tokenizers` is enough.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from ..preprocessing import Preprocessing
from ..prompts import warn_truncated
from .base import BatchedSegmenter, LazyMasks, Segmentation, threshold_of
from .onnx_format import (
    CONDITIONAL_INPUT,
    CONFIG_FILE,
    EMBEDDINGS_FILE,
    EXPORT_ID_KEY,
    FINGERPRINT_KEY,
    FORMAT,
    FORMAT_VERSION,
    GRAPH_FILES,
    MIN_ONNXRUNTIME,
    PIXEL_INPUT,
    TOKENIZER_FILE,
    OnnxExportError,
    OnnxRuntimeTooOldError,
    activation_name,
    config_fingerprint,
    version_tuple,
)

# ---- numerics: native_probabilities in numpy (the processor's preprocessing: `preprocessing`) ----


def _linear_indices(source: int, target: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(lower index, upper index, lower weight, upper weight) per output pixel along one axis, with
    PyTorch's bilinear rule for align_corners=False: source = (target + 0.5) * scale - 0.5, clamped at 0.

    PyTorch's CPU kernel computes that in float32 as one fused multiply-add (a single rounding), so the
    product is taken exactly in float64 and rounded once: plain float32 arithmetic shifts some weights by
    ~3e-5, which moves probabilities by up to 6e-5."""
    scale = np.float64(np.float32(source / target))
    centres = (np.arange(target, dtype=np.float32) + np.float32(0.5)).astype(np.float64)
    position = np.maximum(centres * scale - 0.5, 0).astype(np.float32)
    lower = np.minimum(position.astype(np.int64), source - 1)
    upper = np.minimum(lower + 1, source - 1)
    upper_weight = (position - lower).astype(np.float32)
    return lower, upper, np.float32(1) - upper_weight, upper_weight


def upsample_logits(logits: np.ndarray, height_width: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of logits (P, h, w) to (P, height, width), as `upsampling.upsample_logits`
    (no antialiasing: Pillow's resize would average over a wider window when shrinking)."""
    height, width = height_width
    if logits.shape[-2:] == (height, width):
        return logits
    top, bottom, top_weight, bottom_weight = _linear_indices(logits.shape[-2], height)
    rows = logits[:, top, :] * top_weight[:, None] + logits[:, bottom, :] * bottom_weight[:, None]
    left, right, left_weight, right_weight = _linear_indices(logits.shape[-1], width)
    return rows[:, :, left] * left_weight + rows[:, :, right] * right_weight


def native_probabilities(logits: np.ndarray, height_width: tuple[int, int]) -> np.ndarray:
    """Probabilities (P, height, width): logits upsampled in float32 *before* the sigmoid.
    The sigmoid as 0.5 * (1 + tanh(x / 2)) never overflows, unlike 1 / (1 + exp(-x))."""
    upsampled = upsample_logits(logits.astype(np.float32, copy=False), height_width)
    return np.float32(0.5) * (np.float32(1) + np.tanh(np.float32(0.5) * upsampled))


# ---- the export folder ----

def _read_json(path: Path) -> dict:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not found; export a checkpoint with "
                                f"python -m clipseg_drywall.segmenters.export --model CHECKPOINT --output {path.parent}")
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise OnnxExportError(f"{path}: not valid JSON ({error})") from error
    if not isinstance(value, dict):
        raise OnnxExportError(f"{path}: expected a JSON object")
    return value


def read_export_config(folder: Path) -> dict:
    """config.json of an export folder, checked to be one (not a PyTorch checkpoint's)."""
    path = folder / CONFIG_FILE
    config = _read_json(path)
    if config.get("format") != FORMAT:
        if "model_type" in config:
            raise OnnxExportError(f"{folder} is a PyTorch checkpoint, not an ONNX export: run "
                                  f"python -m clipseg_drywall.segmenters.export --model {folder} --output EXPORT_FOLDER, "
                                  f"or use the torch backend")
        raise OnnxExportError(f"{path}: not a clipseg-drywall ONNX export (no \"format\": \"{FORMAT}\")")
    if config.get("format_version") != FORMAT_VERSION:
        raise OnnxExportError(f"{path}: export format version {config.get('format_version')} is not "
                              f"{FORMAT_VERSION}; re-export the checkpoint with this version of clipseg-drywall")
    if config.get("config_fingerprint") != config_fingerprint(config.get("model_config", {})):
        raise OnnxExportError(f"{path}: its model_config does not match its config_fingerprint (edited by hand?); "
                              f"re-export the checkpoint")
    return config


def check_onnxruntime(config: dict, folder: Path) -> None:
    """Fail with the upgrade command when the installed onnxruntime is older than the export needs."""
    import onnxruntime

    needed = config.get("min_onnxruntime", MIN_ONNXRUNTIME)
    if version_tuple(onnxruntime.__version__) < version_tuple(needed):
        raise OnnxRuntimeTooOldError(
            f"{folder / GRAPH_FILES['image_encoder']}: exported with ONNX opset {config.get('opset')}, which needs "
            f"onnxruntime >= {needed}; this is onnxruntime {onnxruntime.__version__}: pip install -U onnxruntime")


def open_session(path: Path, config: dict, options=None, providers: Sequence[str] = ("CPUExecutionProvider",)):
    """An onnxruntime session for one graph of the export, checked to belong to `config`."""
    import onnxruntime

    if not path.is_file():
        raise FileNotFoundError(f"{path}: graph not found; re-export the checkpoint into {path.parent}")
    try:
        session = onnxruntime.InferenceSession(str(path), sess_options=options, providers=list(providers))
    except Exception as error:  # onnxruntime raises its own types (Fail, InvalidGraph, InvalidProtobuf, ...)
        reason = str(error).strip().splitlines()[0][:300]
        if "opset" in reason.lower():
            raise OnnxRuntimeTooOldError(f"{path}: this onnxruntime ({onnxruntime.__version__}) cannot run it "
                                         f"({reason}); pip install -U onnxruntime") from error
        raise OnnxExportError(f"{path}: not a loadable ONNX graph ({reason}); re-export the checkpoint") from error
    metadata = session.get_modelmeta().custom_metadata_map
    if metadata.get(FINGERPRINT_KEY) != config["config_fingerprint"]:
        raise OnnxExportError(f"{path}: exported from another model config than {path.parent / CONFIG_FILE} "
                              f"describes; re-export the checkpoint so that graphs and config.json belong together")
    if metadata.get(EXPORT_ID_KEY) != config["export_id"]:
        raise OnnxExportError(f"{path}: from another export than {path.parent / CONFIG_FILE} (mixed folders?); "
                              f"re-export the checkpoint")
    return session


def load_tokenizer(path: Path, limit: int):
    """The fast tokenizer the export saved, padding off and truncation at `limit` tokens (specials kept,
    as the transformers tokenizer does with truncation=True)."""
    from tokenizers import Tokenizer

    if not path.is_file():
        raise FileNotFoundError(f"{path}: tokenizer not found; re-export the checkpoint into {path.parent}")
    try:
        tokenizer = Tokenizer.from_file(str(path))
    except Exception as error:  # tokenizers raises a bare Exception on a malformed file
        raise OnnxExportError(f"{path}: not a tokenizers file ({str(error)[:200]})") from error
    tokenizer.no_padding()
    tokenizer.no_truncation()
    return tokenizer


def load_vocabulary_embeddings(path: Path, config: dict) -> dict[str, np.ndarray]:
    """{prompt: (projection_dim,) float32} of the vocabulary prompts, computed at export time."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: precomputed prompt embeddings not found; re-export the checkpoint")
    try:
        with np.load(path, allow_pickle=False) as stored:
            prompts, embeddings, export_id = list(stored["prompts"]), stored["embeddings"], str(stored["export_id"])
    except (OSError, ValueError, KeyError) as error:
        raise OnnxExportError(f"{path}: not a prompt-embedding file of an export ({error})") from error
    if export_id != config["export_id"]:
        raise OnnxExportError(f"{path}: from another export than {path.parent / CONFIG_FILE}; re-export the checkpoint")
    return {str(p): e.astype(np.float32) for p, e in zip(prompts, embeddings)}


class OnnxSegmenter(BatchedSegmenter):
    """Text-prompted segmentation on onnxruntime, the API of `segmenters.pytorch.Segmenter`.

    >>> segmenter = OnnxSegmenter.from_pretrained("exports/clipseg-small")
    >>> masks = segmenter.segment(["photo.jpg"], ["segment crack", "segment taping area"])
    >>> masks[0]["segment crack"].shape  # (height, width) of photo.jpg, values {0, 255}
    """

    backend = "onnx"

    def __init__(self, folder: str | Path, threshold: float | None = None, batch_size: int = 8,
                 num_threads: int | None = None, providers: Sequence[str] = ("CPUExecutionProvider",)):
        folder = Path(folder).expanduser()
        if not folder.is_dir():
            raise (NotADirectoryError if folder.exists() else FileNotFoundError)(
                f"{folder}: no such export folder (write one with python -m clipseg_drywall.segmenters.export)")
        self.folder = folder
        self.config = read_export_config(folder)
        check_onnxruntime(self.config, folder)
        options = self._session_options(num_threads)
        self._sessions = {role: open_session(folder / name, self.config, options, providers)
                          for role, name in GRAPH_FILES.items()}
        self.max_tokens = int(self.config["max_position_embeddings"])
        self.tokenizer = load_tokenizer(folder / TOKENIZER_FILE, self.max_tokens)
        self._embeddings = load_vocabulary_embeddings(folder / EMBEDDINGS_FILE, self.config)
        self.preprocessing = Preprocessing(**{k: tuple(v) if isinstance(v, list) else v
                                              for k, v in self.config["preprocessing"].items()})
        self.extract_layers = list(self.config["extract_layers"])
        self.threshold = threshold_of(self.config) if threshold is None else float(threshold)
        self.batch_size = batch_size

    @classmethod
    def from_pretrained(cls, folder: str | Path, threshold: float | None = None, batch_size: int = 8,
                        num_threads: int | None = None,
                        providers: Sequence[str] = ("CPUExecutionProvider",)) -> OnnxSegmenter:
        """An export folder (`python -m clipseg_drywall.segmenters.export`); `threshold` overrides the calibrated one
        saved in its config.json, `num_threads` onnxruntime's intra-op threads (default: one per core)."""
        return cls(folder, threshold=threshold, batch_size=batch_size, num_threads=num_threads, providers=providers)

    @staticmethod
    def _session_options(num_threads: int | None):
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
        if num_threads:
            options.intra_op_num_threads = num_threads
        return options

    def _encode_prompt(self, prompt: str) -> np.ndarray:
        """One prompt alone (no padding), cut to the text encoder's limit with the shared warning."""
        encoding = self.tokenizer.encode(prompt)
        if len(encoding.ids) > self.max_tokens:
            warn_truncated(prompt, len(encoding.ids), self.max_tokens)
            self.tokenizer.enable_truncation(self.max_tokens)
            try:
                encoding = self.tokenizer.encode(prompt)
            finally:
                self.tokenizer.no_truncation()
        feeds = {"input_ids": np.asarray([encoding.ids], dtype=np.int64),
                 "attention_mask": np.asarray([encoding.attention_mask], dtype=np.int64)}
        return self._sessions["text_encoder"].run(None, feeds)[0][0]

    def _stack(self, embeddings: list[np.ndarray]) -> np.ndarray:
        return np.stack(embeddings)

    def logits(self, images: Sequence[Image.Image], prompts: Sequence[str]) -> np.ndarray:
        """Decoder logits (B, P, h, w) at the export's resolution: one image-encoder pass for the B images."""
        return self._logits_from_pixels(self.preprocessing.pixel_values(images), prompts)

    def _logits_from_pixels(self, pixels: np.ndarray, prompts: Sequence[str]) -> np.ndarray:
        conditional = self.prompt_embeddings(prompts)
        activations = self._sessions["image_encoder"].run(None, {PIXEL_INPUT: pixels})
        n_images, n_prompts = len(pixels), len(prompts)
        # every (image, prompt) pair in one decoder call, image-major as in Segmenter.logits
        feeds = {activation_name(i): np.repeat(a, n_prompts, axis=0) for i, a in enumerate(activations)}
        feeds[CONDITIONAL_INPUT] = np.tile(conditional, (n_images, 1))
        logits = self._sessions["decoder"].run(None, feeds)[0]
        return logits.reshape(n_images, n_prompts, *logits.shape[-2:])

    def _segment_batch(self, images, prompts, threshold, return_probabilities) -> Iterator[Segmentation]:
        for image, image_logits in zip(images, self.logits(images, prompts)):
            probabilities = native_probabilities(image_logits, (image.height, image.width))
            masks = _masks(probabilities, threshold)
            yield Segmentation(
                size=image.size,
                masks=dict(zip(prompts, masks)),
                probabilities=dict(zip(prompts, probabilities)) if return_probabilities else None,
            )

    def preprocessor(self) -> Preprocessing:
        return self.preprocessing

    def launch_masks(self, pixels, sizes, prompts, threshold) -> LazyMasks:
        """The batch's logits now; each image's masks made when read, as `_segment_batch` makes them."""
        logits = self._logits_from_pixels(np.asarray(pixels), prompts)

        def make(index: int) -> np.ndarray:
            width, height = sizes[index]
            return _masks(native_probabilities(logits[index], (height, width)), threshold)

        return LazyMasks(make, len(sizes))


def _masks(probabilities: np.ndarray, threshold: float) -> np.ndarray:
    """uint8 {0, 255} masks of native-size probabilities (`upsampling.threshold_masks`, in numpy)."""
    return (probabilities > threshold).astype(np.uint8) * np.uint8(255)
