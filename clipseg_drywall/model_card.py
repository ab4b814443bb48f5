"""The model card: `model_card.md` (Jinja) rendered by huggingface_hub into `<model dir>/README.md`; and
the model folder's evaluation files, which `evaluate.py --update_model` stores through `store_evaluation`.

Everything on the card is read from the model directory, so the card can be re-rendered after
training, after evaluation and before publishing without carrying state around:
- `config.json`: the decision threshold, and `evaluation/threshold.json`: which evaluation calibrated it;
- `evaluation/<layout>_<split>.json` (written by `evaluate.py --update_model`): metrics, footprint, the figure;
- `train_results.json`, `trainer_state.json` (Trainer) and, when present, `training_args.json`
  (`TrainingArguments.to_dict()`, plus the base model's Hub id as train.py resolved it): hyperparameters
  and training time.
"""

from __future__ import annotations

import json
import re
import shutil
from importlib import resources
from pathlib import Path

from huggingface_hub import EvalResult, ModelCard, ModelCardData
from transformers import CLIPSegConfig

from .modeling import DEFAULT_BASE_MODEL
from .prompts import CANONICAL_PROMPTS, PROMPTS
from .segmenters.base import threshold_of

DEFAULT_REPO_ID = "org/clipseg-drywall"
CARD_FILE = "README.md"
TEMPLATE_FILE = "model_card.md"
EVALUATION_DIR = "evaluation"  # evaluate.py stores <layout>_<split>.json (+ .png) here
THRESHOLD_RECORD = "threshold.json"  # in EVALUATION_DIR: the threshold evaluate.py wrote into config.json, and how
BASE_MODEL_KEY = "base_model_hub_id"  # in training_args.json: the base's Hub id (None: random or local weights)
DEFAULT_THRESHOLD_SOURCE = "the default: `evaluate.py --update_model` stores a calibrated one"
# what a Hub model id looks like: `name` or `org/name`, never `./`, `../` or a deeper path
_HUB_ID = re.compile(r"^(?:[\w.-]+/)?[\w.-]+$")
HYPERPARAMETERS = (
    "model_name_or_path", "config_name", "image_size", "encoder_learning_rate", "decoder_learning_rate",
    "freeze_encoder", "per_device_train_batch_size", "gradient_accumulation_steps", "num_processes", "max_steps",
    "num_train_epochs", "lr_scheduler_type", "warmup_ratio", "warmup_steps", "weight_decay", "dice_weight",
    "pos_weight", "balance_tasks", "resample_prompts", "augment", "negative_prompt_ratio", "seed", "bf16", "fp16",
)


def template_path() -> Path:
    """The card template, package data (`clipseg_drywall/templates/model_card.md`; the repo's top-level
    `model_card.md` links to it), found the same way from a checkout and from a wheel."""
    path = Path(str(resources.files("clipseg_drywall") / "templates" / TEMPLATE_FILE))
    if not path.is_file():
        raise FileNotFoundError(f"{path}: the model card template is missing from the package; reinstall it")
    return path


def _read_json(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.is_file() else None


def training_summary(model_dir: Path) -> dict[str, object]:
    """Hyperparameters, steps, time and hardware, from what the Trainer saved beside the weights."""
    summary: dict[str, object] = {}
    arguments = _read_json(model_dir / "training_args.json") or {}
    summary.update({k: arguments[k] for k in HYPERPARAMETERS if arguments.get(k) not in (None, "", [])})
    if "model_name_or_path" in summary:  # never a local path on the card
        summary["model_name_or_path"] = base_model_of(model_dir)[1]
    summary.update(what_trained(arguments))
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


def what_trained(arguments: dict) -> dict[str, str]:
    """The LoRA adapters (rank, targets; merged into the saved weights) and trainable versus total parameters."""
    lines = {}
    if arguments.get("lora_rank"):
        lines["LoRA"] = (f"rank {arguments['lora_rank']}, alpha {arguments.get('lora_alpha')}, dropout "
                         f"{arguments.get('lora_dropout')} on {arguments.get('lora_targets', 'the CLIP towers')}; "
                         "the decoder trained in full; adapters merged into the saved weights")
    if arguments.get("trainable_parameters") and arguments.get("total_parameters"):
        trainable, total = arguments["trainable_parameters"], arguments["total_parameters"]
        lines["trainable parameters"] = f"{trainable:,} of {total:,} ({trainable / total:.1%})"
    return lines


_HUB_CACHE_DIR = re.compile(r"models--([^/\\]+?)--([^/\\]+)[/\\]snapshots[/\\]")


def hub_id_of(name_or_path: str | None) -> str | None:
    """The Hub id a base model or dataset may be named by in Hub metadata, or None.

    A name that is no local path is a Hub id; a local folder is one only inside the Hub cache
    (`models--org--name/snapshots/...`); any other local path has no Hub origin to name.
    """
    if not name_or_path:
        return None
    if not Path(name_or_path).exists():
        return name_or_path if _HUB_ID.match(name_or_path) and not name_or_path.startswith(".") else None
    match = _HUB_CACHE_DIR.search(str(Path(name_or_path).resolve()) + "/")
    return f"{match.group(1)}/{match.group(2)}" if match else None


def base_model_of(model_dir: Path) -> tuple[str | None, str | None]:
    """(Hub id of the checkpoint training started from, or None; how the card describes it).

    The description is None when training started from a config's random weights.
    """
    arguments = _read_json(model_dir / "training_args.json")
    if arguments is None:
        return DEFAULT_BASE_MODEL, DEFAULT_BASE_MODEL
    start = arguments.get("model_name_or_path")
    if not start:
        return None, None
    # train.py records the Hub id where the path resolved; a relative local path need not resolve from here
    hub_id = arguments[BASE_MODEL_KEY] if BASE_MODEL_KEY in arguments else hub_id_of(start)
    return hub_id, hub_id or f"a local checkpoint ({Path(start).name})"


def dataset_id_of(model_dir: Path) -> str | None:
    """The Hub id of the training data recorded by train.py (--dataset_name / --hub_dataset_id)."""
    arguments = _read_json(model_dir / "training_args.json") or {}
    return hub_id_of(arguments.get("dataset_id") or arguments.get("dataset_name"))


def evaluations(model_dir: Path) -> list[dict]:
    """Every evaluation stored by evaluate.py in `<model>/evaluation/`, honest (source-disjoint) first."""
    folder = model_dir / EVALUATION_DIR
    paths = sorted(p for p in folder.glob("*.json") if p.name != THRESHOLD_RECORD) if folder.is_dir() else []
    found = [json.loads(path.read_text()) for path in paths]
    for metrics in found:
        leaked = metrics["dataset"].get("leaked_images")
        metrics["leak_known"] = leaked is not None
        metrics["leaky"] = bool(leaked) and any(leaked.values())
        metrics["honest"] = metrics["leak_known"] and not metrics["leaky"] and not metrics.get("threshold_tuned_on_scored_split")
    return sorted(found, key=lambda m: (not m["honest"], m["dataset"]["split"] != "test"))


def threshold_source(model_dir: Path, threshold: float) -> str:
    """How the config's threshold was set: the evaluation that calibrated and wrote it (its record
    in `evaluation/threshold.json`), else set at training or by hand, else the default."""
    record = _read_json(model_dir / EVALUATION_DIR / THRESHOLD_RECORD)
    if record is not None and abs(float(record["threshold"]) - threshold) < 1e-9:
        return f"{record['source']} (evaluation {record['evaluation']})"
    config = _read_json(model_dir / "config.json") or {}
    if config.get("segmentation_threshold") is not None:
        return "set in config.json at training (`--segmentation_threshold`) or by hand, not calibrated by evaluate.py"
    return DEFAULT_THRESHOLD_SOURCE


def eval_results(metrics: dict, dataset_id: str | None) -> list[EvalResult]:
    """model-index entries: IoU and Dice per task, with the dataset, layout and split they were measured on."""
    split = metrics["dataset"]["split"]
    layout = metrics["dataset"].get("layout") or "default"
    results = []
    for task, m in metrics["tasks"].items():
        for metric_type, key, label in (("iou", "miou", "mean IoU"), ("dice", "dice", "Dice")):
            results.append(EvalResult(
                task_type="image-segmentation", task_name=f"{task} segmentation (\"{m['prompt']}\")",
                # the task within the layout as the dataset config: model-index groups by (task, dataset, config, split)
                dataset_type=dataset_id or "drywall-qa", dataset_name=f"drywall-QA {task} ({layout} splits)",
                dataset_config=f"{layout}/{task}", dataset_split=split,
                metric_type=metric_type, metric_value=round(float(m[key]), 4), metric_name=f"{label} ({task})",
            ))
    return results


def render_model_card(
    model_dir: str | Path,
    repo_id: str = DEFAULT_REPO_ID,
    dataset_id: str | None = "auto",
    license: str = "apache-2.0",
    training: dict | None = None,
) -> ModelCard:
    model_dir = Path(model_dir)
    base_model, base_description = base_model_of(model_dir)
    if dataset_id == "auto":
        dataset_id = dataset_id_of(model_dir)
    stored = evaluations(model_dir)
    indexed = [m for m in stored if m["honest"]] or stored
    threshold = threshold_of(CLIPSegConfig.from_pretrained(model_dir))
    card_data = ModelCardData(
        model_name=repo_id.split("/")[-1],
        base_model=base_model,
        datasets=[dataset_id] if dataset_id else None,
        library_name="transformers",
        pipeline_tag="image-segmentation",
        license=license,
        tags=["clipseg", "image-segmentation", "drywall", "crack-segmentation", "construction"],
        metrics=["mean_iou", "dice"],
        eval_results=[r for m in indexed for r in eval_results(m, dataset_id)] or None,
    )
    return ModelCard.from_template(
        card_data,
        template_path=str(template_path()),
        model_name=repo_id.split("/")[-1],  # card_data moves model_name into model-index
        repo_id=repo_id,
        dataset_id=dataset_id,
        base_model=base_model,
        base_description=base_description,
        threshold=threshold,
        threshold_source=threshold_source(model_dir, threshold),
        prompts=PROMPTS,
        canonical=CANONICAL_PROMPTS,
        evaluations=stored,
        footprint=next((m["footprint"] for m in stored if m.get("footprint")), None),
        evaluation_dir=EVALUATION_DIR,
        training={**training_summary(model_dir), **(training or {})},
    )


def write_model_card(model_dir: str | Path, **options) -> Path:
    """Render the card into `<model_dir>/README.md` (options: see `render_model_card`); returns the path."""
    path = Path(model_dir) / CARD_FILE
    render_model_card(model_dir, **options).save(path)
    return path


def evaluation_name(metrics: dict) -> str:
    """`<layout>_<split>`: the file stem an evaluation has inside `<model>/evaluation/`."""
    layout = metrics["dataset"].get("layout") or "unknown"
    return f"{layout}_{metrics['dataset']['split']}"


def set_model_threshold(model_dir: Path, threshold: float) -> None:
    """Rewrite config.json with the new `segmentation_threshold` (every other key kept)."""
    config = CLIPSegConfig.from_pretrained(model_dir)
    config.segmentation_threshold = threshold
    config.save_pretrained(model_dir)


def store_evaluation(model_dir: Path, metrics: dict, figure: Path, threshold: float | None) -> None:
    """An evaluation into the model folder: the calibrated `threshold` (None: keep the config's) into config.json
    with its record, the metrics and `figure` under evaluation/, and the card re-rendered from them."""
    target = Path(model_dir) / EVALUATION_DIR
    target.mkdir(exist_ok=True)
    name = evaluation_name(metrics)
    if threshold is not None:
        set_model_threshold(model_dir, threshold)
        record = {"threshold": threshold, "source": metrics["threshold_source"], "evaluation": name}
        (target / THRESHOLD_RECORD).write_text(json.dumps(record, indent=2))
    stored = dict(metrics)
    if Path(figure).is_file():
        stored["figure"] = f"{name}.png"
        shutil.copyfile(figure, target / stored["figure"])
    (target / f"{name}.json").write_text(json.dumps(stored, indent=2))
    write_model_card(model_dir)
