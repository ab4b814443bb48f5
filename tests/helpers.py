"""What the tests share that is not a fixture: where the real data lives, the tiny config, the
trainer factory, and how a command's exit and output are read."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from clipseg_drywall.mask_index import INDEX_FILE

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
DATA = SHARED / "data"
DATA_VOC = SHARED / "data-voc"
CRACKS = DATA / "cracks"
JOINTS = DATA / "drywall-join-detect"
CLIPSEG_FILES = SHARED / "clipseg-rd64-refined"

requires_shared = pytest.mark.skipif(
    not (DATA.is_dir() and CLIPSEG_FILES.is_dir()),
    reason=f"real data and CLIPSeg processor files not found in {SHARED} (the repo's ../shared)",
)


def tiny_config_dict() -> dict:
    """A CLIPSeg config small enough for CPU tests, with the real tokenizer's vocabulary size."""
    return {
        "model_type": "clipseg",
        "architectures": ["CLIPSegForImageSegmentation"],
        "projection_dim": 32,
        "reduce_dim": 16,
        "extract_layers": [0, 1, 2],
        "conditional_layer": 0,
        "decoder_num_attention_heads": 2,
        "decoder_intermediate_size": 32,
        "use_complex_transposed_convolution": True,
        "text_config": {
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "max_position_embeddings": 77,
            "vocab_size": 49408,
            "pad_token_id": 1,
            "bos_token_id": 0,
            "eos_token_id": 2,
        },
        "vision_config": {
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 3,
            "num_attention_heads": 2,
            "image_size": 224,
            "patch_size": 16,
        },
    }


def exit_code(main, argv: list[str]) -> int:
    """The status a command's `main(argv)` ends with: its return value, or the code of the `SystemExit`
    it raises (usage and input errors exit with 2 from `cli.user_errors` and argparse)."""
    try:
        return main(argv)
    except SystemExit as exit_info:
        return exit_info.code


def call(main, argv: list[str], capsys) -> tuple[int, str, str]:
    code = exit_code(main, argv)
    out, err = capsys.readouterr()
    return code, out, err


def predict(argv: list[str], capsys) -> tuple[int, str, str]:
    from clipseg_drywall.predict import main

    return call(main, argv, capsys)


def index_rows(folder: Path) -> list[dict[str, str]]:
    with open(folder / INDEX_FILE, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


# Training arguments that keep a test's trainer quiet and light: no reports, bars, evaluations or saves.
QUIET = {"report_to": [], "disable_tqdm": True, "dataloader_pin_memory": False, "logging_steps": 1,
         "eval_strategy": "no", "save_strategy": "no"}


def make_trainer(output_dir: Path, data_dir: Path, *, config_dir: Path | None = None, model_dir: Path | None = None,
                 data: dict | None = None, **overrides):
    """`build_trainer` on a config (random weights) or a saved model, with the shared processor files:
    batch 2, one step, `QUIET`; `data`: DataArguments fields, `overrides`: training arguments."""
    from clipseg_drywall.arguments import CLIPSegTrainingArguments, DataArguments, ModelArguments
    from clipseg_drywall.training.run_training import build_trainer

    arguments = {**QUIET, "output_dir": str(output_dir), "per_device_train_batch_size": 2, "max_steps": 1, **overrides}
    source = {"model_name_or_path": str(model_dir)} if model_dir else {"config_name": str(config_dir)}
    return build_trainer(ModelArguments(**source, tokenizer_name=str(CLIPSEG_FILES)),
                         DataArguments(dataset_path=str(data_dir), **(data or {})), CLIPSegTrainingArguments(**arguments))


def report_argv(photo_dir: Path, model: Path, output: Path, threshold: float, *extra: str) -> list[str]:
    return [str(photo_dir), str(photo_dir / "other"), "--model", str(model), "--output", str(output),
            "--threshold", f"{threshold:.6f}", "--mm_per_pixel", "0.05", "--batch_size", "2", *extra]


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))
