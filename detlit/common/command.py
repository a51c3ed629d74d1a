"""What every ``python -m detlit.X`` command shares: its option vocabulary, its logging, how it ends.

One name per idea, in every command:

========================  ====================================================================
``--ckpt CKPT``           a detlit checkpoint (``.ckpt``) of a training run
``--model MODEL``         an exported model (``.torchscript``, ``.onnx``) of ``python -m detlit.export``
``--json JSON``           a COCO annotation json
``--images FOLDER``       the folder the json's ``file_name`` entries are relative to
``--out FOLDER``          the folder the command writes into
``--overwrite``           let the command replace files it wrote before (never one it reads)
``--device DEVICE``       ``auto`` (default: a CUDA GPU when there is one), ``cpu``, ``cuda:N``
``--batch-size N``        images per forward pass
``--quiet`` / ``--verbose``  fewer or more log lines
========================  ====================================================================

Exit status, every command: 0 done; 1 done, but findings or errors remain (``check`` found
errors, ``predict`` could read no image, every ``tune`` trial failed); 2 unusable input or a usage
error, with one sentence on stderr that names the file or option and the fix.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import NoReturn, TypeAlias, TypeVar

from detlit.common.outputs import write_failure
from detlit.errors import DetlitError

EXIT_OK = 0
EXIT_FINDINGS = 1
EXIT_USAGE = 2

T = TypeVar("T")
Options: TypeAlias = "argparse._ActionsContainer"  # a parser, or a group of exclusive options in it


def configure_logging(level: int = logging.INFO) -> None:
    """Messages of detlit (and what it captures) on stderr, one line each."""
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    logging.getLogger().setLevel(level)


@contextmanager
def one_sentence() -> Iterator[None]:
    """A user error (or a write the user can make succeed) ends in one sentence and exit status 2."""
    try:
        yield
    except DetlitError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(EXIT_USAGE)
    except (OSError, RuntimeError) as err:
        failed = write_failure(err)
        if failed is None:
            raise
        print(f"error: {write_message(failed)}", file=sys.stderr)
        sys.exit(EXIT_USAGE)


def run_cli(main: Callable[[list[str] | None], T], args: list[str] | None = None) -> T:
    """Run an entry point; a user error ends in one sentence and exit status 2, not a traceback."""
    configure_logging()
    with one_sentence():
        return main(args)


def run(
    parser: argparse.ArgumentParser,
    job: Callable[[argparse.Namespace], int | None],
    argv: list[str] | None,
    passthrough: bool = False,
) -> NoReturn:
    """Parse the arguments, run the command's job, and exit with its status (see the module docstring).

    With ``passthrough``, arguments the parser does not know are handed on in ``args.passthrough``
    (``browse`` gives them to the fit parser).
    """
    if passthrough:
        args, rest = parser.parse_known_args(argv)
        args.passthrough = rest
    else:
        args = parser.parse_args(argv)
    quiet, verbose = getattr(args, "quiet", False), getattr(args, "verbose", False)
    configure_logging(logging.WARNING if quiet else logging.DEBUG if verbose else logging.INFO)
    with one_sentence():
        status = job(args)
    sys.exit(EXIT_OK if status is None else status)


def write_message(err: OSError) -> str:
    """One sentence for a write the user can make succeed (a full disk, a read-only folder)."""
    where = err.filename or "an output file"
    return f"could not write {where} ({err.strerror}); free disk space or choose a writable folder (--out)"


# --- the vocabulary ----------------------------------------------------------------------------


def positive_int(text: str) -> int:
    """An argparse type: a whole number of at least 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is below 1; give 1 or more")
    return value


def fraction(text: str) -> float:
    """An argparse type: a number from 0 to 1."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"{value} is not between 0 and 1")
    return value


def parser(name: str, description: str, epilog: str | None = None) -> argparse.ArgumentParser:
    """The parser of ``python -m detlit.<name>``, with ``--quiet`` / ``--verbose``."""
    made = argparse.ArgumentParser(
        prog=f"python -m detlit.{name}",
        description=description,
        epilog=epilog,
        allow_abbrev=False,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    verbosity = made.add_mutually_exclusive_group()
    verbosity.add_argument("--quiet", action="store_true", help="log warnings and errors only")
    verbosity.add_argument("--verbose", action="store_true", help="log every detail")
    return made


def add_ckpt(parser: Options, required: bool = True, help: str | None = None) -> None:
    parser.add_argument(
        "--ckpt",
        type=Path,
        required=required,
        metavar="CKPT",
        help=help or "detlit checkpoint (.ckpt) of a training run",
    )


def add_model(parser: Options, required: bool = False, help: str | None = None) -> None:
    parser.add_argument(
        "--model",
        type=Path,
        required=required,
        metavar="MODEL",
        help=help
        or "an exported model (.torchscript or .onnx, its metadata json beside it) of python -m detlit.export",
    )


def add_json(parser: argparse.ArgumentParser, required: bool = True, help: str | None = None) -> None:
    parser.add_argument("--json", type=Path, required=required, metavar="JSON", help=help or "COCO annotation json")


def add_images(parser: argparse.ArgumentParser, required: bool = True, help: str | None = None) -> None:
    parser.add_argument(
        "--images",
        type=Path,
        required=required,
        metavar="FOLDER",
        help=help or "folder the json's file names are relative to",
    )


def add_out(parser: argparse.ArgumentParser, default: str | None, help: str) -> None:
    parser.add_argument(
        "--out", type=Path, default=None if default is None else Path(default), metavar="FOLDER", help=help
    )


def add_overwrite(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--overwrite", action="store_true", help="replace files this command wrote before (never one it reads)"
    )


def add_device(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--device", default="auto", help="auto (default: the GPU when there is one), cpu, cuda or cuda:N"
    )


def add_batch_size(parser: argparse.ArgumentParser, default: int = 4) -> None:
    parser.add_argument(
        "--batch-size",
        type=positive_int,
        default=default,
        metavar="N",
        help=f"images per forward pass (default: {default})",
    )
