"""What `train.py` runs: argument dataclasses, model/processor/dataset loading, and `main`.

Kept in the library so tests and benchmarks run exactly the script's code path.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path

import datasets
import transformers
from transformers import CLIPSegConfig, CLIPSegForImageSegmentation, CLIPSegProcessor, HfArgumentParser, set_seed

from .collator import CLIPSegCollator, resize_images
from .feature_cache import CachedFeatureCollator, build_feature_cache, resolve_cache_use
from .footprint import device_name
from .model_card import write_model_card
from .modeling import model_from_config
from .trainer import CLIPSegTrainer, CLIPSegTrainingArguments

logger = logging.getLogger(__name__)

DEFAULT_MODEL = "CIDAS/clipseg-rd64-refined"
DEFAULT_THRESHOLD = 0.5


@dataclass
class ModelArguments:
    model_name_or_path: str = field(default=DEFAULT_MODEL, metadata={"help": "Pretrained CLIPSeg (Hub id or directory)."})
    config_name: str | None = field(default=None, metadata={"help": "Config (Hub id or directory) to start from random weights."})
    tokenizer_name: str | None = field(default=None, metadata={"help": "Where the processor (tokenizer + image processor) files are; defaults to model_name_or_path."})
    image_size: int | None = field(default=None, metadata={"help": "Processor input size (square); the model interpolates its position embeddings."})
    segmentation_threshold: float | None = field(default=None, metadata={"help": "Saved in the config (default 0.5, or the checkpoint's); evaluate.py may recalibrate it."})


@dataclass
class DataArguments:
    dataset_path: str | None = field(default=None, metadata={"help": "A `save_to_disk` DatasetDict directory."})
    dataset_name: str | None = field(default=None, metadata={"help": "A Hub dataset id."})
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

    def __post_init__(self):
        if (self.dataset_path is None) == (self.dataset_name is None):
            raise ValueError("Pass exactly one of --dataset_path (a save_to_disk directory) or --dataset_name (a Hub id).")


def load_model(model_args: ModelArguments) -> CLIPSegForImageSegmentation:
    """From `config_name` (random weights, decoder init fixed) or from `model_name_or_path`."""
    if model_args.config_name:
        model = model_from_config(CLIPSegConfig.from_pretrained(model_args.config_name))
    else:
        model = CLIPSegForImageSegmentation.from_pretrained(model_args.model_name_or_path)
    if model_args.segmentation_threshold is not None:
        model.config.segmentation_threshold = model_args.segmentation_threshold
    elif getattr(model.config, "segmentation_threshold", None) is None:
        model.config.segmentation_threshold = DEFAULT_THRESHOLD
    return model


def load_processor(model_args: ModelArguments) -> CLIPSegProcessor:
    source = model_args.tokenizer_name or (None if model_args.config_name else model_args.model_name_or_path)
    if source is None:
        raise ValueError("--config_name needs --tokenizer_name: a directory or Hub id with the CLIPSeg processor "
                         "files (e.g. ../shared/clipseg-rd64-refined).")
    processor = CLIPSegProcessor.from_pretrained(source)
    if model_args.image_size:
        processor.image_processor.size = {"height": model_args.image_size, "width": model_args.image_size}
    return processor


def load_splits(data_args: DataArguments) -> tuple[datasets.Dataset, datasets.Dataset | None]:
    if data_args.dataset_path:
        dataset = datasets.load_from_disk(data_args.dataset_path)
    else:
        dataset = datasets.load_dataset(data_args.dataset_name)
    if not isinstance(dataset, datasets.DatasetDict) or data_args.train_split not in dataset:
        raise ValueError(f"{data_args.dataset_path or data_args.dataset_name} has no split {data_args.train_split!r}; "
                         "build it with `python -m data_builders build ...` or pass --train_split.")
    train = dataset[data_args.train_split]
    evaluation = dataset[data_args.eval_split] if data_args.eval_split in dataset else None
    if data_args.max_train_samples is not None:
        train = train.shuffle(seed=0).select(range(min(data_args.max_train_samples, len(train))))
    if evaluation is not None and data_args.max_eval_samples is not None:
        evaluation = evaluation.shuffle(seed=0).select(range(min(data_args.max_eval_samples, len(evaluation))))
    return train, evaluation


def parse_arguments(argv: list[str] | None = None) -> tuple[ModelArguments, DataArguments, CLIPSegTrainingArguments]:
    parser = HfArgumentParser((ModelArguments, DataArguments, CLIPSegTrainingArguments))
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) == 1 and argv[0].endswith(".json"):
        return parser.parse_json_file(json_file=argv[0])
    return parser.parse_args_into_dataclasses(args=argv)


def feature_cache_root(data_args: DataArguments) -> Path:
    if data_args.feature_cache_dir:
        return Path(data_args.feature_cache_dir)
    if data_args.dataset_path:
        return Path(data_args.dataset_path) / "feature_cache"
    return Path.home() / ".cache" / "clipseg_drywall" / "features"


def build_trainer(model_args: ModelArguments, data_args: DataArguments, training_args: CLIPSegTrainingArguments,
                  callbacks: list | None = None) -> CLIPSegTrainer:
    set_seed(training_args.seed)  # before the model: random weights from a config depend on it
    model = load_model(model_args)
    processor = load_processor(model_args)
    train, evaluation = load_splits(data_args)
    if data_args.preresize_images:
        with training_args.main_process_first(desc="resizing images"):
            train = resize_images(train, processor, desc="resizing train images")
            if evaluation is not None:
                evaluation = resize_images(evaluation, processor, desc="resizing eval images")
    options = {"resample_prompts": data_args.resample_prompts, "negative_prompt_ratio": data_args.negative_prompt_ratio}
    if resolve_cache_use(data_args.cache_features, training_args.freeze_encoder, data_args.augment):
        with training_args.main_process_first(desc="caching CLIP features"):
            cache = build_feature_cache(model, processor, train, feature_cache_root(data_args))
        collator = CachedFeatureCollator(processor, train=True, cache=cache, **options)
        train = train.remove_columns("image")  # never decoded again: the features stand in for it
    else:
        collator = CLIPSegCollator(processor, train=True, augment=data_args.augment, **options)
    return CLIPSegTrainer(model=model, args=training_args, train_dataset=train, eval_dataset=evaluation,
                          data_collator=collator, eval_data_collator=CLIPSegCollator(processor, train=False),
                          processing_class=processor, callbacks=callbacks)


def main(argv: list[str] | None = None, callbacks: list | None = None) -> int:
    model_args, data_args, training_args = parse_arguments(argv)
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO
                        if training_args.should_log else logging.WARNING)
    transformers.utils.logging.set_verbosity(training_args.get_process_log_level())
    trainer = build_trainer(model_args, data_args, training_args, callbacks)
    resume = training_args.resume_from_checkpoint
    if isinstance(resume, str) and resume.lower() == "true":
        resume = True  # the last checkpoint in output_dir
    result = trainer.train(resume_from_checkpoint=resume)
    trainer.save_model()  # model.safetensors + config (with segmentation_threshold) + processor files
    trainer.log_metrics("train", result.metrics)
    trainer.save_metrics("train", result.metrics)
    trainer.save_state()
    if training_args.do_eval and trainer.eval_dataset is not None:
        metrics = trainer.evaluate()
        trainer.log_metrics("eval", metrics)
        trainer.save_metrics("eval", metrics)
    if trainer.is_world_process_zero():
        write_run_card(trainer, model_args, data_args)
    return 0


def write_run_card(trainer: CLIPSegTrainer, model_args: ModelArguments, data_args: DataArguments) -> None:
    """Every argument of the run as `training_args.json`, then the model card (`model_card.md`) as README.md."""
    output_dir = Path(trainer.args.output_dir)
    arguments = {**dataclasses.asdict(model_args), **dataclasses.asdict(data_args), **trainer.args.to_dict()}
    if model_args.config_name:
        arguments["model_name_or_path"] = None  # not used: the weights started random from config_name
    arguments["hardware"] = device_name(trainer.args.device)
    arguments["num_processes"] = trainer.accelerator.num_processes
    (output_dir / "training_args.json").write_text(json.dumps(arguments, indent=2, default=str))
    write_model_card(output_dir)  # base model, hyperparameters and hardware from training_args.json
