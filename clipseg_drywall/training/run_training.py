"""The training job (`train.py`, `clipseg-drywall-train`): load model, processor and rows, build the
`CLIPSegTrainer`, train, save the model with its run record and card.

Kept in the library so tests and benchmarks run exactly the script's code path; the arguments are
`arguments.py`'s.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
from collections.abc import Sequence
from pathlib import Path

import torch
import transformers
from transformers import CLIPSegConfig, CLIPSegForImageSegmentation, CLIPSegProcessor, set_seed

from ..arguments import CLIPSegTrainingArguments, DataArguments, ModelArguments, expand_recipe, parse_arguments
from ..atomic_files import check_writable_folder, current_umask
from ..cli import check_model_source, user_errors
from ..data import check_saved_dataset, load_train_eval_splits
from ..distributed import cpu_threads_per_process
from ..model_card import BASE_MODEL_KEY, hub_id_of, write_model_card
from ..model_cost import device_name
from ..modeling import model_from_config
from ..segmenters.base import DEFAULT_THRESHOLD
from .adapters import ADAPTER_DIR, describe_targets, has_adapters, merge_adapters, parameter_counts, save_adapter
from .collator import CLIPSegCollator, resize_images
from .device_fit import as_flags, describe, device_defaults, given_options
from .feature_cache import CachedFeatureCollator, build_feature_cache, resolve_cache_use
from .trainer import CLIPSegTrainer

logger = logging.getLogger(__name__)


def override_config(config: CLIPSegConfig, overrides: str) -> None:
    """Apply "key=value,..." in place; "vision_config.key=value" reaches a sub-config. Values are parsed
    as the current value's type (`PretrainedConfig.update_from_string`), and unknown keys are refused."""
    by_part: dict[str, list[str]] = {}
    for item in filter(None, (part.strip() for part in overrides.split(","))):
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"--config_overrides: {item!r} is not key=value")
        part, _, name = key.strip().rpartition(".")
        by_part.setdefault(part, []).append(f"{name}={value.strip()}")
    for part, items in by_part.items():
        target = getattr(config, part, None) if part else config
        if target is None or not hasattr(target, "update_from_string"):
            raise ValueError(f"--config_overrides: the config has no sub-config {part!r}")
        try:
            target.update_from_string(",".join(items))
        except ValueError as error:  # an unknown key, or a value that is not of the key's type
            raise ValueError(f"--config_overrides {overrides!r}: {error}; use the keys, and values of their types, "
                             "found in the config's config.json") from None


def load_model(model_args: ModelArguments) -> CLIPSegForImageSegmentation:
    """From `config_name` (random weights, decoder init fixed) or from `model_name_or_path`."""
    if model_args.config_name:
        config = CLIPSegConfig.from_pretrained(model_args.config_name)
        if model_args.config_overrides:
            override_config(config, model_args.config_overrides)
        model = model_from_config(config)
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


def parse_training_arguments(argv: Sequence[str] | None = None) -> tuple[ModelArguments, DataArguments, CLIPSegTrainingArguments]:
    return parse_arguments((ModelArguments, DataArguments, CLIPSegTrainingArguments), argv)


def fit_to_device(argv: Sequence[str] | None = None) -> tuple[list[str], str]:
    """(`argv` with its recipe expanded and the device options it leaves out added, the log line saying what
    was chosen): workers, pinned memory, persistent workers and bf16 for the device this process trains on."""
    argv = expand_recipe(argv)
    training_args = parse_training_arguments(argv)[2]
    device, cores = training_args.device.type, cpu_threads_per_process()
    bf16 = device == "cuda" and torch.cuda.is_bf16_supported()
    chosen = device_defaults(device, cores, bf16)
    given = given_options(argv)
    fitted = {key: value for key, value in chosen.items() if key not in given}
    as_given = {key: getattr(training_args, key) for key in sorted(given)}
    return argv + as_flags(fitted), describe(device, cores, fitted, as_given)


def use_every_core(training_args: CLIPSegTrainingArguments) -> None:
    """On CPU, give torch every core this process should get.

    `accelerate launch` without `--cpu` on a machine with no GPU sets OMP_NUM_THREADS=1, so a
    single process would train on one core; `python train.py` would use them all.
    """
    if training_args.device.type != "cpu":
        return
    wanted = cpu_threads_per_process()
    if torch.get_num_threads() < wanted:
        torch.set_num_threads(wanted)
    logger.info("training on cpu with %d threads per process (%d processes on this machine)",
                torch.get_num_threads(), int(os.environ.get("LOCAL_WORLD_SIZE", "1")))


def tidy_output_dir(output_dir: Path, keep_checkpoints: bool) -> None:
    """Only what a user needs stays (checkpoints only if asked for), readable as files usually are."""
    if not keep_checkpoints:
        for checkpoint in output_dir.glob("checkpoint-*"):
            shutil.rmtree(checkpoint, ignore_errors=True)
    (output_dir / "training_args.bin").unlink(missing_ok=True)  # a pickle; training_args.json holds the same
    umask = current_umask()
    for path in output_dir.rglob("*"):
        if path.is_file():
            path.chmod(0o666 & ~umask)


def check_sources(model_args: ModelArguments, data_args: DataArguments, training_args: CLIPSegTrainingArguments) -> None:
    """Paths and ids that need no loading, checked before anything loads: model, processor, data, output."""
    for flag in ("config_name", "tokenizer_name", "model_name_or_path"):
        source = getattr(model_args, flag)
        if source and not (flag == "model_name_or_path" and model_args.config_name):
            check_model_source(source, f"--{flag}", needs_config=flag != "tokenizer_name")
    if model_args.config_overrides:
        if not model_args.config_name:
            raise ValueError("--config_overrides changes the config of a model trained from random weights: "
                             "pass it with --config_name (a pretrained checkpoint keeps its own config)")
        override_config(CLIPSegConfig.from_pretrained(model_args.config_name), model_args.config_overrides)
    if training_args.lora_rank and data_args.cache_features:
        raise ValueError("--lora_rank trains adapters inside the CLIP encoders, so their features change every step and "
                         "cannot be cached: drop --cache_features")
    if data_args.dataset_path:
        check_saved_dataset(data_args.dataset_path)
    check_writable_folder(training_args.output_dir, "--output_dir")
    resume = training_args.resume_from_checkpoint
    if isinstance(resume, str) and resume.lower() != "true" and not Path(resume).is_dir():
        raise FileNotFoundError(f"--resume_from_checkpoint {resume}: no such checkpoint folder "
                                "(or pass true for the last one in --output_dir)")


def build_trainer(model_args: ModelArguments, data_args: DataArguments, training_args: CLIPSegTrainingArguments,
                  callbacks: list | None = None) -> CLIPSegTrainer:
    set_seed(training_args.seed)  # before the model: random weights from a config depend on it
    model = load_model(model_args)
    processor = load_processor(model_args)
    train, evaluation = load_train_eval_splits(data_args)
    if data_args.preresize_images:
        with training_args.main_process_first(desc="resizing images"):
            train = resize_images(train, processor, desc="resizing train images")
            if evaluation is not None:
                evaluation = resize_images(evaluation, processor, desc="resizing eval images")
    options = {"resample_prompts": data_args.resample_prompts, "negative_prompt_ratio": data_args.negative_prompt_ratio}
    if resolve_cache_use(data_args.cache_features, training_args.freeze_encoder, data_args.augment):
        with training_args.main_process_first(desc="caching CLIP features"):
            cache = build_feature_cache(model, processor, train, data_args.feature_cache_root())
        collator = CachedFeatureCollator(processor, train=True, cache=cache, **options)
        train = train.remove_columns("image")  # never decoded again: the features stand in for it
    else:
        collator = CLIPSegCollator(processor, train=True, augment=data_args.augment, **options)
    return CLIPSegTrainer(model=model, args=training_args, train_dataset=train, eval_dataset=evaluation,
                          data_collator=collator, eval_data_collator=CLIPSegCollator(processor, train=False),
                          processing_class=processor, callbacks=callbacks)


def main(argv: list[str] | None = None, callbacks: list | None = None) -> int:
    with user_errors(argv):  # usage and path mistakes: one line, before any logging or loading
        argv, fitted = fit_to_device(argv)
        model_args, data_args, training_args = parse_training_arguments(argv)
        check_sources(model_args, data_args, training_args)
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO
                        if training_args.should_log else logging.WARNING)
    transformers.utils.logging.set_verbosity(training_args.get_process_log_level())
    logger.info(fitted)
    use_every_core(training_args)
    with user_errors(argv):  # paths, splits, model and processor are checked here, before any training
        trainer = build_trainer(model_args, data_args, training_args, callbacks)
    resume = training_args.resume_from_checkpoint
    if isinstance(resume, str) and resume.lower() == "true":
        resume = True  # the last checkpoint in output_dir
    result = trainer.train(resume_from_checkpoint=resume)
    trained = parameter_counts(trainer.model)  # before merging: what trained, adapters included
    if has_adapters(trainer.model):
        finish_adapters(trainer, model_args)
    trainer.save_model()  # model.safetensors + config (with segmentation_threshold) + processor files
    trainer.log_metrics("train", result.metrics)
    trainer.save_metrics("train", result.metrics)
    trainer.save_state()
    if training_args.do_eval and trainer.eval_dataset is not None:
        metrics = trainer.evaluate()
        trainer.log_metrics("eval", metrics)
        trainer.save_metrics("eval", metrics)
    if trainer.is_world_process_zero():
        write_run_card(trainer, model_args, data_args, trained)
        tidy_output_dir(Path(training_args.output_dir), training_args.keep_checkpoints)
    return 0


def finish_adapters(trainer: CLIPSegTrainer, model_args: ModelArguments) -> None:
    """Keep the adapter alone in `<output_dir>/adapter`, then merge it: the final model is a plain checkpoint."""
    if trainer.is_world_process_zero():
        base = None if model_args.config_name else hub_id_of(model_args.model_name_or_path)
        save_adapter(trainer.model, Path(trainer.args.output_dir) / ADAPTER_DIR, base_model=base)
    merge_adapters(trainer.model)


def write_run_card(trainer: CLIPSegTrainer, model_args: ModelArguments, data_args: DataArguments,
                   trained: tuple[int, int] | None = None) -> None:
    """Every argument of the run as `training_args.json`, then the model card (`model_card.md`) as README.md."""
    output_dir = Path(trainer.args.output_dir)
    arguments = {**dataclasses.asdict(model_args), **dataclasses.asdict(data_args), **trainer.args.to_dict()}
    if model_args.config_name:
        arguments["model_name_or_path"] = None  # not used: the weights started random from config_name
    # resolved here, where a relative local path still resolves; the card is rendered from anywhere later
    arguments[BASE_MODEL_KEY] = hub_id_of(arguments["model_name_or_path"])
    arguments["dataset_id"] = data_args.dataset_id()
    arguments["hardware"] = device_name(trainer.args.device)
    arguments["num_processes"] = trainer.accelerator.num_processes
    if trained is not None:
        arguments["trainable_parameters"], arguments["total_parameters"] = trained
    if trainer.args.lora_rank:
        arguments["lora_targets"] = describe_targets(trainer.model.config)
    (output_dir / "training_args.json").write_text(json.dumps(arguments, indent=2, default=str))
    write_model_card(output_dir)  # base model, hyperparameters and hardware from training_args.json
