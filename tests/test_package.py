"""The package's shape: one-way imports, a light inference import, the wheel, flags, the training forward."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import zipfile

import pytest

from .helpers import REPO

HEAVY = ("lxml", "datasets", "matplotlib", "evaluate", "data_builders", "peft")


def test_inference_import_loads_no_data_training_or_plotting_stack():
    code = ("import sys, clipseg_drywall.segmenters.pytorch, clipseg_drywall.predict; "
            f"print([m for m in {HEAVY!r} if m in sys.modules])")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO / "tests", timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.strip() == "[]", run.stdout


def test_the_public_onnx_segmenter_imports_no_torch():
    code = ("import sys, clipseg_drywall; clipseg_drywall.OnnxSegmenter; clipseg_drywall.load_segmenter; "
            "print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO / "tests", timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.strip() == "[]", run.stdout


def test_the_public_api_is_the_segmenters():
    import clipseg_drywall
    from clipseg_drywall.segmenters import load_segmenter
    from clipseg_drywall.segmenters.pytorch import Segmenter

    assert clipseg_drywall.Segmenter is Segmenter and clipseg_drywall.load_segmenter is load_segmenter
    assert {"Segmenter", "OnnxSegmenter", "load_segmenter"} <= set(dir(clipseg_drywall))
    with pytest.raises(AttributeError, match="no attribute 'Segmentr'"):
        clipseg_drywall.Segmentr  # noqa: B018


def _module_name(package: str, path) -> str:
    parts = [package, *path.relative_to(REPO / package).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _package_imports(path, name: str) -> set[str]:
    """Modules of both packages that the module `name` at `path` imports: at module level, inside functions
    (the house rule: no two modules import each other, even there) and by `importlib.import_module`."""
    import ast

    # what a relative import is relative to: the module's package (itself, for an __init__)
    package = name if path.stem == "__init__" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                anchor = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *filter(None, [node.module])])
            else:
                base = node.module or ""
            submodules = {f"{base}.{alias.name}" for alias in node.names} & MODULES.keys()
            found |= submodules or {base}  # `from . import distributed` imports distributed, not the package
        elif isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "import_module" and node.args \
                and isinstance(node.args[0], ast.Constant):
            imported = node.args[0].value
            found.add(package + imported if imported.startswith(".") else imported)
    return {module for module in found if module in MODULES} - {name}


PACKAGES = ("clipseg_drywall", "data_builders")
MODULES = {_module_name(p, path): path for p in PACKAGES for path in (REPO / p).rglob("*.py")}


def test_package_import_graph_has_no_cycle():
    graph = {name: _package_imports(path, name) for name, path in MODULES.items()}
    assert {"clipseg_drywall.segmenters.base", "clipseg_drywall.report.journal",
            "clipseg_drywall.training.trainer"} <= graph.keys()  # the subpackages are walked
    # the parser sees real edges: top-level, relative and by name
    assert graph["clipseg_drywall.modeling"] >= {"clipseg_drywall.losses"}
    assert graph["clipseg_drywall.segmenters"] >= {"clipseg_drywall.segmenters.pytorch", "clipseg_drywall.segmenters.onnx"}
    assert graph["clipseg_drywall.report.runner"] >= {"clipseg_drywall.predict", "clipseg_drywall.report.journal"}
    assert graph["clipseg_drywall"] >= {"clipseg_drywall.segmenters"}
    assert graph["data_builders.stats"] >= {"clipseg_drywall.data", "data_builders.drywall_qa"}
    visiting, done, cycles = [], set(), []

    def visit(module: str) -> None:
        if module in visiting:
            cycles.append(visiting[visiting.index(module):] + [module])
            return
        if module in done:
            return
        visiting.append(module)
        for imported in sorted(graph[module]):
            visit(imported)
        visiting.pop()
        done.add(module)

    for module in sorted(graph):
        visit(module)
    assert cycles == [], "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


def test_library_never_imports_data_builders():
    importing = re.compile(r"^\s*(from|import)\s+data_builders\b", re.M)
    offenders = [str(path.relative_to(REPO)) for path in (REPO / "clipseg_drywall").rglob("*.py")
                 if importing.search(path.read_text())]
    assert offenders == [], f"clipseg_drywall must not import data_builders: {offenders}"


def test_wheel_ships_the_card_template_as_a_file_and_the_commands(tmp_path):
    run = subprocess.run([sys.executable, "-m", "pip", "wheel", str(REPO), "--no-deps", "--no-build-isolation",
                          "-w", str(tmp_path), "-q"], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    shutil.rmtree(REPO / "build", ignore_errors=True)
    (wheel,) = tmp_path.glob("clipseg_drywall-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        info = archive.getinfo("clipseg_drywall/templates/model_card.md")
        assert info.external_attr >> 28 != 0o12  # a regular file, not a symlink
        assert archive.read(info) == (REPO / "model_card.md").read_bytes()
        for name in ("page.html", "page.css", "page.js"):  # the report page's package data
            page_file = f"clipseg_drywall/report/templates/{name}"
            assert archive.read(page_file) == (REPO / page_file).read_bytes()
        assert {"clipseg_drywall/segmenters/onnx.py", "clipseg_drywall/training/trainer.py"} <= set(archive.namelist())
        entry_points = next(archive.read(n).decode() for n in archive.namelist() if n.endswith("entry_points.txt"))
        metadata = next(archive.read(n).decode() for n in archive.namelist() if n.endswith("METADATA"))
    for command in ("train", "evaluate", "predict", "publish", "export", "app", "report", "dataset"):
        assert f"clipseg-drywall-{command} =" in entry_points
    assert "Requires-Dist: transformers<6,>=5.0" in metadata
    assert "Requires-Dist: datasets" in metadata and 'extra == "train"' in metadata
    assert not any(line.startswith("Requires-Dist: datasets") and "extra" not in line for line in metadata.splitlines())


@pytest.mark.parametrize("flag", ["--dry_run", "--dry-run"])
def test_argparse_commands_take_both_flag_spellings(flag):
    from clipseg_drywall.predict import _parser as predict_parser
    from clipseg_drywall.publish import _parser as publish_parser

    args = publish_parser().parse_args(["--model-dir", "m", "--repo_id", "o/r", flag])
    assert args.dry_run and str(args.model_dir) == "m" and args.repo_id == "o/r"
    args = predict_parser().parse_args(["--model", "m", "--prompt", "crack", "--output", "o", "--batch-size", "2", "x.jpg"])
    assert args.batch_size == 2


def test_ruff_is_clean():
    ruff = shutil.which("ruff") or shutil.which("ruff", path=str(REPO / ".venv" / "bin"))
    if ruff is None:
        pytest.skip("ruff is not installed (pip install -e '.[test]' brings it)")
    run = subprocess.run([ruff, "check", "."], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert run.returncode == 0, run.stdout[-3000:]








def test_a_missing_extra_is_answered_with_the_install_command(capsys, monkeypatch):
    from clipseg_drywall import cli

    with pytest.raises(ImportError, match=r"needs no_such_module_xyz.*pip install 'clipseg-drywall\[train\]'"):
        cli.require_extra("train", ("no_such_module_xyz",))
    monkeypatch.setattr(cli, "require_extra", lambda extra, modules: (_ for _ in ()).throw(ImportError("needs x")))
    assert cli.train() == 2 and "error: needs x" in capsys.readouterr().err


@pytest.mark.parametrize("module", ["clipseg_drywall.training.run_training", "clipseg_drywall.run_evaluation",
                                    "clipseg_drywall.predict", "clipseg_drywall.publish", "data_builders.__main__"])
def test_every_command_prints_its_help(module, capsys):
    import importlib

    with pytest.raises(SystemExit) as exit_info:
        importlib.import_module(module).main(["--help"])
    assert exit_info.value.code == 0 and "--" in capsys.readouterr().out


def test_train_and_evaluate_answer_a_bad_path_in_one_line(tmp_path, capsys):
    from clipseg_drywall import run_evaluation
    from clipseg_drywall.training import run_training

    with pytest.raises(SystemExit) as exit_info:
        run_training.main([str(tmp_path / "typo.json")])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.strip() == f"error: {tmp_path / 'typo.json'}: no such recipe file"
    with pytest.raises(SystemExit) as exit_info:
        run_evaluation.main(["--model_path", "m", "--dataset_path", str(tmp_path / "nope"),
                             "--output_dir", str(tmp_path / "out"), "--threshold", "0"])
    assert exit_info.value.code == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert error == ["error: --threshold must be in (0, 1), got 0.0"] and not (tmp_path / "out").exists()
