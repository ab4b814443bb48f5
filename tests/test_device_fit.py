"""Training options fitted to the device at start (training/device_fit.py): what a GPU gets, that a CPU
keeps what it had, that a flag always wins, and that the choice is logged."""

from __future__ import annotations

import logging

import pytest

from clipseg_drywall.training.device_fit import device_defaults, given_options
from clipseg_drywall.training.run_training import fit_to_device, main, parse_training_arguments

from .helpers import CLIPSEG_FILES, REPO, requires_shared

RECIPE = str(REPO / "configs" / "small-from-scratch.json")


def test_a_gpu_gets_workers_from_its_cores_pinned_memory_and_bf16_where_it_has_it():
    assert device_defaults("cuda", 16, bf16_supported=True) == {
        "dataloader_num_workers": 15, "dataloader_pin_memory": True, "dataloader_persistent_workers": True,
        "bf16": True}
    assert device_defaults("cuda", 64, bf16_supported=False)["dataloader_num_workers"] == 16  # capped
    one_core = device_defaults("cuda", 1, bf16_supported=False)
    assert one_core["dataloader_num_workers"] == 0 and not one_core["dataloader_persistent_workers"]
    assert not one_core["bf16"]


@pytest.mark.parametrize("device", ["cpu", "mps"])
def test_a_cpu_keeps_what_it_had(device):
    # what the recipes set before (no workers, no pinning, no bf16): the model has every core
    assert device_defaults(device, 2, bf16_supported=True) == {
        "dataloader_num_workers": 0, "dataloader_pin_memory": False, "dataloader_persistent_workers": False,
        "bf16": False}


def test_flags_in_either_spelling_or_negated_count_as_given():
    argv = ["--dataloader-num-workers=2", "--no_dataloader_pin_memory", "--fp16", "--max_steps", "3"]
    assert given_options(argv) == {"dataloader_num_workers", "dataloader_pin_memory", "bf16"}


def test_this_cpu_is_fitted_and_the_line_says_so(tmp_path):
    argv, line = fit_to_device([RECIPE, "--dataset_path", "d", "--output_dir", str(tmp_path)])
    training = parse_training_arguments(argv)[2]
    assert (training.dataloader_num_workers, training.dataloader_pin_memory, training.bf16) == (0, False, False)
    assert not training.dataloader_persistent_workers
    assert line.startswith("fitted to cpu (") and "dataloader_num_workers=0" in line and "bf16=False" in line
    assert "as given" not in line


def test_an_explicit_flag_wins(tmp_path):
    argv, line = fit_to_device([RECIPE, "--dataset_path", "d", "--output_dir", str(tmp_path),
                                "--dataloader_num_workers", "1", "--dataloader_pin_memory", "true"])
    training = parse_training_arguments(argv)[2]
    assert training.dataloader_num_workers == 1 and training.dataloader_pin_memory
    assert "as given: dataloader_num_workers=1, dataloader_pin_memory=True" in line
    assert "dataloader_num_workers=0" not in line and "bf16=False" in line  # the rest is still fitted


@requires_shared
def test_the_gpu_recipe_runs_two_steps_here_and_the_choice_is_logged(tiny_config_dir, tiny_drywall_dir, tmp_path,
                                                                       caplog):
    with caplog.at_level(logging.INFO, logger="clipseg_drywall.training.run_training"):
        main([str(REPO / "configs" / "small-from-scratch-gpu.json"), "--config_name", str(tiny_config_dir),
              "--tokenizer_name", str(CLIPSEG_FILES), "--dataset_path", str(tiny_drywall_dir),
              "--output_dir", str(tmp_path / "out"), "--max_steps", "2", "--per_device_train_batch_size", "2",
              "--eval_steps", "1", "--save_steps", "1", "--max_eval_samples", "4", "--disable_tqdm", "true"])
    assert any(record.getMessage().startswith("fitted to cpu (") for record in caplog.records)
    assert (tmp_path / "out" / "model.safetensors").is_file()  # the best of the two evaluated checkpoints
