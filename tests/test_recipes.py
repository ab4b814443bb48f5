"""The training recipes in configs/ parse, flags override them, and the CIDAS recipes run from a local
stand-in for the pretrained checkpoint (`--model_name_or_path DIR`), the path users with the Hub take."""

from __future__ import annotations

import json

import pytest
import yaml
from huggingface_hub import ModelCard

from clipseg_drywall.model_card import hub_id_of
from clipseg_drywall.training.run_training import main, parse_training_arguments

from .helpers import CLIPSEG_FILES, REPO, requires_shared

RECIPES = sorted((REPO / "configs").glob("*.json"))


def test_every_use_has_a_recipe():
    assert {p.stem for p in RECIPES} == {"small-from-scratch", "small-from-scratch-gpu", "cidas-decoder-cached", "cidas-finetune",
                                         "cidas-lora"}


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.stem)
def test_recipe_parses_and_flags_override_it(recipe, tmp_path):
    values = json.loads(recipe.read_text())
    model, data, training = parse_training_arguments(
        [str(recipe), "--dataset_path", "d", "--max_steps", "7", "--output_dir", str(tmp_path)])
    assert training.max_steps == 7 and training.output_dir == str(tmp_path)  # the command line wins
    assert training.per_device_train_batch_size == values["per_device_train_batch_size"]
    assert training.decoder_learning_rate == values["decoder_learning_rate"]
    assert training.lr_scheduler_type.value == values["lr_scheduler_type"]
    assert 0 < training.logging_steps <= 0.02  # a loss point every 1-2% of the steps
    assert training.report_to == [] or training.report_to == ["none"]
    if "config_name" in values:
        assert model.config_name == values["config_name"] and model.image_size == values.get("image_size")
    else:
        assert model.model_name_or_path == "CIDAS/clipseg-rd64-refined"
    assert data.negative_prompt_ratio == values.get("negative_prompt_ratio", 0.0)


def test_a_missing_recipe_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.json: no such recipe file"):
        parse_training_arguments([str(tmp_path / "nope.json")])


def test_hub_ids_never_paths(tmp_path):
    assert hub_id_of("CIDAS/clipseg-rd64-refined") == "CIDAS/clipseg-rd64-refined"
    assert hub_id_of(str(tmp_path)) is None
    snapshot = tmp_path / "hub" / "models--CIDAS--clipseg-rd64-refined" / "snapshots" / "abc123"
    snapshot.mkdir(parents=True)
    assert hub_id_of(str(snapshot)) == "CIDAS/clipseg-rd64-refined"


@requires_shared
def test_a_relative_local_base_is_never_a_hub_id_on_the_card(tiny_model_dir, tiny_drywall_dir, tmp_path, monkeypatch):
    """train.py resolves the base where its relative path resolves; a card rendered from another folder
    still names it as a local checkpoint, not as a Hub id (`base_model: tiny-model`, which the Hub refuses)."""
    from clipseg_drywall.model_card import render_model_card

    monkeypatch.chdir(tiny_model_dir.parent)
    output = tmp_path / "out"
    main([str(REPO / "configs" / "cidas-finetune.json"), "--model_name_or_path", tiny_model_dir.name,
          "--dataset_path", str(tiny_drywall_dir), "--output_dir", str(output), "--max_steps", "1",
          "--disable_tqdm", "true"])
    monkeypatch.chdir(tmp_path)  # where `tiny_model_dir.name` names nothing
    card = render_model_card(output)
    assert card.data.base_model is None and f"a local checkpoint ({tiny_model_dir.name})" in card.text


@pytest.mark.slow
@requires_shared
@pytest.mark.parametrize("recipe", ["cidas-decoder-cached", "cidas-finetune", "cidas-lora"])
def test_cidas_recipe_runs_two_steps_from_a_local_checkpoint(recipe, tiny_model_dir, tiny_drywall_dir, tmp_path):
    output = tmp_path / "out"
    main([str(REPO / "configs" / f"{recipe}.json"), "--model_name_or_path", str(tiny_model_dir),
          "--dataset_path", str(tiny_drywall_dir), "--output_dir", str(output), "--max_steps", "2",
          "--feature_cache_dir", str(tmp_path / "cache"), "--disable_tqdm", "true"])
    state = json.loads((output / "trainer_state.json").read_text())
    assert state["global_step"] == 2 and any("eval_mean_iou" in e for e in state["log_history"])
    assert (output / "model.safetensors").is_file() and not list(output.glob("checkpoint-*"))
    assert bool(list((tmp_path / "cache").glob("*/activations.npy"))) == (recipe == "cidas-decoder-cached")
    card = ModelCard.load(output / "README.md")
    if recipe == "cidas-lora":  # merged: a plain checkpoint, the adapter beside it, the card says what trained
        from safetensors.torch import load_file

        assert not [k for k in load_file(output / "model.safetensors") if "lora_" in k or "base_layer" in k]
        assert (output / "adapter" / "adapter_model.safetensors").is_file()
        assert "**LoRA**: rank 8, alpha 16.0" in card.text and "**trainable parameters**" in card.text
    metadata = yaml.safe_load((output / "README.md").read_text().split("---")[1])
    # a local base model and a local dataset: named as local on the card, never as a path in the metadata
    assert "base_model" not in metadata and "datasets" not in metadata
    assert str(tmp_path) not in yaml.safe_dump(metadata) and "/" not in str(metadata.get("base_model", ""))
    assert f"a local checkpoint ({tiny_model_dir.name})" in card.text
    assert str(tiny_model_dir) not in card.text and "https://github.com/)" not in card.text


@pytest.mark.slow
@requires_shared
def test_the_dataset_id_comes_from_the_run(tiny_model_dir, tiny_drywall_dir, tmp_path):
    output = tmp_path / "out"
    main([str(REPO / "configs" / "cidas-finetune.json"), "--model_name_or_path", str(tiny_model_dir),
          "--dataset_path", str(tiny_drywall_dir), "--hub_dataset_id", "someone/drywall-qa",
          "--output_dir", str(output), "--max_steps", "1", "--disable_tqdm", "true",
          "--tokenizer_name", str(CLIPSEG_FILES)])
    metadata = yaml.safe_load((output / "README.md").read_text().split("---")[1])
    assert metadata["datasets"] == ["someone/drywall-qa"]


def test_config_overrides_change_the_random_model(tiny_config_dir):
    from clipseg_drywall.arguments import ModelArguments
    from clipseg_drywall.training.run_training import load_model

    model = load_model(ModelArguments(config_name=str(tiny_config_dir),
                                      config_overrides="reduce_dim=32, vision_config.image_size=64"))
    assert model.config.reduce_dim == 32 and model.decoder.film_mul.out_features == 32
    assert model.config.vision_config.image_size == 64
    assert model.clip.vision_model.embeddings.position_embedding.num_embeddings == (64 // model.config.vision_config.patch_size) ** 2 + 1


@pytest.mark.parametrize("overrides, error", [
    ("reduce_dims=32", "--config_overrides 'reduce_dims=32'.*reduce_dims"),  # a typo is refused, not ignored
    ("reduce_dim=wide", "--config_overrides"),
    ("reduce_dim", "is not key=value"),
    ("audio_config.size=3", "no sub-config 'audio_config'"),
])
def test_bad_config_overrides_are_named(overrides, error, tiny_config_dir, tmp_path):
    from clipseg_drywall.training.run_training import check_sources

    model, data, training = parse_training_arguments(
        ["--config_name", str(tiny_config_dir), "--config_overrides", overrides, "--output_dir", str(tmp_path),
         "--dataset_name", "someone/drywall-qa"])
    with pytest.raises(ValueError, match=error):
        check_sources(model, data, training)


def test_config_overrides_need_a_config_name(tmp_path):
    from clipseg_drywall.training.run_training import check_sources

    model, data, training = parse_training_arguments(
        ["--model_name_or_path", "CIDAS/clipseg-rd64-refined", "--config_overrides", "reduce_dim=32", "--output_dir", str(tmp_path),
         "--dataset_name", "someone/drywall-qa"])
    with pytest.raises(ValueError, match="pass it with --config_name"):
        check_sources(model, data, training)
