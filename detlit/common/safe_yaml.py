"""The one reader of YAML that someone else may have written: plain data only, and bounded.

Configs, ``--model.overrides`` values, search spaces, augmentation lists, run folders and
detectron2 config files can all come from elsewhere (a colleague, a download, a checkpoint that
names a file). PyYAML's safe loader already builds no Python objects, but it still expands
aliases: a "billion laughs" file of a few hundred bytes, whose anchors each repeat the previous
one ten times, becomes a structure that every later step (merging, validating, saving the
config) walks and copies until memory runs out. Before anything is built, :func:`check_yaml`
reads the parser's event stream once, which never recurses, and refuses in one sentence naming
the source and line:

* a tag that is not plain YAML (``!!python/...`` or any application tag);
* nesting deeper than :data:`MAX_DEPTH`;
* an anchor used inside itself (a recursive structure);
* more than :data:`MAX_NODES` nodes, or :data:`MAX_TEXT` characters of scalars, once every
  alias is expanded (each anchor's expanded size is computed once, when it closes, so the check
  is linear in the text however deep the aliases go);
* text longer than :data:`MAX_BYTES` (a file's size is checked before it is read).

Every refusal is a :class:`~detlit.errors.ConfigError`; so is text that is not YAML at all.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from detlit.errors import ConfigError, DetlitError

MAX_BYTES = 8 * 2**20
"""Largest YAML text (bytes of a file, characters of a string): configs are a few kilobytes."""
MAX_NODES = 100_000
"""Most nodes (mappings, lists, scalars) a YAML document may hold with its aliases expanded."""
MAX_TEXT = 32 * 2**20
"""Most characters its scalars may hold with its aliases expanded."""
MAX_DEPTH = 100
"""Deepest nesting of mappings and lists."""

# libyaml's parser when PyYAML was built with it (faster); the pure-Python one otherwise.
Loader: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

STANDARD_TAG = "tag:yaml.org,2002:"
PLAIN_TAGS = frozenset(
    tag for tag in yaml.SafeLoader.yaml_constructors if isinstance(tag, str) and tag.startswith(STANDARD_TAG)
)
"""The tags of plain data (str, int, float, bool, null, map, seq, binary, timestamp, set, omap,
pairs), for which the safe loader has a constructor; every other tag is refused."""


def short_tag(tag: str) -> str:
    """A tag as it is written in a file (``!!python/object/apply:os.system``)."""
    return "!!" + tag[len(STANDARD_TAG) :] if tag.startswith(STANDARD_TAG) else tag


@dataclass
class _Open:
    """A mapping or list whose end the scan has not reached: its anchor and expanded size so far."""

    anchor: str | None
    nodes: int = 1
    text: int = 0


class _Scan:
    """One pass over a YAML event stream: tags, nesting, anchors and the expanded size so far."""

    def __init__(self, source: str):
        self.source = source
        self.anchors: dict[str, tuple[int, int]] = {}  # expanded (nodes, characters) of each closed anchor
        self.open: list[_Open] = []
        self.nodes = 0
        self.characters = 0

    def take(self, event: yaml.Event) -> None:
        line = event.start_mark.line + 1 if event.start_mark is not None else 0
        if isinstance(event, (yaml.ScalarEvent, yaml.CollectionStartEvent)):
            _check_tag(event.tag, self.source, line)
        if isinstance(event, yaml.CollectionStartEvent):
            self.start(event.anchor, line)
        elif isinstance(event, yaml.CollectionEndEvent):
            self.end()
        elif isinstance(event, yaml.ScalarEvent):
            size = (1, len(event.value))
            if event.anchor is not None:
                self.anchors[event.anchor] = size
            self.add(size, line)
        elif isinstance(event, yaml.AliasEvent):
            if any(item.anchor == event.anchor for item in self.open):
                raise ConfigError(
                    f"{self.source} uses anchor &{event.anchor} inside itself (line {line}), a structure without "
                    "end; write the value out instead of the alias"
                )
            # An alias of an anchor not (yet) defined: the parser's own error comes later.
            self.add(self.anchors.get(event.anchor or "", (1, 0)), line)

    def start(self, anchor: str | None, line: int) -> None:
        if len(self.open) >= MAX_DEPTH:
            raise ConfigError(
                f"{self.source} nests lists and mappings more than {MAX_DEPTH} deep (line {line}); a detlit "
                "config is a few levels deep: flatten it"
            )
        self.count((1, 0), line)
        self.open.append(_Open(anchor))

    def end(self) -> None:
        closed = self.open.pop()
        if closed.anchor is not None:
            self.anchors[closed.anchor] = (closed.nodes, closed.text)
        if self.open:  # its nodes were counted as they came: only its anchor's parent learns its size
            self.open[-1].nodes += closed.nodes
            self.open[-1].text += closed.text

    def add(self, size: tuple[int, int], line: int) -> None:
        if self.open:
            self.open[-1].nodes += size[0]
            self.open[-1].text += size[1]
        self.count(size, line)

    def count(self, size: tuple[int, int], line: int) -> None:
        self.nodes += size[0]
        self.characters += size[1]
        if self.nodes > MAX_NODES or self.characters > MAX_TEXT:
            raise ConfigError(
                f"{self.source} expands to more than {MAX_NODES:,} values or {MAX_TEXT:,} characters once its "
                f"aliases (*name) are repeated (line {line}); write the values out, a detlit config is small"
            )


def check_yaml(text: str, source: str) -> None:
    """Refuse, before anything is built, YAML that is not plain data or expands past the bounds.

    Args:
        text: the YAML text.
        source: what the text is, for the message (``config file x.yaml``, ``search space y.yaml``).

    Raises:
        ConfigError: one sentence naming ``source`` (and the line where the scan stopped); text
            that is not YAML at all is one too.
    """
    try:
        _scan(text, source)
    except yaml.YAMLError as err:
        raise ConfigError(_not_yaml(source, err)) from err


def _scan(text: str, source: str) -> None:
    """:func:`check_yaml`, leaving a syntax error as PyYAML's own exception."""
    if len(text) > MAX_BYTES:
        raise ConfigError(
            f"{source} holds {len(text):,} characters, more than the {MAX_BYTES:,} a detlit YAML may have; "
            "pass a config, not a data file"
        )
    scan = _Scan(source)
    for event in yaml.parse(text, Loader=Loader):
        scan.take(event)


def _check_tag(tag: str | None, source: str, line: int) -> None:
    if tag is None or tag == "!" or tag in PLAIN_TAGS:
        return
    written = short_tag(tag)
    if tag.startswith(STANDARD_TAG + "python/"):
        raise ConfigError(
            f"{source} line {line} has the tag {written}, which would build a Python object (and can run code); "
            "detlit reads plain YAML only: remove the tag"
        )
    raise ConfigError(
        f"{source} line {line} has the tag {written}, which is not plain YAML; detlit reads mappings, lists, "
        "strings, numbers and booleans only: remove the tag"
    )


def _not_yaml(source: str, err: yaml.YAMLError) -> str:
    mark = getattr(err, "problem_mark", None)
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    problem = getattr(err, "problem", None) or str(err).splitlines()[0] or type(err).__name__
    return f"{source} is not valid YAML ({problem}{where}); fix the syntax"


def load_yaml(text: str, source: str) -> Any:
    """Plain data of a YAML text, checked by :func:`check_yaml` before it is built.

    Raises:
        ConfigError: see :func:`check_yaml`; or the text is not one valid YAML document.
    """
    check_yaml(text, source)
    try:
        return yaml.load(text, Loader=Loader)
    except yaml.YAMLError as err:
        raise ConfigError(_not_yaml(source, err)) from err


def read_text(path: Path, source: str, limit: int = MAX_BYTES) -> str:
    """The UTF-8 text of a regular file whose size is checked before it is read.

    Raises:
        ConfigError: missing, not a regular file (a folder, a pipe, a device), larger than
            ``limit`` bytes, or not UTF-8 text.
    """
    if not path.exists():
        raise ConfigError(f"{source} does not exist; check the path")
    if not path.is_file():
        raise ConfigError(f"{source} is not a regular file; pass a YAML file")
    with path.open("rb") as handle:
        size = os.fstat(handle.fileno())
        if not stat.S_ISREG(size.st_mode):  # replaced since the check above
            raise ConfigError(f"{source} is not a regular file; pass a YAML file")
        if size.st_size > limit:
            raise ConfigError(
                f"{source} is {size.st_size:,} bytes, more than the {limit:,} a detlit YAML may have; "
                "pass a config, not a data file"
            )
        data = handle.read(limit + 1)
    if len(data) > limit:  # it grew while being read
        raise ConfigError(f"{source} is more than {limit:,} bytes, the most a detlit YAML may have")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise ConfigError(f"{source} is not UTF-8 text (byte {err.start}); pass a YAML file") from err


def read_yaml(path: Path, source: str | None = None) -> Any:
    """Plain data of a YAML file: its size checked before it is read, its content by :func:`check_yaml`.

    Args:
        path: the file.
        source: what the file is, for messages (default: the path).

    Raises:
        ConfigError: see :func:`read_text` and :func:`load_yaml`.
    """
    named = source or str(path)
    return load_yaml(read_text(path, named), named)


CLI_MODE = "detlit_yaml"
"""The jsonargparse parser mode whose loader :func:`register_cli_loader` registers."""


class RefusedInParser(DetlitError):
    """A refusal of :func:`check_yaml` met while jsonargparse parses the command line.

    jsonargparse rewords every ValueError of a value's loader into its own multi-line message,
    or keeps the text as a plain string where the option also takes one; a refusal is neither, so
    it is raised as this error, which passes through unchanged and ends as one sentence.
    """


def register_cli_loader() -> str:
    """Make jsonargparse read configs and command-line values through :func:`check_yaml` first.

    jsonargparse (LightningCLI's parser) reads a ``--config`` file and every structured value on
    the command line (``--model.overrides={...}``) with its own safe YAML loader, which expands
    aliases. This registers a parser mode that checks the text first, then hands it to that
    loader unchanged, so values parse exactly as before; text that is not YAML is left to
    jsonargparse as before (it may be a plain string).

    Returns:
        The mode to give the parser (``parser_mode``).
    """
    from jsonargparse import get_loader, set_loader

    if CLI_MODE in _registered:
        return CLI_MODE
    plain: Callable[[str], Any] = get_loader("yaml")

    def load(text: str, path: Any = "") -> Any:
        # jsonargparse gives a config file's name and reads it from within the file's folder.
        source = f"config file {os.path.abspath(path)}" if path else f"the command-line value {_clip(text)}"
        try:
            _scan(text, source)
        except ConfigError as err:
            raise RefusedInParser(str(err)) from err
        return plain(text)

    set_loader(CLI_MODE, load, exceptions=(yaml.YAMLError,))
    _registered.add(CLI_MODE)
    return CLI_MODE


_registered: set[str] = set()


def _clip(text: str, width: int = 60) -> str:
    shown = " ".join(text.split())
    return repr(shown if len(shown) <= width else shown[: width - 3] + "...")
