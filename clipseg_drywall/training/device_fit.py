"""Training options that depend on the device, worked out at start: data-loader workers, pinned memory,
persistent workers and bf16.

One recipe serves a 2-core laptop and a GPU server. On cuda the GPU waits for batches unless the
decoding, augmentation and the processor run in workers beside it (the issue's H200: 140 samples/s
with no worker against 802 with 12), the host-to-device copy is fast only from pinned memory, and
bf16 doubles the matmul rate where the GPU has it. On a CPU the model already uses every core, so a
worker takes one from it (measured on 2 cores: 37.7 against 44.4 samples/s, docs/benchmarks.md):
there nothing changes. A flag given on the command line or in the recipe always wins.
"""

from __future__ import annotations

from collections.abc import Sequence

DEVICE_OPTIONS = ("dataloader_num_workers", "dataloader_pin_memory", "dataloader_persistent_workers", "bf16")
MAX_WORKERS = 16  # past this the workers only hold more batches in memory; the GPU is fed well before


def device_defaults(device_type: str, cores: int, bf16_supported: bool) -> dict[str, int | bool]:
    """The options for a process on `device_type` ("cuda", "mps", "cpu") with `cores` cores of its own."""
    if device_type == "cuda":
        workers = min(max(cores - 1, 0), MAX_WORKERS)  # one core stays with the process that drives the GPU
        return {"dataloader_num_workers": workers, "dataloader_pin_memory": True,
                "dataloader_persistent_workers": workers > 0, "bf16": bf16_supported}
    return {"dataloader_num_workers": 0, "dataloader_pin_memory": False, "dataloader_persistent_workers": False,
            "bf16": False}


def given_options(argv: Sequence[str]) -> set[str]:
    """The device options `argv` sets itself (`--bf16`, `--no_dataloader_pin_memory`, `--dataloader-num-workers=2`);
    `--fp16` counts as setting bf16, since the two exclude each other."""
    given = set()
    for token in argv:
        if token.startswith("--"):
            name = token[2:].split("=", 1)[0].replace("-", "_")
            given.add(name.removeprefix("no_"))
    if "fp16" in given:
        given.add("bf16")
    return given & set(DEVICE_OPTIONS)


def as_flags(options: dict[str, int | bool]) -> list[str]:
    return [token for key, value in options.items() for token in (f"--{key}", str(value).lower())]


def describe(device_type: str, cores: int, chosen: dict[str, int | bool], given: dict[str, object]) -> str:
    """The log line: what was worked out for this device, and what the flags set instead."""
    text = f"fitted to {device_type} ({cores} cores for this process): " + ", ".join(
        f"{key}={value}" for key, value in chosen.items())
    if given:
        text += "; as given: " + ", ".join(f"{key}={value}" for key, value in given.items())
    return text
