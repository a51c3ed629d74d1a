"""The house: commands at the top, a light ``import detlit``, one option vocabulary, one exit convention."""

from __future__ import annotations

import argparse
import importlib
import subprocess
import sys
from pathlib import Path

import pytest

import detlit
from detlit.__main__ import COMMANDS

from .conftest import REPO

ARGPARSE_COMMANDS = tuple(name for name in COMMANDS if name not in ("fit", "validate", "test", "config"))
TOP_LEVEL = {*ARGPARSE_COMMANDS, "fit", "__init__", "__main__", "errors", "compat"}


def test_the_top_level_holds_the_commands_and_nothing_else() -> None:
    modules = {p.stem for p in (REPO / "detlit").glob("*.py")}
    assert modules <= TOP_LEVEL, modules - TOP_LEVEL
    for name in modules - {"__init__", "__main__", "errors", "compat"}:
        lines = len((REPO / "detlit" / f"{name}.py").read_text().splitlines())
        assert lines <= 90, f"detlit/{name}.py has {lines} lines: a command is argument parsing and one library call"


def test_import_detlit_is_light_and_the_public_api_is_at_the_top() -> None:
    code = (
        "import sys, detlit; heavy = [m for m in sys.modules if m.startswith(('detectron2', 'lightning', 'torch'))]; "
        "print(len(heavy)); from detlit import CocoDataModule, DetectionModule, Predictor, DetectionMetrics; "
        "print(any(m.startswith('detectron2.engine') for m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=REPO)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split() == ["0", "False"], "import detlit loads nothing heavy; nothing loads detectron2.engine"
    assert set(detlit.__all__) >= {"CocoDataModule", "DetectionModule", "Predictor", "__version__"}
    with pytest.raises(AttributeError):
        detlit.NoSuchThing  # noqa: B018


def _parser(name: str) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = importlib.import_module(f"detlit.{name}").build_parser()
    return parser


def _options(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    return {option: action for action in parser._actions for option in action.option_strings}


@pytest.mark.parametrize("name", ARGPARSE_COMMANDS)
def test_one_vocabulary(name: str) -> None:
    options = _options(_parser(name))
    assert {"--quiet", "--verbose"} <= set(options)
    if "--device" in options:
        assert options["--device"].default == "auto"
    if "--ckpt" in options:
        assert options["--ckpt"].metavar == "CKPT"
    if "--out" in options:
        assert options["--out"].metavar == "FOLDER", "--out is a folder in every command"
    if "--batch-size" in options:
        assert options["--batch-size"].default == 4
    writes = name not in ("env", "serve")
    assert ("--overwrite" in options) == (writes and name != "tune"), "every command that writes files has --overwrite"
    for spelled in options:
        assert spelled in ("-h", "--help") or "_" not in spelled, f"{spelled}: options use dashes"


def test_every_command_answers_help_and_usage_errors_exit_2() -> None:
    for name in (*ARGPARSE_COMMANDS, "fit"):
        assert name in COMMANDS
    for name in ARGPARSE_COMMANDS:
        with pytest.raises(SystemExit) as info:
            importlib.import_module(f"detlit.{name}").main(["--help"])
        assert info.value.code == 0
        with pytest.raises(SystemExit) as info:
            importlib.import_module(f"detlit.{name}").main(["--no-such-option"])
        assert info.value.code == 2


def test_the_commands_table_lists_every_option() -> None:
    """docs/commands.md names every option of every command."""
    text = (REPO / "docs" / "commands.md").read_text()
    for name in ARGPARSE_COMMANDS:
        section = text.split(f"## `{name}`", 1)
        assert len(section) == 2, f"docs/commands.md has no section for {name}"
        body = section[1].split("\n## ", 1)[0]
        for option in _options(_parser(name)):
            if option not in ("-h", "--help"):
                assert f"`{option}" in body, f"docs/commands.md, {name}: {option} is not listed"


def test_evaluate_results_needs_no_images(coco_eval_dir: Path, tmp_path: Path) -> None:
    from detlit.evaluate import main

    args = ["--results", str(coco_eval_dir / "instances_val2014_fakebbox100_results.json")]
    args += ["--json", str(coco_eval_dir / "instances_val2014_100.json"), "--out", str(tmp_path / "eval")]
    with pytest.raises(SystemExit) as info:
        main(args)
    assert info.value.code == 0
    assert (tmp_path / "eval" / "metrics.json").is_file()
