"""The house: commands at the top, a light ``import detlit``, one option vocabulary, one exit convention."""

from __future__ import annotations

import argparse
import ast
import importlib
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import detlit
from detlit.__main__ import COMMANDS

from .conftest import REPO

ARGPARSE_COMMANDS = tuple(name for name in COMMANDS if name not in ("fit", "validate", "test", "config"))
TOP_LEVEL = {*ARGPARSE_COMMANDS, "fit", "__init__", "__main__", "errors", "compat"}
# Dependencies whose private API the next release may take away; only detlit/compat.py may use it.
GUARDED = ("lightning", "optuna", "litserve")


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


# --- the command door: keyword arguments ------------------------------------------------------------


def positional_library_calls(source: str) -> list[str]:
    """Calls of a library function (a name imported from detlit, but for the commands' own vocabulary
    in ``detlit.common.command``) that pass an argument by position: ``line: call``."""
    tree = ast.parse(source)
    library = {
        alias.asname or alias.name
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("detlit.")
        if node.module != "detlit.common.command"
        for alias in node.names
    }
    return [
        f"{node.lineno}: {ast.unparse(node)}"
        for node in ast.walk(tree)
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in library and node.args
    ]


def test_the_keyword_check_finds_positional_calls() -> None:
    source = textwrap.dedent(
        """
        from detlit.common.command import run_cli
        def run(args):
            from detlit.inference.evaluate import evaluate
            from detlit.deploy.serve import Limits as L
            run_cli(run, args)
            evaluate(json_path=args.json, images=args.images)
            evaluate(args.json, images=args.images)
            return L(*args.limits)
        """
    )
    assert positional_library_calls(source) == ["8: evaluate(args.json, images=args.images)", "9: L(*args.limits)"]


@pytest.mark.parametrize("name", (*ARGPARSE_COMMANDS, "fit"))
def test_command_modules_call_the_library_with_keywords(name: str) -> None:
    """A call of nine positional arguments reads as nine guesses: a command names what it passes."""
    calls = positional_library_calls((REPO / "detlit" / f"{name}.py").read_text())
    assert not calls, f"detlit/{name}.py calls the library by position: {calls}"


# --- no private API of a dependency ------------------------------------------------------------------


def _is_private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def _root(node: ast.expr) -> ast.expr:
    while isinstance(node, (ast.Attribute, ast.Subscript, ast.Call)):
        node = node.func if isinstance(node, ast.Call) else node.value
    return node


class PrivateUses(ast.NodeVisitor):
    """Finds what a module uses of the private API of the ``GUARDED`` dependencies: ``x._name`` on
    their modules, classes and objects (parameters annotated with their types, names assigned from
    them), ``getattr(x, "_name")``, and in a subclass of one of their classes ``super()._name``,
    ``self._name`` that the subclass never sets, and overrides of a private method."""

    def __init__(self, tree: ast.Module) -> None:
        self.imported: dict[str, str] = {}  # local name -> dotted path of a guarded module or object
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name.split(".")[0] in GUARDED:
                        local = alias.asname or alias.name.split(".")[0]
                        self.imported[local] = alias.name if alias.asname else local
            elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in GUARDED:
                for alias in node.names:
                    self.imported[alias.asname or alias.name] = f"{node.module}.{alias.name}"
        self.found: list[str] = []
        self.objects: set[str] = set()  # names that hold a guarded dependency's object, in this function
        self.bases: list[type] = []  # the guarded classes the class being read derives from
        self.own: set[str] = set()  # the names that class defines or sets itself

    def guarded(self, node: ast.expr | None) -> bool:
        """Whether ``node`` is (a part of) a guarded module, class or object."""
        if isinstance(node, ast.BinOp):  # X | None
            return self.guarded(node.left) or self.guarded(node.right)
        if isinstance(node, ast.Constant) and isinstance(node.value, str):  # a quoted annotation
            try:
                return self.guarded(ast.parse(node.value, mode="eval").body)
            except SyntaxError:
                return False
        root = _root(node) if node is not None else None
        return isinstance(root, ast.Name) and (root.id in self.imported or root.id in self.objects)

    def resolve(self, node: ast.expr) -> type | None:
        """The guarded class a base-class expression names (imported to see its attributes)."""
        parts: list[str] = []
        while isinstance(node, ast.Attribute):
            parts.insert(0, node.attr)
            node = node.value
        if not isinstance(node, ast.Name) or node.id not in self.imported:
            return None
        dotted = [*self.imported[node.id].split("."), *parts]
        for cut in range(len(dotted), 0, -1):
            try:
                found: object = importlib.import_module(".".join(dotted[:cut]))
            except ImportError:
                continue
            for name in dotted[cut:]:
                found = getattr(found, name)
            return found if isinstance(found, type) else None
        return None

    def private(self, value: ast.expr, name: str) -> bool:
        """Whether ``value.name`` is a private name of a guarded dependency."""
        if not _is_private(name):
            return False
        if isinstance(value, ast.Call) and isinstance(value.func, ast.Name) and value.func.id == "super":
            return bool(self.bases)
        if isinstance(value, ast.Name) and value.id == "self":
            return bool(self.bases) and name not in self.own
        if isinstance(value, ast.Attribute) and self.private(value.value, value.attr):
            return True
        return self.guarded(value)

    def visit_ClassDef(self, node: ast.ClassDef) -> None:
        saved = self.bases, self.own
        self.bases = [base for base in map(self.resolve, node.bases) if base is not None]
        self.own = {item.name for item in node.body if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef))}
        for sub in ast.walk(node):
            targets = sub.targets if isinstance(sub, ast.Assign) else [getattr(sub, "target", None)]
            self.own |= {t.attr for t in targets if isinstance(t, ast.Attribute) and ast.unparse(t.value) == "self"}
        methods = [item for item in node.body if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef))]
        for method in methods:
            if _is_private(method.name) and any(hasattr(base, method.name) for base in self.bases):
                self.found.append(f"{method.lineno}: overrides {method.name}")
        self.generic_visit(node)
        self.bases, self.own = saved

    def visit_FunctionDef(self, node: ast.FunctionDef | ast.AsyncFunctionDef) -> None:
        saved = set(self.objects)
        arguments = [*node.args.posonlyargs, *node.args.args, *node.args.kwonlyargs]
        self.objects |= {a.arg for a in arguments if self.guarded(a.annotation)}
        self.generic_visit(node)
        self.objects = saved

    visit_AsyncFunctionDef = visit_FunctionDef

    def visit_Assign(self, node: ast.Assign) -> None:
        self.generic_visit(node)
        if self.guarded(node.value):
            self.objects |= {t.id for t in node.targets if isinstance(t, ast.Name)}

    def visit_For(self, node: ast.For) -> None:
        if self.guarded(node.iter) and isinstance(node.target, ast.Name):
            self.objects.add(node.target.id)
        self.generic_visit(node)

    def visit_Attribute(self, node: ast.Attribute) -> None:
        if self.private(node.value, node.attr):
            self.found.append(f"{node.lineno}: {ast.unparse(node)}")
        self.generic_visit(node)

    def visit_Call(self, node: ast.Call) -> None:
        if isinstance(node.func, ast.Name) and node.func.id in ("getattr", "setattr", "hasattr") and len(node.args) > 1:
            name = node.args[1]
            if (
                isinstance(name, ast.Constant)
                and isinstance(name.value, str)
                and self.private(node.args[0], name.value)
            ):
                self.found.append(f"{node.lineno}: {ast.unparse(node)}")
        self.generic_visit(node)


def private_uses(source: str) -> list[str]:
    tree = ast.parse(source)
    finder = PrivateUses(tree)
    finder.visit(tree)
    return finder.found


def test_the_private_api_check_finds_what_it_looks_for() -> None:
    source = textwrap.dedent(
        """
        import optuna
        from lightning.pytorch import LightningModule
        from lightning.pytorch.cli import LightningCLI
        class CLI(LightningCLI):
            def _instantiate_trainer(self, config, callbacks):
                return super()._instantiate_trainer(config, callbacks)
        class Module(LightningModule):
            def __init__(self):
                self._mine = 1
            def step(self):
                return self._mine, getattr(self._trainer, "_logger_connector", None), self.trainer.training
        def run(trial: optuna.trial.Trial, study_name: str):
            study = optuna.load_study(study_name=study_name, storage="sqlite://")
            return trial._trial_id, trial.number, study._storage, optuna._imports
        """
    )
    assert private_uses(source) == [
        "6: overrides _instantiate_trainer",
        "7: super()._instantiate_trainer",
        "12: getattr(self._trainer, '_logger_connector', None)",
        "12: self._trainer",
        "15: trial._trial_id",
        "15: study._storage",
        "15: optuna._imports",
    ]


def test_no_private_api_of_lightning_optuna_or_litserve_outside_compat() -> None:
    """Private API may go in any release; where no public way exists, the one use lives in compat.py,
    with the upstream issue that asks for one."""
    found = {
        str(path.relative_to(REPO)): uses
        for path in sorted((REPO / "detlit").rglob("*.py"))
        if path.name != "compat.py"
        for uses in [private_uses(path.read_text())]
        if uses
    }
    assert not found, f"private API of {', '.join(GUARDED)} outside detlit/compat.py: {found}"


# --- the packages import downward --------------------------------------------------------------------

HOUSE = (
    "reporting",
    "auditing",
    "training",
    "deploy",
    "inference",
    "model",
    "pictures",
    "evaluation",
    "data",
    "common",
)
"""The library's packages from the top down, as docs/architecture.md's house table has them, then its
two bottom modules: each imports only what is below it, and none imports a command."""
BOTTOM = ("compat", "errors")


def upward_imports(source: str, own: str) -> list[str]:
    """Imports of detlit code (function-level ones included) that a module of ``own`` (a package of
    ``HOUSE`` or a module of ``BOTTOM``) may not make: ``line: module``. The package's version
    (``from detlit import __version__``) is allowed everywhere."""
    order = (*HOUSE, *BOTTOM)
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and node.module is not None:
            names = [node.module] if node.module != "detlit" else [f"detlit.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        else:
            continue
        for name in names:
            parts = name.split(".")
            if parts[0] != "detlit" or name == "detlit.__version__" or parts[1:2] == [own]:
                continue
            target = parts[1] if len(parts) > 1 else "detlit"
            if target not in order or order.index(target) < order.index(own):
                found.append(f"{node.lineno}: {name}")
    return found


def test_the_import_check_finds_upward_imports() -> None:
    source = textwrap.dedent(
        """
        from detlit import __version__
        from detlit.evaluation.matching import match_image
        from detlit.model import detections
        import detlit.data.coco
        def draw():
            from detlit.predict import main
            from detlit import DetectionModule
            from detlit.pictures.drawing import montage
        """
    )
    assert upward_imports(source, "pictures") == ["4: detlit.model", "7: detlit.predict", "8: detlit.DetectionModule"]


def test_the_packages_import_downward() -> None:
    """One way down the house: no cycle, and a package can be read knowing only those below it."""
    packages = {path.parent.name for path in (REPO / "detlit").glob("*/__init__.py")}
    assert packages == set(HOUSE), f"place each package in the house: {packages ^ set(HOUSE)}"
    found = {
        str(path.relative_to(REPO)): uses
        for path in sorted((REPO / "detlit").rglob("*.py"))
        for own in [path.relative_to(REPO / "detlit").parts[0].removesuffix(".py")]
        if own in (*HOUSE, *BOTTOM)
        for uses in [upward_imports(path.read_text(), own)]
        if uses
    }
    assert not found, f"imports against the house's order ({' > '.join(HOUSE)} > compat > errors): {found}"
