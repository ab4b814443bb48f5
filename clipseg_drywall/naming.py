"""Mask file names, for every command that writes masks; nothing here imports torch.

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
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from .prompts import check_prompt

MAX_SLUG_CHARS = 80


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
