"""The prompt vocabulary: the one place that says which words ask for which task.

Training draws synonyms from here, evaluation uses the canonical prompts, inference accepts
any text but maps known prompts back to their task. The 16 prompts are those of the original
drywall-QA study.
"""

from __future__ import annotations

import random
import warnings

TASKS: tuple[str, ...] = ("crack", "taping")

PROMPTS: dict[str, tuple[str, ...]] = {
    "crack": (
        "segment crack",
        "surface crack",
        "crack",
        "concrete crack",
        "structural crack",
        "segment wall crack",
        "wall crack",
    ),
    "taping": (
        "wall joint",
        "taping area",
        "joint tape",
        "wall joint line",
        "drywall joint",
        "segment joint/tape",
        "segment taping area",
        "segment drywall seam",
        "drywall seam",
    ),
}

CANONICAL_PROMPTS: dict[str, str] = {"crack": "segment crack", "taping": "segment taping area"}

# Words users type that are not in the vocabulary: evaluation scores them to show how the model
# copes with text it was never trained on (prompt robustness). Never used in training.
PARAPHRASES: dict[str, tuple[str, ...]] = {
    "crack": ("hairline crack in plaster", "cracked drywall"),
    "taping": ("tape joint between boards", "drywall tape seam"),
}

_TASK_OF_PROMPT: dict[str, str] = {p: task for task, prompts in PROMPTS.items() for p in prompts}


def all_prompts() -> list[str]:
    """Every prompt in the vocabulary, in a fixed order (tasks in `TASKS` order)."""
    return [p for task in TASKS for p in PROMPTS[task]]


def robustness_prompts(task: str) -> list[str]:
    """Every vocabulary prompt of `task`, then its paraphrases (outside the vocabulary)."""
    return [*PROMPTS[check_task(task)], *PARAPHRASES[task]]


def check_task(task: str) -> str:
    if task not in PROMPTS:
        raise ValueError(f"Unknown task {task!r}; expected one of {TASKS}.")
    return task


def task_of_prompt(prompt: str) -> str | None:
    """The task a vocabulary prompt belongs to (case and spacing ignored), or None for free text."""
    return _TASK_OF_PROMPT.get(" ".join(prompt.lower().split()))


def other_task(task: str) -> str:
    """The task a negative pair borrows its prompt from."""
    check_task(task)
    return next(t for t in TASKS if t != task)


def sample_prompt(task: str, rng: random.Random) -> str:
    """A synonym of `task` drawn with the caller's seeded RNG."""
    return rng.choice(PROMPTS[check_task(task)])


def canonical_prompt(task: str) -> str:
    return CANONICAL_PROMPTS[check_task(task)]


def warn_truncated(prompt: str, n_tokens: int, limit: int) -> None:
    """The one warning every path gives (training, inference, evaluation, ONNX, the demo) when a
    prompt is longer than the text encoder reads: it is cut to its first `limit` tokens, as CLIP
    pipelines do, instead of failing."""
    shown = prompt if len(prompt) <= 60 else prompt[:57] + "..."
    warnings.warn(f"prompt {shown!r} has {n_tokens} tokens; the text encoder reads only the first {limit}, "
                  f"so it is truncated", UserWarning, stacklevel=3)


def tokenize_prompts(tokenizer, prompts: list[str], max_tokens: int | None = None, **kwargs):
    """`tokenizer(prompts, **kwargs)`, each prompt cut to the text encoder's `max_tokens` (default: the
    tokenizer's `model_max_length`, CLIP's 77) with `warn_truncated`, instead of the encoder failing."""
    limit = max_tokens or tokenizer.model_max_length
    for prompt, ids in zip(prompts, tokenizer(list(prompts), verbose=False)["input_ids"]):
        if len(ids) > limit:
            warn_truncated(prompt, len(ids), limit)
    return tokenizer(list(prompts), truncation=True, max_length=limit, **kwargs)

def check_prompt(prompt: object, name: str | None = None) -> str:
    """`prompt` when it is a non-empty text; the one empty-prompt error of the package otherwise
    (`name`: the flag it came from, which the error then names)."""
    if not isinstance(prompt, str) or not prompt.strip():
        where = f"{name}: " if name else ""
        raise ValueError(f"{where}empty prompt {prompt!r}: pass a text such as 'segment crack'")
    return prompt
