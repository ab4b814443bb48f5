"""The one batch pipeline: predict, the report and evaluate say only what to do with each photo's masks (or,
for evaluate, its logits: `LogitsHead`); everything else is here.

Stages, each bounded so that memory stays flat however many photos there are:

1. **walk**: the job's inputs, lazily, in one fixed order (`Work` items; predict's folders are listed one at
   a time). Every process walks the whole order (cheap: names only) and keeps its own batches.
2. **deal** (`deal`): the one rule below.
3. **decode + preprocess** (`_Decode`): the images of a batch are read (`images.load_image`, EXIF applied) and
   turned into the model's pixels by the backend's own preprocessing, in `torch.utils.data.DataLoader`
   workers. The loader is fed by an iterable sampler that hands each worker a whole batch of the dealt
   order (a map-style dataset keyed by the batch), rather than an `IterableDataset` in which every worker
   would walk the inputs and re-check what is done: the walk, the resume checks and the failures of the
   walk stay in one place, and the DataLoader keeps the batches in order with at most
   `num_workers * prefetch` of them decoded ahead. With 0 workers (the default on a CPU device, the only
   choice without torch) the same function runs in this process, one batch ahead, as a task for the write
   threads that the main thread takes back and does itself when no write thread has started it
   (`_decoded_ahead`: whoever is free decodes).
   An unreadable photo is caught where it is read and reported with the reason `load_image` gives.
4. **model** on the device, one batch at a time (`BatchedSegmenter.launch_masks`): pixels copied with
   `non_blocking` from pinned memory on cuda;
5. **native-size masks on the device**: the logits are upsampled to each photo's size, thresholded and
   turned into uint8 {0, 255} there; only those bytes come back (on cuda one non-blocking copy per batch
   into pinned memory, waited for one batch later, so the GPU already runs the next batch while the CPU
   collects this one; on a CPU device each photo's masks are made in the write thread that writes them,
   beside the model's next batch);
6. **encode + write** in a small thread pool (PNG encoding and zlib release the GIL): the job's `finish`
   for each photo, atomic writes;
7. **journal**: results come back to the job per batch, **in input order**, after every file of the batch
   is in place; the job appends them to its journal (one `fsync` per batch).

**The dealing rule (one, for every job).** The input order is cut into fixed batches of `batch_size`
(batch k holds items k*B .. k*B+B-1); batch k goes to process k % world_size. The model sees, for each
batch, exactly its readable photos (those not refused before decoding: a missing input, a clashing file
stem), also the ones an earlier run already finished, whenever any photo of the batch still has work.
So a photo always meets the same batch-mates, with the same kernels and the same numerics, however
many processes and workers share the work and whether the run was resumed: masks are byte-identical
across any split. (Hashing names to processes, the old predict rule, keeps the walk lazy too but makes
the batch a photo lands in depend on the number of processes; contiguous blocks need the length up
front.) Two photos with one file stem are found by every process (each walks the whole order), and the
later one is refused by the process that owns it, as one process refuses it.

**The resume format (one).** A journal: JSON lines, one per finished input, one file per process
(`journal_file`), appended after the input's files are renamed into place and flushed with `fsync` once
per batch. A line cut short by a kill is dropped when it is read (the file is truncated to its last whole
line), so a rerun redoes exactly the inputs without a whole line. JSON lines, because an entry holds
nested data (the report: numbers per prompt; predict: its index rows), one file per process because
processes never share a file handle, and per input because that is what a job finishes. predict folds
its journals into index.csv at the end (and at the start, after a kill); the report reads them as its
findings. Ctrl-C or SIGTERM stops feeding, lets writes in flight finish (each is atomic), journals only
whole batches and leaves the journal as a kill would, only tidier.

Defaults fit the device (`PipelineOptions.resolved`): on cuda, decode workers from the cores this process
has (`distributed.cpu_threads_per_process`), pinned memory and non-blocking copies; on a CPU device the
model's threads have the cores, so there are no decode processes, and two write threads make the native-size
masks, write them and decode the next batch while the model runs. The ONNX backend has no decode processes
unless told otherwise (it runs where torch may be missing). An explicit option wins.
"""

from __future__ import annotations

import collections
import contextlib
import itertools
import json
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from .images import ImageLoadError, load_image

# ---- dealing ----


def deal(items: Iterable, batch_size: int, rank: int, world_size: int) -> Iterator[tuple[int, list]]:
    """(k, batch k) for the batches of `items` that process `rank` of `world_size` does: fixed batches of the
    input order, batch k to process k % world_size (see the module doc)."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    iterator = iter(items)
    for k in itertools.count():
        batch = list(itertools.islice(iterator, batch_size))
        if not batch:
            return
        if k % world_size == rank:
            yield k, batch


def batches_of(n_items: int, batch_size: int, rank: int, world_size: int) -> list[int]:
    """The item positions process `rank` does out of `n_items`: `deal` on positions."""
    return [i for _, batch in deal(range(n_items), batch_size, rank, world_size) for i in batch]


def share_size(n_items: int, batch_size: int, rank: int, world_size: int) -> int:
    """How many of `n_items` process `rank` does (`len(batches_of(...))`, without the list)."""
    n_batches = -(-n_items // batch_size)
    return sum(min(batch_size, n_items - k * batch_size) for k in range(rank, n_batches, world_size))


# ---- what flows through ----


@dataclass
class Work:
    """One input of a batch job, as the walk found it."""

    name: str  # the input as found: the journal's key, the name in failures
    path: Path | None  # None: nothing to decode (an input that gave no photo)
    skip: str | None = None  # why it is not segmented, known before decoding (decode errors come later)
    pending: bool = True  # False: an earlier run finished it (segmented only as a batch-mate, not finished)
    data: Any = None  # the job's own (predict: the prompts still to write)


@dataclass
class Done:
    """One input after the model: its masks at its own size, or why it has none."""

    work: Work
    masks: dict[str, np.ndarray] | None = None  # prompt -> uint8 {0, 255} (height, width)
    image: Image.Image | None = None  # the decoded photo, when the job asked for it (overlays)
    size: tuple[int, int] | None = None  # (width, height)
    error: str | None = None  # the skip reason, or why the photo could not be read
    logits: Any = None  # with `LogitsHead`: the image's decoder logits (P, h, w), float32 on the CPU, no masks


@dataclass
class _Prepared:
    """A decoded batch: pixels of its readable photos, their sizes, and the decode errors by position."""

    works: list[Work]
    decoded: list[int] = field(default_factory=list)  # positions in `works` of the readable photos
    sizes: list[tuple[int, int]] = field(default_factory=list)  # (width, height) of each readable photo
    pixels: Any = None  # the backend's pixel array for the readable photos, or None
    images: list | None = None  # PIL images (in-process) or uint8 tensors (from a worker process)
    errors: dict[int, str] = field(default_factory=dict)

    def pin_memory(self) -> _Prepared:  # called by the DataLoader's pin-memory thread
        if hasattr(self.pixels, "pin_memory"):
            self.pixels = self.pixels.pin_memory()
        return self


class _Decode:
    """Stage 3: a batch of `Work` -> `_Prepared` (picklable; runs in a DataLoader worker or in-process)."""

    def __init__(self, preprocess: Callable[[list[Image.Image]], Any], keep_images: bool):
        self.preprocess = preprocess
        self.keep_images = keep_images

    def __getitem__(self, works: list[Work]) -> _Prepared:
        prepared = _Prepared(works)
        if not any(work.pending for work in works):
            return prepared  # finished in an earlier run: not decoded at all
        images = []
        for position, work in enumerate(works):
            if work.skip is not None or work.path is None:
                continue
            try:
                image = load_image(work.path)
            except ImageLoadError as error:
                prepared.errors[position] = str(error).removeprefix(f"{work.path}: ")
                continue
            prepared.decoded.append(position)
            prepared.sizes.append(image.size)
            images.append(image)
        if images:
            prepared.pixels = self.preprocess(images)
        if self.keep_images:
            prepared.images = images if not _in_worker() else [_as_tensor(image) for image in images]
        return prepared


def _in_worker() -> bool:
    if "torch" not in sys.modules:
        return False
    from torch.utils.data import get_worker_info

    return get_worker_info() is not None


def _as_tensor(image: Image.Image):
    """A photo as a uint8 tensor: it crosses from a worker process in shared memory, not pickled bytes."""
    import torch

    return torch.from_numpy(np.asarray(image).copy())


def _as_image(image) -> Image.Image:
    return image if isinstance(image, Image.Image) else Image.fromarray(image.numpy(), mode="RGB")


# ---- options ----


@dataclass(frozen=True)
class PipelineOptions:
    """How the stages run; None: chosen from the device and the cores (`resolved`)."""

    num_workers: int | None = None  # decode + preprocess processes (0: in the main process)
    write_threads: int | None = None  # PNG encode + write threads
    pin_memory: bool | None = None  # pinned host memory and non-blocking copies (cuda)
    prefetch: int = 2  # batches decoded ahead per worker

    def resolved(self, device: str | None, cores: int, backend: str = "torch",
                 heavy_writes: bool = False) -> PipelineOptions:
        """Defaults that fit `device` with `cores` cores for this process (an option given wins). Decode workers
        are DataLoader processes, so by default only the torch backend gets them: the ONNX one runs where
        torch may not be installed. `heavy_writes`: the job's `finish` takes more CPU than decoding does (the
        report: overlays, thumbnails and measurements, 15-33 ms a photo against 3.3 to decode one)."""
        cuda = str(device or "cpu").startswith("cuda")
        # on a CPU device two write threads: the report's writes then go 13-15% faster with either model,
        # predict's the same (measured on 2 cores, docs/scaling.md). On cuda a quarter of the cores write (a
        # predict photo is 0.6 ms of PNG and files), half of them for heavy writes: the report's scale 1.9x
        # from one thread to two (measured), and a quarter of 16 cores could not write 300 photos/s
        write_threads = self.write_threads if self.write_threads is not None else (
            max(2, cores // (2 if heavy_writes else 4)) if cuda else min(2, cores))
        # on a CPU device the model's threads have the cores: a decode worker beside them only competes for
        # them (measured on 2 idle cores: 10% slower with the full-size model, 26% with a tiny one)
        num_workers = self.num_workers if self.num_workers is not None else (
            max(1, min(12, cores - write_threads - 1)) if cuda else 0)
        if self.num_workers is None and backend != "torch":
            num_workers = 0
        pin = self.pin_memory if self.pin_memory is not None else cuda
        return replace(self, num_workers=num_workers, write_threads=max(1, write_threads), pin_memory=pin)


def describe(options: PipelineOptions) -> str:
    return (f"{options.num_workers} decode worker(s), {options.write_threads} write thread(s)"
            + (", pinned memory" if options.pin_memory else ""))


def check_options(num_workers: int | None, write_threads: int | None) -> None:
    if num_workers is not None and num_workers < 0:
        raise ValueError(f"--num_workers must be 0 or more, got {num_workers}")
    if write_threads is not None and write_threads < 1:
        raise ValueError(f"--write_threads must be at least 1, got {write_threads}")


# ---- the model stage ----


class MaskHead:
    """The model stage of predict and the report: native-size uint8 masks made on the device
    (`BatchedSegmenter.launch_masks`), handed on as `Done.masks`."""

    def __init__(self, segmenter, prompts: list[str], threshold: float):
        self.segmenter, self.prompts, self.threshold = segmenter, prompts, threshold

    def launch(self, pixels, sizes: list[tuple[int, int]]):
        return self.segmenter.launch_masks(pixels, sizes, self.prompts, self.threshold)

    def collect(self, handle) -> Sequence:
        return self.segmenter.collect_masks(handle)

    def fields(self, image_output) -> dict:  # in a write thread
        return {"masks": dict(zip(self.prompts, image_output))}


class LogitsHead(MaskHead):
    """The model stage of evaluate: each image's decoder logits (P, h, w) as float32 on the CPU, handed on as
    `Done.logits` (evaluate scores native-size probabilities at many thresholds, not one mask)."""

    def launch(self, pixels, sizes: list[tuple[int, int]]):
        import torch

        with torch.inference_mode():  # onnx: a numpy array
            return torch.as_tensor(self.segmenter._logits_from_pixels(pixels, self.prompts)).float().cpu()

    def collect(self, handle) -> Sequence:
        return handle

    def fields(self, image_output) -> dict:
        return {"logits": image_output}


# ---- the run ----


@dataclass
class BatchDone:
    """One dealt batch, finished: its size and (work, the job's result) for every pending input, in order."""

    size: int
    results: list[tuple[Work, Any]]


def run(segmenter, batches: Iterable[list[Work]], prompts: Sequence[str], finish: Callable[[Done], Any], *,
        threshold: float | None = None, keep_images: bool = False,
        options: PipelineOptions = PipelineOptions(), head: type[MaskHead] = MaskHead) -> Iterator[BatchDone]:
    """Stages 3-7 over this process's dealt `batches` (the job walks and deals, stages 1-2): each batch is
    decoded, segmented under every prompt and each pending input handed to `finish` (in a write thread);
    yields every batch, in order, once all of its `finish` calls have returned.

    `options` should be resolved (`PipelineOptions.resolved`); `finish` gets a `Done` with the masks (or the
    logits, with `head=LogitsHead`), or with `error` for an input that was skipped or could not be read."""
    prompts = list(prompts)
    threshold = segmenter.threshold if threshold is None else float(threshold)
    segmenter.prompt_embeddings(prompts)  # reject empty prompts before any image work
    options = options if options.num_workers is not None else options.resolved(None, 1)
    decode = _Decode(segmenter.preprocessor(), keep_images)
    model = head(segmenter, prompts, threshold)
    in_writing: collections.deque[tuple[int, list[tuple[Work, Future]]]] = collections.deque()
    limit = 2 + options.write_threads  # batches written at once: bounded memory
    with _terminate_as_interrupt(), ThreadPoolExecutor(options.write_threads, "write") as pool, \
            _decoded(decode, batches, options, pool) as prepared_batches:
        try:
            launched = None  # (prepared, handle): the model's work on the device, collected one batch later
            for prepared in itertools.chain(prepared_batches, [None]):
                handle = None
                if prepared is not None and prepared.pixels is not None:
                    try:
                        handle = model.launch(prepared.pixels, prepared.sizes)
                    except BaseException:  # what the model finished before the failure is still written
                        if launched is not None:
                            in_writing.append(_submit(pool, model, *launched, finish))
                        while in_writing:
                            yield _collect(*in_writing.popleft())
                        raise
                if launched is not None:
                    in_writing.append(_submit(pool, model, *launched, finish))
                    while len(in_writing) > limit or (in_writing and _finished(in_writing[0])):
                        yield _collect(*in_writing.popleft())
                launched = (prepared, handle) if prepared is not None else None
            while in_writing:
                yield _collect(*in_writing.popleft())
        except BaseException:
            pool.shutdown(wait=True, cancel_futures=True)  # writes in flight finish (atomic), none journaled
            raise


def _submit(pool: ThreadPoolExecutor, model: MaskHead, prepared: _Prepared, handle,
            finish: Callable[[Done], Any]) -> tuple[int, list[tuple[Work, Future]]]:
    outputs = model.collect(handle) if handle is not None else []
    by_position = dict(zip(prepared.decoded, range(len(prepared.decoded))))
    futures = []
    for position, work in enumerate(prepared.works):
        if not work.pending:
            continue
        if (index := by_position.get(position)) is not None:
            image = prepared.images[index] if prepared.images is not None else None
            future = pool.submit(_finish, finish, model, work, outputs, index, image, prepared.sizes[index])
        else:
            future = pool.submit(finish, Done(work, error=work.skip or prepared.errors.get(position) or "not read"))
        futures.append((work, future))
    return len(prepared.works), futures


def _finish(finish: Callable[[Done], Any], model: MaskHead, work: Work, outputs: Sequence, index: int, image,
            size: tuple[int, int]):
    """In a write thread: the image's masks (made here when the backend defers them), then the job's `finish`."""
    image = _as_image(image) if image is not None else None
    return finish(Done(work, image=image, size=size, **model.fields(outputs[index])))


def _finished(batch: tuple[int, list[tuple[Work, Future]]]) -> bool:
    return all(future.done() for _, future in batch[1])


def _collect(size: int, futures: list[tuple[Work, Future]]) -> BatchDone:
    return BatchDone(size, [(work, future.result()) for work, future in futures])


@contextlib.contextmanager
def _decoded(decode: _Decode, batches: Iterable[list[Work]], options: PipelineOptions,
             pool: ThreadPoolExecutor) -> Iterator[Iterator[_Prepared]]:
    """Stage 3: the prepared batches, in order; in DataLoader workers when `options.num_workers` > 0, else in the
    write threads (`_decoded_ahead`)."""
    if not options.num_workers:
        yield _decoded_ahead(decode, batches, bool(options.pin_memory), pool)
        return
    try:
        from torch.utils.data import DataLoader
    except ImportError:
        raise RuntimeError("decode workers (--num_workers > 0) need torch; use --num_workers 0") from None
    loader = DataLoader(decode, batch_size=None, sampler=_Batches(batches), num_workers=options.num_workers,
                        collate_fn=_identity, pin_memory=bool(options.pin_memory), prefetch_factor=options.prefetch,
                        persistent_workers=False)
    iterator = iter(loader)
    try:
        yield iterator
    finally:
        shutdown = getattr(iterator, "_shutdown_workers", None)
        if shutdown is not None:
            shutdown()


def _decoded_ahead(decode: _Decode, batches: Iterable[list[Work]], pin_memory: bool,
                   pool: ThreadPoolExecutor) -> Iterator[_Prepared]:
    """The batches decoded one ahead in `pool` (the write threads), or in the main thread when the pool has not
    started on the one wanted: whichever is free decodes. Decoding and PNG encoding release the GIL, so with a
    light job (predict) a write thread decodes batch k+1 while the model runs on batch k and the main thread
    only feeds the model (on 2 CPU cores with the tiny model, 10% less wall time than decoding between model
    calls); with a heavy one (the report's overlays) the write threads are busy and the main thread decodes,
    as it would wait for them anyway. The walk stays in the main thread. (A task per photo, so that the main
    thread could take over part of a batch, measured 2-5% slower than a task per batch.)"""
    def prepare(batch: list[Work]) -> _Prepared:
        prepared = decode[batch]
        return prepared.pin_memory() if pin_memory else prepared

    queued: tuple[list[Work], Future] | None = None
    try:
        for batch in itertools.chain(batches, [None]):
            following = (batch, pool.submit(prepare, batch)) if batch is not None else None
            if queued is not None:
                yield prepare(queued[0]) if queued[1].cancel() else queued[1].result()
            queued = following
    finally:
        if queued is not None:
            queued[1].cancel()


class _Batches:
    """The dealt batches as the DataLoader's sampler: pulled lazily, `num_workers * prefetch` ahead at most."""

    def __init__(self, batches: Iterable[list[Work]]):
        self.batches = batches

    def __iter__(self):
        return iter(self.batches)


def _identity(item):
    return item


@contextlib.contextmanager
def _terminate_as_interrupt() -> Iterator[None]:
    """SIGTERM stops the run as Ctrl-C does (writes in flight finish, whole batches journaled)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


# ---- the resume format ----


def journal_file(folder: Path, rank: int, stem: str = "journal") -> Path:
    """Process `rank`'s journal in `folder`: `<stem>.jsonl` for the main process, `<stem>-N.jsonl` for process N."""
    return Path(folder) / (f"{stem}.jsonl" if rank == 0 else f"{stem}-{rank}.jsonl")


def read_journal_files(folder: Path, stem: str = "journal") -> dict[str, dict]:
    """{key: entry} of every process's journal in `folder`, whichever number of processes wrote them."""
    paths = sorted(Path(folder).glob(f"{stem}.jsonl")) + sorted(Path(folder).glob(f"{stem}-*.jsonl"))
    return {key: entry for path in paths for key, entry in Journal(path).read().items()}


class Journal:
    """One process's journal: JSON lines, one per finished input (its `key` field names it), `fsync`ed per
    append call; a last line cut short by a kill is dropped from the file when it is read."""

    def __init__(self, path: Path, key: str = "photo"):
        self.path = Path(path)
        self.key = key

    def read(self) -> dict[str, dict]:
        """{key: entry} of the finished inputs, truncating the file after its last whole line."""
        if not self.path.is_file():
            return {}
        entries, good_bytes = {}, 0
        with open(self.path, "rb") as handle:
            for line in handle:
                try:
                    entry = json.loads(line) if line.endswith(b"\n") else None
                except ValueError:
                    entry = None
                if entry is None:  # written in part when the run was killed: that input is done again
                    break
                entries[entry[self.key]] = entry
                good_bytes += len(line)
        if good_bytes != self.path.stat().st_size:
            os.truncate(self.path, good_bytes)
        return entries

    @contextlib.contextmanager
    def appending(self) -> Iterator[Callable[[Sequence[dict]], None]]:
        """append(entries): whole lines, flushed and synced to disk before it returns."""
        with open(self.path, "a", encoding="utf-8") as handle:
            def append(entries: Sequence[dict]) -> None:
                if not entries:
                    return
                handle.write("".join(json.dumps(entry, ensure_ascii=False) + "\n" for entry in entries))
                handle.flush()
                os.fsync(handle.fileno())
            yield append
