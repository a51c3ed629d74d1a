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
``--slice SIZE``          sliced inference on tiles of SIZE pixels (with ``--slice-*`` settings)
``--quiet`` / ``--verbose``  fewer or more log lines
========================  ====================================================================

Exit status, every command: 0 done; 1 done, but findings or errors remain (``check`` found
errors, ``predict`` could read no image, every ``tune`` trial failed); 2 unusable input or a usage
error, with one sentence on stderr that names the file or option and the fix.
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import NoReturn, TypeAlias, TypeVar

from detlit.common.outputs import write_failure
from detlit.common.paths import name_failure, name_message, printable, too_long, undecodable
from detlit.common.ranges import MAX_BATCH_SIZE, MAX_FOLDS, MAX_OVERLAP, MAX_SEED, MIN_TILE_SIZE
from detlit.errors import ConfigError, DetlitError

EXIT_OK = 0
EXIT_FINDINGS = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as a shell reports Ctrl-C

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
        say(str(err))
        sys.exit(EXIT_USAGE)
    except (OSError, RuntimeError) as err:
        too_long = name_failure(err)
        failed = write_failure(err)
        if too_long is not None:
            say(name_message(too_long))
        elif failed is not None:
            say(write_message(failed))
        else:
            raise
        sys.exit(EXIT_USAGE)


def say(sentence: str) -> None:
    """Print the one sentence of a failed command; a path's undecodable bytes print as ``\\xff``."""
    print(f"error: {printable(sentence)}", file=sys.stderr)


def run_cli(main: Callable[[list[str] | None], T], args: list[str] | None = None) -> T:
    """Run an entry point; a user error ends in one sentence and exit status 2, not a traceback."""
    configure_logging()
    with one_sentence():
        refuse_undecodable(sys.argv[1:] if args is None else args)
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
    with one_sentence():
        refuse_undecodable(sys.argv[1:] if argv is None else argv)
    if passthrough:
        args, rest = parser.parse_known_args(argv)
        args.passthrough = rest
    else:
        args = parser.parse_args(argv)
    with one_sentence():
        refuse_long_names(parser, args)
    quiet, verbose = getattr(args, "quiet", False), getattr(args, "verbose", False)
    configure_logging(logging.WARNING if quiet else logging.DEBUG if verbose else logging.INFO)
    with one_sentence():
        status = job(args)
    sys.exit(EXIT_OK if status is None else status)


def refuse_undecodable(argv: list[str]) -> None:
    """Refuse an argument holding bytes that are not UTF-8 (a file name from another system, kept
    by Python as surrogate escapes): detlit writes the names it is given into UTF-8 json, yaml and
    log files, which cannot hold them, so the run would fail at its first such write.

    Raises:
        ConfigError: one sentence quoting the argument with its bytes as ``\\xff``.
    """
    for arg in argv:
        if undecodable(arg):
            raise ConfigError(
                f"the argument {printable(arg)} holds bytes that are not UTF-8 text; rename that file or folder "
                "(detlit writes the names it is given into json, yaml and log files)"
            )


def refuse_long_names(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Refuse a path option with a name the filesystem cannot hold (over 255 bytes), before any
    work: a command must not fail on it half-way, after creating the folders before it.

    Raises:
        ConfigError: one sentence naming the option, the name and its length.
    """
    options = {action.dest: (action.option_strings or [action.dest])[-1] for action in parser._actions}
    for dest, value in vars(args).items():
        for path in value if isinstance(value, list) else [value]:
            problem = too_long(path) if isinstance(path, Path) else None
            if problem is not None:
                raise ConfigError(f"{options.get(dest, dest)}: {problem}; choose a shorter name")


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


def whole_number(low: int, high: int | None = None, why: str = "", small: str = "") -> Callable[[str], int]:
    """An argparse type: a whole number from ``low`` to ``high``; ``why`` says where the upper bound
    comes from, ``small`` what a value below ``low`` is (``too small to show anything``)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"{value} is {small or f'below {low}'}; give {low} or more")
        if high is not None and value > high:
            raise argparse.ArgumentTypeError(f"{value} is above {high}{why}; give {high} or less")
        return value

    return parse


seed = whole_number(0, MAX_SEED, " (seeds are 32-bit)")
"""An argparse type: a seed, 0 to 2**32 - 1 (what numpy's and Optuna's generators take)."""

folds = whole_number(2, MAX_FOLDS, " (every fold writes the whole dataset again)", "too few to cross-validate")
"""An argparse type: a number of cross-validation folds, 2 to 100."""

batch_size = whole_number(1, MAX_BATCH_SIZE, " (far more images than fit in memory at once)")
"""An argparse type: images per forward pass."""


def seconds(text: str) -> float:
    """An argparse type: a time in seconds above 0 (not NaN, not infinity: leave the option out for no limit)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"{value} is not a time above 0 seconds; give one, or leave the option out")
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
        or "an exported model (.torchscript, .onnx or .xml, its metadata json beside it) of python -m detlit.export",
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
        type=batch_size,
        default=default,
        metavar="N",
        help=f"images per forward pass (default: {default})",
    )


def overlap(text: str) -> float:
    """An argparse type: a tile overlap, a fraction from 0 to :data:`~detlit.common.ranges.MAX_OVERLAP`."""
    value = fraction(text)
    if value > MAX_OVERLAP:
        raise argparse.ArgumentTypeError(f"{value} is above {MAX_OVERLAP}; 0.2 is usual")
    return value


def add_slicing(parser: argparse.ArgumentParser, merge: str = "greedynmm") -> None:
    """The options of sliced inference (:class:`~detlit.inference.slicing.Slicing`): off unless ``--slice``.

    ``merge``: the default of ``--slice-merge``; ``nms`` where every detection is kept (evaluate),
    since greedy merging lets low-scoring boxes grow the good ones."""
    group = parser.add_argument_group(
        "sliced inference", "small objects in large images: run the model on overlapping tiles at full resolution"
    )
    group.add_argument(
        "--slice",
        type=whole_number(MIN_TILE_SIZE, small="below the smallest tile"),
        metavar="SIZE",
        help="cut each image into tiles of SIZE x SIZE pixels (of the original image), run the model on each and "
        "merge the detections (default: the whole image, resized)",
    )
    group.add_argument(
        "--slice-overlap",
        type=overlap,
        default=0.2,
        metavar="F",
        help=f"overlap of neighbouring tiles, a fraction of SIZE, 0 to {MAX_OVERLAP} (default: 0.2)",
    )
    group.add_argument(
        "--slice-full-image",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also run the model on the whole image, for objects larger than a tile (default: on)",
    )
    group.add_argument(
        "--slice-merge",
        choices=["greedynmm", "nms"],
        default=merge,
        help="merge the detections of one object: greedynmm grows the best box to their union, nms keeps the best "
        f"box only (default: {merge})",
    )
    group.add_argument(
        "--slice-match",
        choices=["ios", "iou"],
        default="ios",
        help="when two detections are one object: intersection over the smaller box, or over the union (default: ios)",
    )
    group.add_argument(
        "--slice-match-threshold",
        type=fraction,
        default=0.5,
        metavar="T",
        help="overlap at which two detections of one class are one object (default: 0.5)",
    )
