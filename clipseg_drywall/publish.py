"""`python -m clipseg_drywall.publish --model_dir OUT --repo_id org/clipseg-drywall [--dataset_repo_id org/drywall-qa]`

Uploads a trained model folder with `huggingface_hub`: safetensors weights, config (with the
calibrated threshold), processor and tokenizer files, the model card (re-rendered for the repo
id) and the evaluation figure and metrics. Never pickles (`.bin`, `.pt`), optimizer or scheduler
state, or Trainer checkpoints. `--dry_run` lists what would go up and touches no network. The
local folder is not changed (`--write_card` saves the rendered card into it).

The dataset is published by its builder: `python -m data_builders push DIR org/drywall-qa`
(`--dataset_repo_id` only names it on the model card).

The token is `huggingface_hub`'s own (`hf auth login` or the HF_TOKEN variable); it is never
printed, and it is scrubbed from any error message before that is shown.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from huggingface_hub import CommitOperationAdd, HfApi, ModelCard, get_token
from huggingface_hub.utils import filter_repo_objects

from .cli import ArgumentParser, one_line, user_errors
from .model_card import CARD_FILE, render_model_card

ALLOW_PATTERNS = [
    "*.safetensors",
    "*.safetensors.index.json",
    "config.json",
    "preprocessor_config.json",
    "processor_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "merges.txt",
    "README.md",
    "evaluation/*.json",
    "evaluation/*.png",
]
# applied after the allowlist: no pickles, optimizer/trainer state or intermediate checkpoints, ever
IGNORE_PATTERNS = [
    "*.bin", "*.pt", "*.pth", "*.ckpt", "*.pkl", "*optimizer*", "*scheduler*", "rng_state*",
    "checkpoint-*", ".git/*", ".cache/*",
]
REQUIRED = ("config.json", "tokenizer_config.json")


def files_to_upload(model_dir: str | Path) -> list[str]:
    """Relative paths `upload_folder(allow_patterns=ALLOW_PATTERNS, ignore_patterns=IGNORE_PATTERNS)` sends."""
    root = Path(model_dir)
    every = [p.relative_to(root).as_posix() for p in sorted(root.glob("**/*")) if p.is_file()]
    return list(filter_repo_objects(every, allow_patterns=ALLOW_PATTERNS, ignore_patterns=IGNORE_PATTERNS))


def check_model_dir(model_dir: Path, files: Sequence[str]) -> None:
    if not model_dir.is_dir():
        raise FileNotFoundError(f"{model_dir}: no such model folder; pass the --output_dir of train.py")
    missing = [name for name in REQUIRED if name not in files]
    if not any(name.endswith(".safetensors") for name in files):
        missing.append("model.safetensors")
    if missing:
        raise FileNotFoundError(
            f"{model_dir} lacks {', '.join(missing)}: save the model with `save_pretrained` (safetensors) and the "
            "processor with `CLIPSegProcessor.save_pretrained` into it first"
        )


def _scrub(message: str) -> str:
    token = get_token()
    return message.replace(token, "<token>") if token else message


def publish_model(model_dir: Path, repo_id: str, dataset_id: str | None, private: bool, dry_run: bool,
                  write_card: bool = False) -> list[str]:
    """Upload the model folder's safe files and its card rendered for `repo_id`, in one commit; returns what
    goes up. The local folder is left as it is unless `write_card` (the card also saved as its README.md)."""
    card, files = prepare(model_dir, repo_id, dataset_id, write_card)
    if not dry_run:
        upload(model_dir, repo_id, card, files, private)
    return files


def prepare(model_dir: Path, repo_id: str, dataset_id: str | None, write_card: bool) -> tuple[ModelCard, list[str]]:
    """The checks and the card, before any network: (card, files that go up)."""
    files = files_to_upload(model_dir) if model_dir.is_dir() else []
    check_model_dir(model_dir, files)
    card = render_model_card(model_dir, repo_id=repo_id, dataset_id=dataset_id)  # names this repo and dataset
    if write_card:
        card.save(model_dir / CARD_FILE)
    return card, sorted({*files, CARD_FILE})


def upload(model_dir: Path, repo_id: str, card: ModelCard, files: list[str], private: bool) -> None:
    api = HfApi()
    api.create_repo(repo_id, private=private, exist_ok=True)
    operations = [CommitOperationAdd(name, str(model_dir / name)) for name in files if name != CARD_FILE]
    operations.append(CommitOperationAdd(CARD_FILE, str(card).encode("utf-8")))
    api.create_commit(repo_id, operations, commit_message="Upload clipseg-drywall model")


def _parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(prog="python -m clipseg_drywall.publish", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model_dir", type=Path, required=True, help="a trained (and evaluated) model folder")
    parser.add_argument("--repo_id", required=True, help="model repo, e.g. org/clipseg-drywall")
    parser.add_argument("--dataset_repo_id", help="the training data's Hub dataset repo, named on the model card "
                        "(default: the one train.py recorded, if any)")
    parser.add_argument("--private", action="store_true")
    parser.add_argument("--dry_run", action="store_true", help="render the card and list the files; upload nothing")
    parser.add_argument("--write_card", action="store_true",
                        help="also save the card rendered for --repo_id as <model_dir>/README.md (by default the "
                             "folder is left unchanged and only the upload carries it)")
    return parser


def main(argv: list[str] | None = None) -> int:
    with user_errors(argv):  # a missing folder or file: one line, exit status 2, before any network
        args = _parser().parse_args(argv)
        card, files = prepare(args.model_dir, args.repo_id, args.dataset_repo_id or "auto", args.write_card)
    if not args.dry_run:
        try:
            upload(args.model_dir, args.repo_id, card, files, args.private)
        except Exception as error:  # shown without traceback: the Hub's messages could carry request details
            if args.debug:
                raise
            print(f"error: publishing to {args.repo_id} failed: {type(error).__name__}: {one_line(_scrub(str(error)))}",
                  file=sys.stderr)
            return 1
    print(f"{'would upload' if args.dry_run else 'uploaded'} to model repo {args.repo_id}:")
    print("\n".join(f"  {name}" for name in files))
    return 0


if __name__ == "__main__":
    sys.exit(main())
