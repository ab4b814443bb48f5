"""The processes of one job under `accelerate launch` (or torchrun): which inputs are this process's,
the cores and device it gets, and the barrier.

One process (a plain `python -m ...`) imports nothing here beyond the standard library, so the slim
ONNX install runs `predict` as before; with `WORLD_SIZE` > 1 the state comes from accelerate's
`PartialState`, the object training already uses.

Photos are dealt out by a hash of their file stem, not in contiguous blocks: the walk over folders and
`--input_list` stays lazy (no process holds the whole list), and two photos with the same stem (whose
mask names would clash) always meet in the same process, which refuses the later one as one process
does. Each photo is done by exactly one process; none is padded in or done twice.
"""

from __future__ import annotations

import functools
import os
import zlib
from pathlib import Path


@functools.cache
def _state():
    import torch  # only launched jobs need these (accelerate imports torch)
    from accelerate import PartialState

    # without CUDA, `accelerate launch --multi_gpu` processes share the CPU over gloo (as training does)
    return PartialState(cpu=not torch.cuda.is_available())


def world() -> tuple[int, int]:
    """(this process's index, number of processes); (0, 1) outside a launched job."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return 0, 1
    state = _state()
    return state.process_index, state.num_processes


def is_main_process() -> bool:
    return world()[0] == 0


def wait_for_everyone() -> None:
    """A barrier across the processes (nothing to wait for in one process)."""
    if world()[1] > 1:
        _state().wait_for_everyone()


def launched_device() -> str | None:
    """The device accelerate gives this process (`cuda:N`, `mps`, `cpu`) in a launched job, else None."""
    return str(_state().device) if world()[1] > 1 else None


def contiguous_share(n_items: int) -> list[int]:
    """This process's block of `range(n_items)` (accelerate's `split_between_processes`: blocks in process
    order, never padded), for work whose results are gathered back in order."""
    if world()[1] == 1:
        return list(range(n_items))
    with _state().split_between_processes(list(range(n_items))) as share:
        return list(share)


def gather_objects(item: object) -> list:
    """`item` of every process, in process order, on every process."""
    if world()[1] == 1:
        return [item]
    from accelerate.utils import gather_object

    return gather_object([item])


def owns(path: Path, rank: int, size: int) -> bool:
    """Whether the process `rank` of `size` does `path`: by a stable hash of its stem (see the module doc)."""
    return size == 1 or zlib.crc32(Path(path).stem.encode("utf-8")) % size == rank


def cpu_threads_per_process() -> int:
    """The cores this process may use: those it is allowed to run on, shared by the processes of this machine."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cores // int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
