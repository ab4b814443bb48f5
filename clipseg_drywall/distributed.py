"""The processes of one job under `accelerate launch` (or torchrun): this process's index, the cores and
device it gets, gathering, and the barrier.

One process (a plain `python -m ...`) imports nothing here beyond the standard library, so the slim
ONNX install runs `predict` as before; with `WORLD_SIZE` > 1 the state comes from accelerate's
`PartialState`, the object training already uses.

Which inputs are whose is the batch pipeline's one dealing rule (`pipeline.deal`: batch k of the input
order to process k % size), for predict, the report and evaluate alike.
"""

from __future__ import annotations

import functools
import os


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


def gather_objects(item: object) -> list:
    """`item` of every process, in process order, on every process."""
    if world()[1] == 1:
        return [item]
    from accelerate.utils import gather_object

    return gather_object([item])


def cpu_threads_per_process() -> int:
    """The cores this process may use: those it is allowed to run on, shared by the processes of this machine."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cores // int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
