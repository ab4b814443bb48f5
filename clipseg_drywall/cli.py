"""What every command-line tool of the package shares.

`ArgumentParser` accepts each long option in both spellings, `--dry_run` and `--dry-run`, as
`HfArgumentParser` (train, evaluate) already does, so every command takes the same flag style.
"""

from __future__ import annotations

import argparse


def _both_spellings(option: str) -> list[str]:
    if not option.startswith("--"):
        return [option]
    name = option[2:]
    spellings = [option, "--" + name.replace("-", "_"), "--" + name.replace("_", "-")]
    return list(dict.fromkeys(spellings))


class ArgumentParser(argparse.ArgumentParser):
    """`argparse.ArgumentParser` whose long options answer to `_` and `-` alike (help shows the first)."""

    def add_argument(self, *names, **kwargs):
        spelled = [spelling for name in names for spelling in _both_spellings(name)]
        if names and names[0].startswith("--") and "dest" not in kwargs:
            kwargs["dest"] = names[0][2:].replace("-", "_")
        return super().add_argument(*spelled, **kwargs)
