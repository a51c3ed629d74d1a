"""``python -m detlit.env``: the versions detlit runs with (torch, detectron2 and its compiled ops, ...)."""

from __future__ import annotations

import argparse

from detlit.common import command


def build_parser() -> argparse.ArgumentParser:
    return command.parser("env", "Print the versions detlit runs with, for bug reports.")


def run(args: argparse.Namespace) -> int:
    from detlit.common.env import collect_env, format_env

    print(format_env(info=collect_env()))
    return 0


def main(argv: list[str] | None = None) -> None:
    command.run(build_parser(), run, argv)


if __name__ == "__main__":
    main()
