"""What the benchmarks share: where ../shared is, the dataset built from it, a step clock."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

from transformers import TrainerCallback

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"


def shared_dataset_path(path: Path) -> str:
    """`path` holding the DatasetDict built from ../shared/data (built there on first use, ~20 s)."""
    if not (path / "dataset_dict.json").is_file():
        if not (SHARED / "data").is_dir():
            raise SystemExit(f"no dataset given and no real data in {SHARED / 'data'}: pass --dataset_path")
        from data_builders.drywall_qa import build_dataset

        build_dataset(cracks=[SHARED / "data" / "cracks"], joints=[SHARED / "data" / "drywall-join-detect"],
                      seed=0).save_to_disk(str(path))
    return str(path)


WORK_MARK = ".benchmark-work"  # in a folder this module emptied and may empty again


def fresh_train_subset(dataset_path: str | None, n_rows: int, work: Path):
    """The first `n_rows` train rows (seeded shuffle) of `dataset_path` (default: the build of ../shared),
    saved as `work/data` in an emptied `work` folder; returns them. A `work` folder that holds anything but
    an earlier benchmark's files is refused, never emptied."""
    import datasets

    from clipseg_drywall.data import check_saved_dataset

    work = Path(work)
    try:
        if dataset_path is not None:
            check_saved_dataset(dataset_path)
        if work.exists() and any(work.iterdir()) and not (work / WORK_MARK).is_file():
            raise FileExistsError(f"--output_dir {work} holds files no benchmark wrote; a benchmark empties its "
                                  "folder, so choose a new or empty one")
    except OSError as error:
        raise SystemExit(f"error: {error}") from None
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    (work / WORK_MARK).touch()
    train = datasets.load_from_disk(dataset_path or shared_dataset_path(REPO / "runs" / "dataset"))["train"]
    rows = train.shuffle(seed=0).select(range(min(n_rows, len(train))))
    datasets.DatasetDict(train=rows).save_to_disk(str(work / "data"))
    return rows


class StepClock(TrainerCallback):
    """Wall-clock time (`time.perf_counter`) at the end of every optimizer step."""

    def __init__(self):
        self.times: list[float] = []

    def on_step_end(self, args, state, control, **kwargs):
        self.times.append(time.perf_counter())


def timed_training(trainer, warmup: int) -> tuple[float, float]:
    """Train, then (seconds per step, seconds per step spent waiting for the next batch) over the steps
    after the first `warmup`; the wait is timed around `Trainer.get_batch_samples`, what the loop calls."""
    clock = StepClock()
    trainer.add_callback(clock)
    waits: list[float] = []
    fetch = trainer.get_batch_samples

    def timed_fetch(*arguments, **keywords):
        start = time.perf_counter()
        result = fetch(*arguments, **keywords)
        waits.append(time.perf_counter() - start)
        return result

    trainer.get_batch_samples = timed_fetch
    trainer.train()
    timed = len(clock.times) - warmup
    step_seconds = (clock.times[-1] - clock.times[warmup - 1]) / timed
    return step_seconds, sum(waits[warmup:warmup + timed]) / timed
