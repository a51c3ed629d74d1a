"""The one bounded reader of JSON bytes someone else wrote (an exported model's metadata, an HTTP body).

Python's JSON reader recurses once per nested list or object, so a document nested thousands deep
ends in a RecursionError, and a document of millions of tiny items takes many times its size in
Python objects. :func:`parse` bounds both from the raw bytes before anything is parsed: with the
strings taken out, it counts ``[`` and ``{`` (an upper bound on the nesting depth) and ``,`` (an
upper bound on the items), all at C speed (about 0.1 s for a 20 MB body of base64).
"""

from __future__ import annotations

import json
import re
from typing import Any

STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"')
"""A JSON string, escapes included (the loop unrolled, so a long string is one fast scan)."""


class JsonBoundsError(ValueError):
    """The bytes hold more lists and objects, or more items, than the caller admits."""


def parse(data: bytes, max_containers: int, max_items: int | None = None) -> Any:
    """The JSON document in ``data``, after its shape is checked against the bounds.

    Args:
        data: the bytes (UTF-8).
        max_containers: most ``[`` and ``{`` the bytes may hold (keep it well below Python's
            recursion limit, 1000).
        max_items: most ``,`` the bytes may hold; None: no bound on items.

    Raises:
        JsonBoundsError: a bound is exceeded; its message is a phrase for the caller's sentence
            (``nests or holds 100000 arrays and objects, more than the limit of 64``).
        ValueError: the bytes are not JSON (``json.JSONDecodeError``) or not UTF-8.
    """
    shape = STRING.sub(b'""', data)
    containers = shape.count(b"[") + shape.count(b"{")
    if containers > max_containers:
        raise JsonBoundsError(
            f"nests or holds {containers} arrays and objects, more than the limit of {max_containers}"
        )
    if max_items is not None:
        items = shape.count(b",")
        if items > max_items:
            raise JsonBoundsError(f"holds {items} items, more than the limit of {max_items}")
    return json.loads(data)
