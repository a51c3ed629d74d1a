"""The one reader of XML files, which come from strangers (Pascal VOC and CVAT label files).

XML can declare entities that expand a few hundred bytes into gigabytes ("billion laughs"), or that
read other files and URLs (external entities). The parser here is defusedxml's SAX driver with DTDs
forbidden: a ``<!DOCTYPE``, an ``<!ENTITY`` or an external reference is refused in one sentence with
its line, before anything is expanded. The file's size is bounded before it is read
(:func:`~detlit.data.formats.common.read_bounded`); the tree is built without recursion, and each
element keeps the line it starts on, so a problem sentence names the file, the element and the line
(ElementTree keeps no line numbers).
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from typing import Any
from xml.sax import SAXParseException
from xml.sax.handler import ContentHandler
from xml.sax.xmlreader import InputSource, Locator

from defusedxml import DefusedXmlException, DTDForbidden, EntitiesForbidden
from defusedxml.sax import make_parser

from detlit.errors import DataError


@dataclass
class Element:
    """An XML element: its tag, attributes, the line it starts on, its text and its children."""

    tag: str
    attrib: dict[str, str]
    line: int
    children: list[Element] = field(default_factory=list)
    text: str = ""

    def find(self, tag: str) -> Element | None:
        """The first child of this tag."""
        return next((child for child in self.children if child.tag == tag), None)

    def findall(self, tag: str) -> list[Element]:
        """The children of this tag."""
        return [child for child in self.children if child.tag == tag]

    def findtext(self, tag: str) -> str | None:
        """The stripped text of the first child of this tag, or None without one."""
        child = self.find(tag)
        return None if child is None else child.text

    def path(self, *tags: str) -> Element | None:
        """The first element down a path of tags."""
        found: Element | None = self
        for tag in tags:
            found = found.find(tag) if found is not None else None
        return found


class _Builder(ContentHandler):
    """Builds :class:`Element` trees from SAX events, with an explicit stack (no recursion)."""

    def __init__(self) -> None:
        super().__init__()
        self.locator: Locator | None = None
        self.stack: list[tuple[Element, list[str]]] = []
        self.root: Element | None = None

    def setDocumentLocator(self, locator: Locator) -> None:
        self.locator = locator

    def line(self) -> int:
        return int(self.locator.getLineNumber() or 0) if self.locator is not None else 0

    def startElement(self, name: str, attrs: Any) -> None:
        element = Element(name, dict(attrs.items()), self.line())
        if self.stack:
            self.stack[-1][0].children.append(element)
        else:
            self.root = element
        self.stack.append((element, []))

    def characters(self, content: str) -> None:
        if self.stack:
            self.stack[-1][1].append(content)

    def endElement(self, name: str) -> None:
        element, text = self.stack.pop()
        element.text = "".join(text).strip()


def parse_xml(data: bytes, source: str, kind: str = "label XML", remedy: str | None = None) -> Element:
    """The root element of an XML document, parsed without DTDs or entities.

    Args:
        data: the document's bytes (bounded by the caller).
        source: the file, for messages.
        kind: what the document is, for messages (``label XML``, ``OpenVINO graphs``).
        remedy: the fix the messages end with (default: remove the declaration, fix the file).

    Raises:
        DataError: the document declares a DTD or an entity, or is not well-formed XML (one
            sentence with the line).
    """
    builder = _Builder()
    parser = make_parser()
    parser.forbid_dtd = True
    parser.forbid_entities = True
    parser.forbid_external = True
    parser.setContentHandler(builder)
    stream = InputSource()
    stream.setByteStream(io.BytesIO(data))
    try:
        parser.parse(stream)
    except (DTDForbidden, EntitiesForbidden) as err:
        what = "a DTD (<!DOCTYPE ...>)" if isinstance(err, DTDForbidden) else f"the entity {err.name!r}"
        raise DataError(
            f"{source} line {builder.line()} declares {what}; detlit reads {kind} without DTDs or entities "
            f"(they can expand a few bytes into gigabytes, or read other files): {remedy or 'remove the declaration'}"
        ) from None
    except DefusedXmlException as err:
        raise DataError(
            f"{source} line {builder.line()} refers to an external entity ({type(err).__name__}); detlit reads "
            f"{kind} without entities: {remedy or 'remove the reference'}"
        ) from None
    except SAXParseException as err:
        raise DataError(
            f"{source} is not well-formed XML (line {err.getLineNumber()}, column {(err.getColumnNumber() or 0) + 1}: "
            f"{err.getMessage()}); {remedy or 'fix the file or export it again'}"
        ) from None
    if builder.root is None:
        raise DataError(f"{source} holds no XML element; {remedy or 'export the labels again'}")
    return builder.root
