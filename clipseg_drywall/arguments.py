"""Every argument of the package's jobs, declared: nothing here loads data or models (`data` does).

Model / Data / Training arguments are what `train.py` reads, `EvaluationArguments` what
`evaluate.py` reads; `parse_arguments` reads any of them with `HfArgumentParser`, from the command
line or from a JSON recipe (`configs/*.json`) whose values the command line overrides.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from transformers import HfArgumentParser, TrainingArguments

from .modeling import DEFAULT_BASE_MODEL
from .segmenters import BACKENDS
from .segmenters.base import check_threshold


@dataclass
class DatasetArguments:
    """Where the rows come from: exactly one of a `save_to_disk` directory or a Hub dataset id."""

    dataset_path: str | None = field(default=None, metadata={"help": "A `save_to_disk` DatasetDict directory."})
    dataset_name: str | None = field(default=None, metadata={"help": "A Hub dataset id (or a local Parquet layout)."})
    dataset_config: str | None = field(default=None, metadata={"help": "Configuration of --dataset_name, e.g. source-disjoint."})

    def __post_init__(self):
        if (self.dataset_path is None) == (self.dataset_name is None):
            raise ValueError("Pass exactly one of --dataset_path (a save_to_disk directory) or --dataset_name (a Hub id).")

    @property
    def dataset_source(self) -> str:
        return self.dataset_path or self.dataset_name


@dataclass
class ModelArguments:
    model_name_or_path: str = field(default=DEFAULT_BASE_MODEL, metadata={"help": "Pretrained CLIPSeg (Hub id or directory)."})
    config_name: str | None = field(default=None, metadata={"help": "Config (Hub id or directory) to start from random weights."})
    tokenizer_name: str | None = field(default=None, metadata={"help": "Where the processor (tokenizer + image processor) files are; defaults to model_name_or_path."})
    config_overrides: str | None = field(default=None, metadata={"help": "With --config_name: config values to change, as in transformers' run_clm, "
                                          "e.g. 'reduce_dim=128,vision_config.image_size=320' (a dotted key reaches a sub-config)."})
    image_size: int | None = field(default=None, metadata={"help": "Processor input size (square); the model interpolates its position embeddings."})
    segmentation_threshold: float | None = field(default=None, metadata={"help": "Saved in the config (default 0.5, or the checkpoint's); evaluate.py may recalibrate it."})


@dataclass
class DataArguments(DatasetArguments):
    train_split: str = "train"
    eval_split: str = "validation"
    max_train_samples: int | None = None
    max_eval_samples: int | None = None
    resample_prompts: bool = field(default=False, metadata={"help": "A random synonym from the vocabulary each time a train row is used."})
    augment: bool = field(default=False, metadata={"help": "Random horizontal/vertical flips (masks follow)."})
    negative_prompt_ratio: float = field(default=0.0, metadata={"help": "Share of train pairs given the other task's prompt and an empty mask."})
    preresize_images: bool = field(default=True, metadata={"help": "Store images resized to the processor's size once (bit-identical pixels, far less decoding per step); masks stay native."})
    cache_features: bool = field(default=False, metadata={"help": "With --freeze_encoder: compute the CLIP features of the train split once, on disk, and train the decoder from them."})
    feature_cache_dir: str | None = field(default=None, metadata={"help": "Where cached features go (default: <dataset_path>/feature_cache, or ~/.cache/clipseg_drywall/features)."})
    hub_dataset_id: str | None = field(default=None, metadata={"help": "The Hub id of the data in --dataset_path (e.g. org/drywall-qa), named on the model card; without it (or --dataset_name) the card names no dataset."})

    def dataset_id(self) -> str | None:
        """The Hub id the model card may name: --hub_dataset_id, else --dataset_name (never a local path)."""
        if self.hub_dataset_id:
            return self.hub_dataset_id
        if self.dataset_name and not Path(self.dataset_name).exists():
            return self.dataset_name
        return None

    def feature_cache_root(self) -> Path:
        if self.feature_cache_dir:
            return Path(self.feature_cache_dir)
        if self.dataset_path:
            return Path(self.dataset_path) / "feature_cache"
        return Path.home() / ".cache" / "clipseg_drywall" / "features"


@dataclass
class CLIPSegTrainingArguments(TrainingArguments):
    """`TrainingArguments` plus the CLIPSeg knobs. `learning_rate` is unused: see the two rates below."""

    encoder_learning_rate: float = field(default=1e-6, metadata={"help": "AdamW lr of the CLIP vision + text encoders."})
    decoder_learning_rate: float = field(default=1e-3, metadata={"help": "AdamW lr of the CLIPSeg decoder."})
    freeze_encoder: bool = field(default=False, metadata={"help": "Train the decoder only; no encoder gradients at all."})
    dice_weight: float = field(default=0.0, metadata={"help": "Weight of the soft Dice term added to the BCE."})
    pos_weight: float | None = field(default=None, metadata={"help": "BCE weight of foreground pixels."})
    balance_tasks: bool = field(default=False, metadata={"help": "Draw the tasks evenly instead of by frequency."})
    weight_decay: float = field(default=1e-4, metadata={"help": "AdamW weight decay (not on norms and biases)."})
    metric_for_best_model: str | None = field(default="mean_iou", metadata={"help": "Mean over tasks of eval IoU."})
    remove_unused_columns: bool = field(default=False, metadata={"help": "Must stay False: the collator reads image, mask, prompt and task."})
    keep_checkpoints: bool = field(default=False, metadata={"help": "Keep the checkpoint-* folders (optimizer state, for --resume_from_checkpoint) once training has finished; by default only the final model stays."})
    lora_rank: int | None = field(default=None, metadata={"help": "Train LoRA adapters of this rank (peft) in the CLIP towers "
                                  "instead of their weights: the attention and MLP projections of the vision layers up to the deepest in "
                                  "extract_layers and of every text layer (clipseg_drywall/adapters.py); the decoder trains in full, the "
                                  "adapters at --encoder_learning_rate. The saved model has them merged (a plain checkpoint)."})
    lora_alpha: float = field(default=16.0, metadata={"help": "LoRA scaling: an adapter adds lora_alpha / lora_rank x B A x."})
    lora_dropout: float = field(default=0.05, metadata={"help": "Dropout on the adapters' input."})

    def __post_init__(self):
        super().__post_init__()
        if self.remove_unused_columns:
            raise ValueError("--remove_unused_columns must be false: CLIPSegCollator needs the raw rows "
                             "(image, mask, prompt, task), none of which the model's forward names")
        self.check_lora()
        checkpointing = self.gradient_checkpointing_kwargs
        if isinstance(checkpointing, dict) and checkpointing.get("use_reentrant"):
            raise ValueError("--gradient_checkpointing_kwargs use_reentrant=true loses the gradients of every checkpointed "
                             "layer whose input needs none (frozen pixels and embeddings): leave it out (non-reentrant)")

    def check_lora(self) -> None:
        if self.lora_rank is None:
            return
        if self.lora_rank < 1:
            raise ValueError(f"--lora_rank must be a positive rank (e.g. 8), got {self.lora_rank}; leave it out for no adapters")
        if self.freeze_encoder or self.encoder_learning_rate == 0:
            raise ValueError("--lora_rank trains adapters inside the CLIP encoders, which --freeze_encoder (or "
                             "--encoder_learning_rate 0) freezes: drop one of the two")


@dataclass
class EvaluationArguments(DatasetArguments):
    model_path: str = field(default=None, metadata={"help": "Checkpoint directory (or Hub id) of a CLIPSegForImageSegmentation."})
    output_dir: str = field(default=None, metadata={"help": "Where metrics.json, per_image.csv, masks/ and the figure go."})
    split: str | None = field(default=None, metadata={"help": "The split scored (default: test where the dataset has one, else validation)."})
    calibration_split: str = field(default="validation", metadata={"help": "The split the threshold is swept on; 'none': use the model config's threshold."})
    allow_calibration_on_scored_split: bool = field(default=False, metadata={"help": "Allow --calibration_split = --split; metrics.json and the card then say the threshold was tuned on the scored images."})
    max_samples: int | None = field(default=None, metadata={"help": "Evaluate the first N rows of each split only."})
    batch_size: int = 8
    threshold: float | None = field(default=None, metadata={"help": "Fixed threshold: no calibration."})
    prompt_robustness: bool = field(default=True, metadata={"help": "Also score every vocabulary prompt and a few paraphrases on their task's images."})
    bootstrap_resamples: int = field(default=1000, metadata={"help": "Resamples of the 95%% bootstrap intervals over images (seeded)."})
    update_model: bool = field(
        default=False,
        metadata={"help": "Also write into the (local) model folder: the calibrated threshold into config.json, "
                          "metrics and figure into <model>/evaluation/, and the re-rendered card as README.md. "
                          "Off by default: evaluating changes nothing of the model's."},
    )
    debug: bool = field(default=False, metadata={"help": "Show the full traceback of an error."})
    latency_images: int = field(default=16, metadata={"help": "Images timed for the footprint (0: skip timing)."})
    figure_cases: int = field(default=2, metadata={"help": "Best and worst cases per task in the figure."})
    device: str | None = None
    backend: str = field(default="torch", metadata={"help": "torch, or onnx: --model_path is then a folder written by "
                                                            "`python -m clipseg_drywall.segmenters.export` (parity checks)."})
    speed_options: list[str] = field(
        default_factory=list,
        metadata={"help": "Opt-in speed-ups to evaluate (bf16, int8, channels_last, compile): their IoU change is "
                          "what decides whether they may be used (leave --update_model off with them)."},
    )

    def __post_init__(self):
        super().__post_init__()
        if not self.model_path or not self.output_dir:
            raise ValueError("Pass --model_path (a checkpoint directory or Hub id) and --output_dir.")
        if self.threshold is not None:
            check_threshold(self.threshold)
        if self.backend not in BACKENDS:
            raise ValueError(f"--backend must be one of {BACKENDS}, got {self.backend!r}")
        if self.bootstrap_resamples < 1000:
            raise ValueError(f"--bootstrap_resamples must be at least 1000, got {self.bootstrap_resamples}")


def recipe_to_argv(recipe: dict[str, Any]) -> list[str]:
    """A JSON recipe as command-line flags, so that flags given after it override its values."""
    argv: list[str] = []
    for key, value in recipe.items():
        if value is None:
            continue
        if isinstance(value, list):
            argv += [f"--{key}", *map(str, value)]
        else:
            argv += [f"--{key}", str(value).lower() if isinstance(value, bool) else str(value)]
    return argv


def parse_arguments(dataclass_types: Sequence[type], argv: Sequence[str] | None = None) -> tuple:
    """Parse `argv` (default: the command line) into instances of `dataclass_types`.

    A first argument ending in `.json` is a recipe: its keys are flags, and flags given after it
    override them (`train.py configs/small-from-scratch.json --max_steps 100`).
    """
    parser = HfArgumentParser(tuple(dataclass_types))
    return tuple(parser.parse_args_into_dataclasses(args=expand_recipe(argv), look_for_args_file=False))


def expand_recipe(argv: Sequence[str] | None = None) -> list[str]:
    """`argv` (default: the command line) with a leading `.json` recipe replaced by its flags."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0].endswith(".json"):
        path = Path(argv[0])
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such recipe file")
        argv = recipe_to_argv(json.loads(path.read_text())) + argv[1:]
    return argv
