"""The training curves PNG: train/eval loss and per-task eval IoU against the optimizer step."""

from __future__ import annotations

from pathlib import Path

from .prompts import TASKS


def plot_training_curves(log_history: list[dict], path: str | Path) -> Path | None:
    """Write loss and IoU curves from a Trainer `log_history`; None when nothing was logged."""
    import matplotlib

    matplotlib.use("Agg")  # no display on training machines
    import matplotlib.pyplot as plt

    def series(key: str) -> tuple[list[int], list[float]]:
        points = [(e["step"], e[key]) for e in log_history if key in e and "step" in e]
        return [s for s, _ in points], [v for _, v in points]

    curves = {k: series(k) for k in ("loss", "eval_loss", *(f"eval_iou_{t}" for t in TASKS), "eval_mean_iou")}
    if not any(steps for steps, _ in curves.values()):
        return None
    figure, (loss_axis, iou_axis) = plt.subplots(1, 2, figsize=(11, 4))
    for key in ("loss", "eval_loss"):
        if curves[key][0]:
            loss_axis.plot(*curves[key], label=key, marker="." if key.startswith("eval") else None)
    loss_axis.set(xlabel="step", ylabel="loss", title="loss")
    loss_axis.legend()
    for key in (*(f"eval_iou_{t}" for t in TASKS), "eval_mean_iou"):
        if curves[key][0]:
            iou_axis.plot(*curves[key], label=key.removeprefix("eval_"), marker=".")
    iou_axis.set(xlabel="step", ylabel="IoU (native resolution)", title="validation IoU", ylim=(0, 1))
    if any(curves[f"eval_iou_{t}"][0] for t in TASKS):
        iou_axis.legend()
    figure.tight_layout()
    path = Path(path)
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path
