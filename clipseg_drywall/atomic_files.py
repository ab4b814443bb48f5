"""Atomic file writes: every file goes to a temporary name beside its target and is renamed into
place, so a failure mid-write (disk full, a kill) never leaves a half-written file; and the check that
an output folder can be written, made before any work. Nothing here imports torch.
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from PIL import Image

from .mask_png import encode_mask_png


@contextlib.contextmanager
def atomic_path(target: Path) -> Iterator[Path]:
    """A temporary path beside `target`, renamed onto it when the block succeeds, removed when it fails."""
    with _temporary_beside(target) as (handle, temporary):
        os.close(handle)
        yield Path(temporary)
        os.chmod(temporary, 0o666 & ~current_umask())


@contextlib.contextmanager
def _temporary_beside(target: Path) -> Iterator[tuple[int, str]]:
    """(open descriptor, name) of a new temporary file beside `target`, renamed onto it when the block succeeds,
    removed when it fails."""
    target = Path(target)
    handle, temporary = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=target.suffix)
    try:
        yield handle, temporary
        os.replace(temporary, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise


@functools.cache
def current_umask() -> int:
    """The process's umask (the permission bits a plain file write would leave out), read once: reading it means
    setting it for a moment, and a file another thread created in that moment would get the wrong bits."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def save_image(image: Image.Image, target: Path, **save_options) -> Path:
    """`image.save(target)`, atomically; the format follows the target's suffix."""
    with atomic_path(target) as temporary:
        image.save(temporary, format=Image.registered_extensions()[Path(target).suffix.lower()], **save_options)
    return Path(target)


def save_bytes(data: bytes, target: Path) -> Path:
    """`target.write_bytes(data)`, atomically; through the temporary file's own descriptor (half the time of
    opening it again by name: this writes every mask)."""
    with _temporary_beside(target) as (handle, _), open(handle, "wb") as file:
        file.write(data)
        os.fchmod(handle, 0o666 & ~current_umask())
    return Path(target)


def save_mask(mask: np.ndarray, target: Path) -> Path:
    """A {0,255} uint8 mask as a single-channel PNG (`mask_png`), atomically."""
    return save_bytes(encode_mask_png(np.asarray(mask, dtype=np.uint8)), target)


# `atomic_path`'s temporary names: ".<target name>.<8 random characters><target suffix>" (tempfile.mkstemp)
_TEMPORARY = re.compile(r"\.(?P<target>.+)\.[a-z0-9_]{8}(?P<suffix>\.[^.]*)?")


def remove_temporaries(folder: Path) -> int:
    """Remove what writes a kill interrupted left in `folder` (temporary names of `atomic_path` only); call it
    before any process of a run writes there. Returns how many."""
    removed = 0
    for entry in os.scandir(folder):
        match = _TEMPORARY.fullmatch(entry.name)
        if match and entry.is_file() and match["target"].endswith(match["suffix"] or ""):
            os.unlink(entry.path)
            removed += 1
    return removed


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
