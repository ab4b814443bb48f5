"""Evaluate a CLIPSeg checkpoint: `python evaluate.py --model_path OUT --dataset_path DATA --output_dir EVAL`.

Arguments: `EvaluationArguments` in `clipseg_drywall/arguments.py` (`python evaluate.py --help`); the job is
`clipseg_drywall/run_evaluation.py` (also installed as `clipseg-drywall-evaluate`).
Writes EVAL/metrics.json, EVAL/per_image.csv, EVAL/masks/<image stem>__<prompt slug>.png and
EVAL/best_worst.png. With `--update_model` (only then) the threshold calibrated on
`--calibration_split` goes into the model's config.json, and the metrics and card into its folder.

This file shares its name with the `evaluate` library. When the repo root is on `sys.path`
(`python evaluate.py`, `python -m pytest` from the root), `import evaluate` anywhere finds this
file first, under the module name "evaluate"; it then hands over to the installed library, so
that every `import evaluate` still gets the real one.
"""

import sys

if __name__ == "evaluate":  # imported as the library's name, not run as a script
    import importlib.util
    import os
    from importlib.machinery import PathFinder

    _here = os.path.dirname(os.path.abspath(__file__))
    _path = [p for p in sys.path if os.path.abspath(p or os.curdir) != _here]
    _spec = PathFinder.find_spec("evaluate", _path)
    if _spec is None:
        raise ImportError("the `evaluate` library is not installed (pip install evaluate); "
                          f"{__file__} is the repo's evaluation script, not the library")
    _library = importlib.util.module_from_spec(_spec)
    sys.modules["evaluate"] = _library  # before executing: the library's relative imports look it up
    _spec.loader.exec_module(_library)
elif __name__ == "__main__":
    from clipseg_drywall.run_evaluation import main

    sys.exit(main())
