"""The Gradio demo: photos + prompts in; per photo an overlay, the share each prompt marks and a zip of masks.

    python -m clipseg_drywall.app --model runs/clipseg-small        # or CLIPSEG_DRYWALL_MODEL=org/model
    clipseg-drywall-app --model org/clipseg-drywall --host 0.0.0.0 --port 7860 [--share]

Built on `segmenters.pytorch.Segmenter`: each photo gets one vision pass for all of its prompts. The zip
holds every mask as a {0, 255} single-channel PNG at the photo's native size, named exactly as
`predict` names it (`naming.mask_file_name`). `segment_photos` is the whole handler as a plain
function; `build_demo` wires it to the page. `space/app.py` runs the same demo as a Hub Space.

A bad photo (not an image, truncated, too large for the memory bound) gets a message on the page
and the other photos of the request still get their results; nothing shows a stack trace.
Gradio is imported only when the demo is built, so the core install can import this module.
"""

from __future__ import annotations

import colorsys
import io
import logging
import os
import shutil
import sys
import tempfile
import time
import warnings
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

import numpy as np
from PIL import Image

from .cli import ArgumentParser, check_model_source, require_extra, user_errors
from .images import ImageLoadError, load_image
from .naming import claim_stem, mask_file_name, prompt_slugs
from .prompts import CANONICAL_PROMPTS, all_prompts
from .segmenters import load_segmenter
from .segmenters.base import check_threshold

if TYPE_CHECKING:
    import gradio as gr

    from .segmenters.pytorch import Segmenter

logger = logging.getLogger(__name__)

MODEL_ENV = "CLIPSEG_DRYWALL_MODEL"
MAX_PHOTOS = 8  # overlays are fixed page slots; more photos per request would have nowhere to show
MAX_PROMPTS = 24  # every vocabulary prompt and a few typed ones; the Segmenter keeps each new prompt's embedding
# Memory bound: one photo at a time, and its native-size logits, probabilities and masks take about
# 13 bytes per (pixel, prompt). 100 M keeps a request under ~1.5 GB: an 8000x6000 photo with two prompts fits.
MAX_MASK_PIXELS = 100_000_000
OVERLAY_SIDE = 1024  # overlays are shown at most this size (the zip keeps native size): bounds the page's cost
OVERLAY_ALPHA = 0.55  # a mask's opacity over the photo: the crack stays visible under its colour
MAX_FILE_SIZE = "100mb"
# Okabe-Ito colours: told apart with the common colour-vision deficiencies.
PALETTE = ("#E69F00", "#56B4E9", "#009E73", "#F0E442", "#0072B2", "#D55E00", "#CC79A7", "#000000")
DEFAULT_PROMPTS = [CANONICAL_PROMPTS["crack"], CANONICAL_PROMPTS["taping"]]
TABLE_HEADERS = ["photo", "prompt", "share of image", "mask file"]
EXAMPLES = Path(__file__).resolve().parents[2] / "shared" / "data"  # a checkout's ../shared/data, if present


class Overlay(NamedTuple):
    """What `gr.AnnotatedImage` shows for one photo: the photo at display size and one (mask, label) per prompt."""

    photo: str
    image: Image.Image
    annotations: list[tuple[np.ndarray, str]]
    colours: dict[str, str]


class DemoResult(NamedTuple):
    overlays: list[Overlay]
    table: list[list]  # TABLE_HEADERS rows, one per (photo, prompt)
    zip_path: Path | None  # None when no photo gave a mask
    messages: list[str]  # one readable line per problem, for the page


def parse_prompts(selected: Sequence[str] | None, free_text: str | None) -> list[str]:
    """The ticked prompts, then those typed (comma- or newline-separated), without blanks or repeats."""
    typed = (free_text or "").replace("\n", ",").split(",")
    prompts = [p.strip() for p in [*(selected or []), *typed]]
    return list(dict.fromkeys(p for p in prompts if p))


def colour(index: int) -> str:
    """The palette, then hues spaced by the golden angle (any number of prompts, no two alike)."""
    if index < len(PALETTE):
        return PALETTE[index]
    red, green, blue = colorsys.hsv_to_rgb((index - len(PALETTE)) * 0.618034 % 1.0, 0.75, 0.85)
    return f"#{round(red * 255):02X}{round(green * 255):02X}{round(blue * 255):02X}"


def prompt_colours(prompts: Sequence[str]) -> dict[str, str]:
    return {prompt: colour(i) for i, prompt in enumerate(prompts)}


def size_problem(path: Path, n_prompts: int, max_mask_pixels: int = MAX_MASK_PIXELS) -> str | None:
    """Why a photo is refused before decoding (only its header is read), or None."""
    try:
        with Image.open(path) as image:
            width, height = image.size
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError):
        return None  # load_image reports the file properly
    if width * height * n_prompts <= max_mask_pixels:
        return None
    return (f"{path.name}: {width}x{height} ({width * height / 1e6:.1f} MP) with {n_prompts} prompt(s) is over "
            f"this demo's memory bound of {max_mask_pixels / 1e6:.0f} M mask pixels per photo; "
            f"use fewer prompts or a smaller photo")


def display_size(width: int, height: int, side: int = OVERLAY_SIDE) -> tuple[int, int]:
    scale = min(1.0, side / max(width, height))
    return max(1, round(width * scale)), max(1, round(height * scale))


def make_overlay(name: str, image: Image.Image, masks: dict[str, np.ndarray], colours: dict[str, str]) -> Overlay:
    """The photo and its masks shrunk to display size (nearest: a thin crack stays a crack)."""
    size = display_size(*image.size)
    shown = image.resize(size, Image.Resampling.BILINEAR) if size != image.size else image
    annotations = []
    for prompt, mask in masks.items():
        small = Image.fromarray(mask).resize(size, Image.Resampling.NEAREST) if size != image.size else mask
        annotations.append((np.asarray(small, dtype=np.float32) / 255.0 * OVERLAY_ALPHA, prompt))
    return Overlay(name, shown, annotations, colours)


def png_bytes(mask: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.asarray(mask, dtype=np.uint8), mode="L").save(buffer, format="PNG")
    return buffer.getvalue()


def segment_photos(
    segmenter: Segmenter,
    files: Sequence[str | Path] | None,
    prompts: Sequence[str] | None,
    free_text: str | None = "",
    threshold: float | None = None,
    work_dir: str | Path | None = None,
    max_mask_pixels: int = MAX_MASK_PIXELS,
) -> DemoResult:
    """The demo's handler as a plain function: segment each photo with every prompt, one photo at a time.

    `files`: photo paths (their names name the masks); `prompts`: the ticked vocabulary prompts;
    `free_text`: more prompts, comma- or newline-separated; `threshold`: None for the model's.
    The zip is written under `work_dir` (a new temporary folder when None).
    """
    prompts = parse_prompts(prompts, free_text)
    files = [Path(f) for f in files or []]
    if not prompts:
        return DemoResult([], [], None, ["No prompt: tick one of the prompts or type your own."])
    if not files:
        return DemoResult([], [], None, ["No photo: upload one or more photos."])
    threshold = segmenter.threshold if threshold is None else float(threshold)
    if not 0.0 < threshold < 1.0:
        return DemoResult([], [], None, [f"The threshold must be between 0 and 1, got {threshold}."])
    messages = []
    if len(prompts) > MAX_PROMPTS:
        messages.append(f"{len(prompts)} prompts given; this demo uses the first {MAX_PROMPTS} per run.")
        prompts = prompts[:MAX_PROMPTS]
    if len(files) > MAX_PHOTOS:
        messages.append(f"{len(files)} photos uploaded; this demo segments the first {MAX_PHOTOS} per run.")
        files = files[:MAX_PHOTOS]
    slugs, colours = prompt_slugs(prompts), prompt_colours(prompts)
    folder = Path(work_dir) if work_dir is not None else Path(tempfile.mkdtemp(prefix="clipseg-drywall-app-"))
    folder.mkdir(parents=True, exist_ok=True)
    zip_path = folder / "drywall-masks.zip"
    overlays, table, stems = [], [], {}
    # PNGs are compressed already: stored, not deflated again
    with zipfile.ZipFile(zip_path, "w", compression=zipfile.ZIP_STORED) as archive:
        for path in files:
            clash = claim_stem(path, stems, path.name)  # as predict refuses them
            problem = f"{path.name}: {clash}" if clash else size_problem(path, len(prompts), max_mask_pixels)
            if problem is None:
                problem = _segment_one(segmenter, path, prompts, slugs, colours, threshold, archive, overlays, table)
            if problem:
                messages.append(problem)
    if not overlays:
        zip_path.unlink()
    return DemoResult(overlays, table, zip_path if overlays else None, messages)


def _segment_one(segmenter: Segmenter, path: Path, prompts: list[str], slugs: dict[str, str],
                 colours: dict[str, str], threshold: float, archive: zipfile.ZipFile,
                 overlays: list[Overlay], table: list[list]) -> str | None:
    """One photo into the zip, the overlays and the table; the problem's message instead, never a raise."""
    try:
        image = load_image(path)
        # the Segmenter warns (e.g. a prompt cut to the encoder's length); the page should say so too
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            result = next(segmenter.iter_segment([image], prompts, threshold=threshold))
    except ImageLoadError as error:  # its message names the file by the server's upload path: show the name
        return str(error).replace(str(path), path.name)
    except Exception as error:  # the page shows a message, the server log the traceback
        logger.exception("segmenting %s failed", path)
        return f"{path.name}: could not be segmented ({type(error).__name__}: {error})".replace(str(path), path.name)
    for prompt, mask in result.masks.items():
        name = mask_file_name(path.name, prompt, slugs)
        archive.writestr(name, png_bytes(mask))
        table.append([path.name, prompt, round(float(np.count_nonzero(mask)) / mask.size, 4), name])
    overlays.append(make_overlay(path.name, image, result.masks, colours))
    notes = dict.fromkeys(str(w.message) for w in caught if issubclass(w.category, UserWarning))
    return "; ".join(notes) or None


def fresh_folder(root: Path, max_age_s: float = 3600.0) -> Path:
    """A new folder under `root` for one request's zip; folders older than `max_age_s` go (gradio
    serves its own copy of each zip, so the page never needs ours after the request)."""
    for old in root.iterdir():
        if old.is_dir() and time.time() - old.stat().st_mtime > max_age_s:
            shutil.rmtree(old, ignore_errors=True)
    return Path(tempfile.mkdtemp(dir=root))


def example_photos(data: Path = EXAMPLES, per_export: int = 2) -> list[Path]:
    """A few validation photos of each Roboflow export under `data`, when a checkout has ../shared/data."""
    folders = [data / "cracks" / "valid" / "images", data / "drywall-join-detect" / "valid"]
    return [p for folder in folders if folder.is_dir() for p in sorted(folder.glob("*.jpg"))[:per_export]]


def build_demo(segmenter: Segmenter, examples: Sequence[Path] | None = None) -> gr.Blocks:
    """The page: photos, prompt picks + free text, threshold; per photo an overlay, the table and the zip."""
    require_extra("demo", ("gradio",))
    import gradio as gr

    examples = example_photos() if examples is None else list(examples)
    with gr.Blocks(title="clipseg-drywall", delete_cache=(3600, 3600)) as demo:
        gr.Markdown("# Drywall QA: text-prompted segmentation\nUpload site photos, choose what to find, press "
                    "**Segment**. Each photo gets an overlay; the zip holds every mask as a {0, 255} PNG at "
                    "the photo's size.")
        with gr.Row():
            with gr.Column():
                photos = gr.File(label="Photos", file_count="multiple", type="filepath", elem_id="photos")
                picks = gr.CheckboxGroup(all_prompts(), value=DEFAULT_PROMPTS, label="Prompts", elem_id="prompts")
                typed = gr.Textbox(label="More prompts (comma- or newline-separated)", lines=2, elem_id="free-text")
                threshold = gr.Slider(0.01, 0.99, value=segmenter.threshold, step=0.01,
                                      label=f"Threshold (the model's calibrated value: {segmenter.threshold:g})",
                                      elem_id="threshold")
                run = gr.Button("Segment", variant="primary", elem_id="run")
            with gr.Column():
                status = gr.Markdown(elem_id="status")
                overlays = [gr.AnnotatedImage(label=f"Photo {i + 1}", visible=False, elem_id=f"overlay-{i}")
                            for i in range(MAX_PHOTOS)]
                # long Roboflow names would push the share out of sight: names wrap, the share keeps its room
                table = gr.Dataframe(headers=TABLE_HEADERS, label="Share of each photo marked", elem_id="table",
                                     wrap=True, column_widths=["32%", "22%", "14%", "32%"], interactive=False,
                                     datatype=["str", "str", "number", "str"])
                download = gr.File(label="Masks (zip)", elem_id="download")
        inputs = [photos, picks, typed, threshold]
        if examples:
            gr.Examples([[[str(p)], DEFAULT_PROMPTS, "", segmenter.threshold] for p in examples], inputs,
                        label="Validation photos", cache_examples=False)

        work_root = Path(tempfile.mkdtemp(prefix="clipseg-drywall-app-"))

        def segment(photos, prompts, free_text, threshold):
            return _page_outputs(segment_photos(segmenter, photos, prompts, free_text, threshold,
                                                work_dir=fresh_folder(work_root)))

        run.click(segment, inputs, [*overlays, table, download, status], api_name="segment")
    return demo


def _page_outputs(result: DemoResult) -> list:
    """`DemoResult` as component updates: filled overlay slots shown, the rest hidden; problems as toasts too."""
    import gradio as gr

    for message in result.messages:
        gr.Warning(message)
    slots = [gr.AnnotatedImage(value=(o.image, o.annotations), color_map=o.colours, label=o.photo, visible=True)
             for o in result.overlays]
    slots += [gr.AnnotatedImage(value=None, visible=False)] * (MAX_PHOTOS - len(slots))
    done = f"{len(result.overlays)} photo(s) segmented." if result.overlays else "Nothing segmented."
    status = "\n".join([f"**{done}**", *(f"- {m}" for m in result.messages)])
    table = result.table or None
    return [*slots, table, str(result.zip_path) if result.zip_path else None, status]


def launch(demo: gr.Blocks, host: str | None = None, port: int | None = None, share: bool = False,
           block: bool = True) -> None:
    """`demo.launch` with the demo's limits; host/port None: gradio's defaults (GRADIO_SERVER_NAME/PORT on Spaces)."""
    allowed = [str(EXAMPLES)] if EXAMPLES.is_dir() else []  # examples are served from ../shared, outside the cwd
    demo.launch(server_name=host, server_port=port, share=share, prevent_thread_lock=not block,
                max_file_size=MAX_FILE_SIZE, allowed_paths=allowed, quiet=not block)


def demo_segmenter(model: str | None, threshold: float | None = None, device: str | None = None) -> Segmenter:
    """The model named by --model, else by $CLIPSEG_DRYWALL_MODEL; checked before anything loads."""
    source = "--model" if model else f"${MODEL_ENV}"  # the error names where the bad value came from
    model = model or os.environ.get(MODEL_ENV)
    if not model:
        raise ValueError(f"no model: pass --model PATH_OR_HUB_ID or set {MODEL_ENV}")
    check_model_source(model, source)
    if threshold is not None:
        check_threshold(threshold)
    return load_segmenter(model, "torch", threshold=threshold, device=device)


def demo_from_env() -> gr.Blocks:
    """The demo for the model in $CLIPSEG_DRYWALL_MODEL (what `space/app.py` runs)."""
    return build_demo(demo_segmenter(None))


def _parser() -> ArgumentParser:
    parser = ArgumentParser(prog="python -m clipseg_drywall.app", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help=f"checkpoint folder or Hub id (default: ${MODEL_ENV})")
    parser.add_argument("--threshold", type=float, help="the slider's start (default: the model config's)")
    parser.add_argument("--device", help="torch device, e.g. cuda (default: cpu)")
    parser.add_argument("--host", help="address to serve on, e.g. 0.0.0.0 (default: 127.0.0.1)")
    parser.add_argument("--port", type=int, help="port (default: 7860, or the next free one)")
    parser.add_argument("--share", action="store_true", help="also open a temporary public gradio.live link")
    return parser


def main(argv: list[str] | None = None) -> int:
    with user_errors(argv):
        args = _parser().parse_args(argv)
        require_extra("demo", ("gradio",))
        segmenter = demo_segmenter(args.model, args.threshold, args.device)
        demo = build_demo(segmenter)
        launch(demo, args.host, args.port, args.share)  # a port in use is one error line too
    return 0


if __name__ == "__main__":
    sys.exit(main())
