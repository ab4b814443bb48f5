"""The model card: `model_card.md` (Jinja) rendered by huggingface_hub into `<model dir>/README.md`.

Everything on the card is read from the model directory, so the card can be re-rendered after
training, after evaluation and before publishing without carrying state around:
- `config.json`: the decision threshold;
- `evaluation/metrics.json` (written by `evaluate.py`): metrics, footprint, the figure;
- `train_results.json`, `trainer_state.json` (Trainer) and, when present, `training_args.json`
  (`TrainingArguments.to_dict()`): hyperparameters and training time.
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

from huggingface_hub import EvalResult, ModelCard, ModelCardData
from transformers import CLIPSegConfig

from .modeling import threshold_of
from .prompts import CANONICAL_PROMPTS, PROMPTS

DEFAULT_REPO_ID = "org/clipseg-drywall"
DEFAULT_BASE_MODEL = "CIDAS/clipseg-rd64-refined"
DEFAULT_DATASET_ID = "org/drywall-qa"
CARD_FILE = "README.md"
TEMPLATE_FILE = "model_card.md"
METRICS_PATH = Path("evaluation") / "metrics.json"
HYPERPARAMETERS = (
    "model_name_or_path", "config_name", "image_size", "encoder_learning_rate", "decoder_learning_rate",
    "freeze_encoder", "per_device_train_batch_size", "gradient_accumulation_steps", "num_processes", "max_steps",
    "num_train_epochs", "lr_scheduler_type", "warmup_ratio", "warmup_steps", "weight_decay", "dice_weight",
    "pos_weight", "balance_tasks", "resample_prompts", "augment", "negative_prompt_ratio", "seed", "bf16", "fp16",
)


def template_path() -> Path:
    """The card template: the copy of the repo's `model_card.md` that setup.py ships in the package
    (`clipseg_drywall/templates/`), or, in a source checkout (editable install), that file itself."""
    shipped = Path(str(resources.files("clipseg_drywall") / "templates" / TEMPLATE_FILE))
    if shipped.is_file():
        return shipped
    in_checkout = Path(__file__).resolve().parents[1] / TEMPLATE_FILE
    if in_checkout.is_file():
        return in_checkout
    raise FileNotFoundError(f"{TEMPLATE_FILE} is neither in the package ({shipped}) nor in a source checkout "
                            f"({in_checkout}); reinstall the package")


def _read_json(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.is_file() else None


def training_summary(model_dir: Path) -> dict[str, object]:
    """Hyperparameters, steps, time and hardware, from what the Trainer saved beside the weights."""
    summary: dict[str, object] = {}
    arguments = _read_json(model_dir / "training_args.json") or {}
    summary.update({k: arguments[k] for k in HYPERPARAMETERS if arguments.get(k) not in (None, "", [])})
    state = _read_json(model_dir / "trainer_state.json") or {}
    if "global_step" in state:
        summary["optimizer steps"] = state["global_step"]
    if "train_batch_size" in state:
        summary.setdefault("per_device_train_batch_size", state["train_batch_size"])
    results = _read_json(model_dir / "train_results.json") or _read_json(model_dir / "all_results.json") or {}
    if "train_runtime" in results:
        summary["training time"] = f"{results['train_runtime'] / 60:.1f} min"
    if "train_loss" in results:
        summary["final train loss"] = round(results["train_loss"], 4)
    for key in ("hardware", "device"):
        if key in arguments or key in results:
            summary["hardware"] = arguments.get(key, results.get(key))
    return summary


def base_model_of(model_dir: Path) -> str | None:
    """The checkpoint training started from (None when it started from a config's random weights)."""
    arguments = _read_json(model_dir / "training_args.json")
    if arguments is None:
        return DEFAULT_BASE_MODEL
    return arguments.get("model_name_or_path")


def eval_results(metrics: dict, dataset_id: str) -> list[EvalResult]:
    """model-index entries: IoU and Dice per task, with the dataset and split they were measured on."""
    split = metrics["dataset"]["split"]
    results = []
    for task, m in metrics["tasks"].items():
        for metric_type, key, label in (("iou", "miou", "mean IoU"), ("dice", "dice", "Dice")):
            results.append(EvalResult(
                task_type="image-segmentation", task_name=f"{task} segmentation (\"{m['prompt']}\")",
                # the task as the dataset config: model-index groups results by (task, dataset, config, split)
                dataset_type=dataset_id, dataset_name=f"drywall-QA {task}", dataset_config=task, dataset_split=split,
                metric_type=metric_type, metric_value=round(float(m[key]), 4), metric_name=f"{label} ({task})",
            ))
    return results


def render_model_card(
    model_dir: str | Path,
    repo_id: str = DEFAULT_REPO_ID,
    base_model: str | None = "auto",
    dataset_id: str = DEFAULT_DATASET_ID,
    license: str = "apache-2.0",
    training: dict | None = None,
) -> ModelCard:
    model_dir = Path(model_dir)
    if base_model == "auto":
        base_model = base_model_of(model_dir)
    metrics = _read_json(model_dir / METRICS_PATH)
    figure = None
    if metrics and metrics.get("figure") and (model_dir / METRICS_PATH.parent / metrics["figure"]).is_file():
        figure = (METRICS_PATH.parent / metrics["figure"]).as_posix()
    card_data = ModelCardData(
        model_name=repo_id.split("/")[-1],
        base_model=base_model,
        datasets=[dataset_id],
        library_name="transformers",
        pipeline_tag="image-segmentation",
        license=license,
        tags=["clipseg", "image-segmentation", "drywall", "crack-segmentation", "construction"],
        metrics=["mean_iou", "dice"],
        eval_results=eval_results(metrics, dataset_id) if metrics else None,
    )
    return ModelCard.from_template(
        card_data,
        template_path=str(template_path()),
        model_name=repo_id.split("/")[-1],  # card_data moves model_name into model-index
        repo_id=repo_id,
        dataset_id=dataset_id,
        threshold=threshold_of(CLIPSegConfig.from_pretrained(model_dir)),
        threshold_source=(metrics or {}).get("threshold_source", "the default: evaluate.py calibrates it"),
        prompts=PROMPTS,
        canonical=CANONICAL_PROMPTS,
        metrics=metrics,
        footprint=(metrics or {}).get("footprint"),
        figure=figure,
        training={**training_summary(model_dir), **(training or {})},
    )


def write_model_card(model_dir: str | Path, **options) -> Path:
    """Render the card into `<model_dir>/README.md` (options: see `render_model_card`); returns the path."""
    path = Path(model_dir) / CARD_FILE
    render_model_card(model_dir, **options).save(path)
    return path
