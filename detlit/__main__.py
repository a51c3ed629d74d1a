"""The ``detlit`` command: ``detlit <command> [args]`` runs ``python -m detlit.<command> [args]``
(``detlit validate`` and ``detlit test`` run ``python -m detlit.fit validate`` / ``test``)."""

from __future__ import annotations

import importlib
import sys
from importlib import resources

COMMANDS = {
    "fit": "train a detector from a YAML config",
    "validate": "validate a checkpoint with a fit config (python -m detlit.fit validate)",
    "test": "test a checkpoint on data.test_json with a fit config (python -m detlit.fit test)",
    "check": "validate (and repair) a COCO dataset",
    "split": "split a COCO dataset into train and val",
    "tile": "cut a COCO dataset of large images into tiles, for small objects",
    "convert": "YOLO, Pascal VOC, LabelMe or CVAT labels into a COCO json, and COCO into YOLO",
    "evaluate": "COCO metrics, precision / recall / F1 of a model or a results file",
    "audit": "rank likely label mistakes from out-of-fold predictions; apply the accepted ones",
    "predict": "run a trained model on images and folders",
    "export": "export a checkpoint to TorchScript or ONNX, with a parity check",
    "serve": "serve a checkpoint or exported model over HTTP (LitServe)",
    "report": "write the HTML / Markdown report of a run",
    "browse": "draw what the training loader produces",
    "tune": "search hyper-parameters with Optuna",
    "sample": "write the synthetic sample dataset",
    "env": "print the versions detlit runs with",
    "config": "print a config that ships with detlit (detlit config sample_cpu > my.yaml)",
}


def usage() -> str:
    width = max(len(name) for name in COMMANDS)
    lines = [f"  {name:<{width}}  {text}" for name, text in COMMANDS.items()]
    return "usage: detlit <command> [args]  (detlit <command> --help for its options)\n\ncommands:\n" + "\n".join(lines)


def print_config(name: str) -> int:
    """Print a packaged config (``configs/<name>.yaml``)."""
    folder = resources.files("detlit") / "configs"
    available = sorted(p.name.removesuffix(".yaml") for p in folder.iterdir() if p.name.endswith(".yaml"))
    if name not in available:
        print(f"error: no packaged config '{name}'; available: {', '.join(available)}", file=sys.stderr)
        return 2
    print((folder / f"{name}.yaml").read_text(), end="")
    return 0


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] in ("-h", "--help"):
        print(usage())
        sys.exit(0 if args else 2)
    command, rest = args[0], args[1:]
    if command not in COMMANDS:
        print(f"error: unknown command '{command}'\n\n{usage()}", file=sys.stderr)
        sys.exit(2)
    if command == "config":
        sys.exit(print_config(rest[0] if rest else ""))
    if command in ("validate", "test"):  # stages of the fit command
        command, rest = "fit", [command, *rest]
    module = importlib.import_module(f"detlit.{command}")
    sys.argv = [f"detlit {command}", *rest]
    module.main(rest)


if __name__ == "__main__":
    main()
