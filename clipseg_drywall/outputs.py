"""What the commands write, and how: mask file names, atomic writes, the index of a call.

Mask files are named `<image stem>__<prompt slug>.png` (predict, evaluate, the demo's zip):
- the slug is the prompt case-folded (NFKC), with every run of characters that are neither
  letters nor digits (in any script: "墙上的裂缝" keeps its characters) turned into one `-`, and
  cut to `MAX_SLUG_CHARS`;
- a prompt with no letter or digit at all ("!!!", emoji) is named `prompt-<hash>`;
- when two different prompts of one call would get the same slug ("segment crack" and
  "Segment CRACK!"), each of them gets `-<hash>` appended. `<hash>` is the first 8 hex digits of
  the SHA-1 of the prompt's UTF-8 text, so a name depends only on the prompt and its call;
- predict also gives a prompt `-<hash>` when the folder's `index.csv` (written by every call, merged
  with earlier ones) says its plain name holds another prompt's masks from an earlier call.

Every file is written to a temporary name beside its target and renamed into place, so a failure
mid-write (disk full, a kill) never leaves a half-written mask. Nothing here imports torch.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import os
import re
import tempfile
import unicodedata
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from .segmenter import check_prompt

MAX_SLUG_CHARS = 80
INDEX_FILE = "index.csv"
# what each mask holds and what wrote it: the model's fingerprint, the threshold and the backend
INDEX_COLUMNS = ("image", "prompt", "mask", "overlay", "model", "threshold", "backend")
SHARD_GLOB = ".index-shard-*.csv"  # one per process of a run, folded into index.csv at its end
MODEL_FILE_SUFFIXES = (".safetensors", ".bin", ".onnx", ".npz", ".json")  # what a model folder's outputs depend on


def prompt_hash(prompt: str) -> str:
    return hashlib.sha1(prompt.encode("utf-8")).hexdigest()[:8]


def prompt_slug(prompt: str) -> str:
    """File-name form of one prompt: "segment joint/tape" -> "segment-joint-tape" (see the module doc)."""
    text = unicodedata.normalize("NFKC", check_prompt(prompt)).casefold()
    slug = re.sub(r"[\W_]+", "-", text).strip("-")[:MAX_SLUG_CHARS].strip("-")
    return slug or f"prompt-{prompt_hash(prompt)}"


def prompt_slugs(prompts: Sequence[str]) -> dict[str, str]:
    """{prompt: slug} for the distinct prompts of one call, no two slugs alike."""
    distinct = list(dict.fromkeys(prompts))
    slugs = {prompt: prompt_slug(prompt) for prompt in distinct}
    shared = {slug for slug, count in Counter(slugs.values()).items() if count > 1}
    return {p: f"{s}-{prompt_hash(p)}" if s in shared else s for p, s in slugs.items()}


def mask_file_name(image_name: str | Path, prompt: str, slugs: dict[str, str] | None = None) -> str:
    """`<image stem>__<prompt slug>.png`; pass the call's `prompt_slugs(...)` when it has several prompts."""
    slug = slugs[prompt] if slugs is not None else prompt_slug(prompt)
    return f"{Path(image_name).stem}__{slug}.png"


@contextlib.contextmanager
def atomic_path(target: Path) -> Iterator[Path]:
    """A temporary path beside `target`, renamed onto it when the block succeeds, removed when it fails."""
    target = Path(target)
    handle, temporary = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=target.suffix)
    os.close(handle)
    try:
        yield Path(temporary)
        os.chmod(temporary, 0o666 & ~current_umask())
        os.replace(temporary, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise


def current_umask() -> int:
    """The process's umask (the permission bits a plain file write would leave out)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def save_image(image: Image.Image, target: Path, **save_options) -> Path:
    """`image.save(target)`, atomically; the format follows the target's suffix."""
    with atomic_path(target) as temporary:
        image.save(temporary, format=Image.registered_extensions()[Path(target).suffix.lower()], **save_options)
    return Path(target)


def save_mask(mask: np.ndarray, target: Path) -> Path:
    """A {0,255} uint8 mask as a single-channel PNG, atomically."""
    return save_image(Image.fromarray(np.asarray(mask, dtype=np.uint8), mode="L"), target)


def read_index(folder: Path) -> dict[str, dict[str, str]]:
    """{mask file: row} of the folder's index (empty when it has none)."""
    path = Path(folder) / INDEX_FILE
    if not path.is_file():
        return {}
    with open(path, newline="", encoding="utf-8") as handle:
        return {row["mask"]: row for row in csv.DictReader(handle)}


def update_index(folder: Path, rows: Sequence[dict[str, str]]) -> Path:
    """Merge this call's rows into `<folder>/index.csv` (image, prompt, mask, overlay, and the model
    fingerprint, threshold and backend that wrote the mask; file names relative to the folder), so it
    always says what each mask file in the folder holds."""
    merged = read_index(folder) | {row["mask"]: row for row in rows}
    target = Path(folder) / INDEX_FILE
    with atomic_path(target) as temporary, open(temporary, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=INDEX_COLUMNS, restval="",  # an older index lacks the provenance
                                extrasaction="ignore")
        writer.writeheader()
        writer.writerows(merged[name] for name in sorted(merged))
    return target


def shard_path(folder: Path, rank: int) -> Path:
    return Path(folder) / SHARD_GLOB.replace("*", str(rank))


class IndexShard:
    """One process's journal of the rows it has written: appended and flushed to disk after each batch,
    so a killed run leaves a record of every mask it finished (a mask is renamed into place before its row)."""

    def __init__(self, folder: Path, rank: int):
        self.path = shard_path(folder, rank)
        fresh = not self.path.exists()
        self._handle = open(self.path, "a", newline="", encoding="utf-8")
        self._writer = csv.DictWriter(self._handle, fieldnames=INDEX_COLUMNS)
        if fresh:
            self._writer.writeheader()

    def append(self, rows: Sequence[dict[str, str]]) -> None:
        self._writer.writerows(rows)
        self._handle.flush()
        os.fsync(self._handle.fileno())

    def close(self) -> None:
        self._handle.close()


def _complete_rows(path: Path) -> list[dict[str, str]]:
    """A shard's rows, without a last line that a kill cut short."""
    with open(path, newline="", encoding="utf-8") as handle:
        return [row for row in csv.DictReader(handle) if all(row.get(c) is not None for c in INDEX_COLUMNS)]


def merge_index_shards(folder: Path) -> int:
    """Fold every shard in `folder` into index.csv, then remove the shards; returns the rows folded.

    Idempotent: index.csv is replaced atomically before any shard goes, so a crash in between loses
    nothing and the next call (the next run of the command) completes the merge."""
    shards = sorted(Path(folder).glob(SHARD_GLOB))
    rows = [row for shard in shards for row in _complete_rows(shard)]
    if rows:
        update_index(folder, rows)
    for shard in shards:
        shard.unlink(missing_ok=True)
    return len(rows)


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


def avoid_taken_names(slugs: dict[str, str], taken: dict[str, dict[str, str]]) -> dict[str, str]:
    """`slugs` with `-<hash>` added to a prompt whose file names the folder's index gives to another prompt."""
    # the slug follows the last `__`: a stem may contain `__` (IMG__001.jpg), a slug never does
    taken_slugs = {name.removesuffix(".png").rsplit("__", 1)[-1]: row["prompt"] for name, row in taken.items()}
    return {p: f"{s}-{prompt_hash(p)}" if taken_slugs.get(s, p) != p else s for p, s in slugs.items()}


def claim_stem(path: Path, seen: dict[str, str], shown: str | None = None) -> str | None:
    """Two images with one file stem would get the same mask names: why `path` is refused, or None after
    recording it in `seen` (`shown`: how a later clash names it, default its path)."""
    if path.stem in seen:
        return f"same file name stem as {seen[path.stem]}; rename one of them"
    seen[path.stem] = shown or str(path)
    return None


def check_writable_folder(folder: Path, what: str = "--output") -> None:
    """Fail before any work when `folder` cannot become a writable folder (it is not created here)."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise NotADirectoryError(f"{what} {folder} is a file, not a folder: give a folder path")
    existing = folder
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise NotADirectoryError(f"{what} {folder}: {existing} is a file, not a folder")
    try:  # a real probe: permission bits do not tell root about read-only mounts
        tempfile.TemporaryFile(dir=existing).close()
    except OSError as error:
        raise PermissionError(f"{what} {folder}: cannot write in {existing} ({error.strerror}); choose another folder") from None
