"""Parsing XML from other organisations without trusting it, sans-I/O.

Every XML document that crosses a trust boundary (SOAP messages, WSDL files, legacy
answers) is parsed here and nowhere else:

- no DTD at all: a DOCTYPE is refused before any entity could be defined, which rules out
  external entities (XXE), entity expansion (billion laughs) and DTD-driven network access;
- no network access and no external files while parsing;
- bounded size, element depth, element count and text node length, checked while the
  document streams in, so a hostile document costs at most the limits;
- on request (``plain_text``, for messages a node checks and then forwards byte for byte),
  nothing whose text other readers could read differently: see ``parse_xml``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from xml.parsers import expat

from lxml import etree

from xroad_hub.errors import HubError

__all__ = ["XmlError", "XmlLimits", "parse_xml"]


class XmlError(HubError, ValueError):
    """The document is not acceptable XML; the message says which rule it broke."""


@dataclass(frozen=True, slots=True)
class XmlLimits:
    max_bytes: int = 10 * 1024 * 1024
    max_depth: int = 100
    max_elements: int = 200_000
    max_text: int = 10 * 1024 * 1024  # one text node, e.g. a base64 payload inside the body
    # Namespace declarations: lxml copies namespace maps in quadratic time, so thousands
    # of declarations in one small document would stall whoever handles it next.
    max_namespaces: int = 1000


DEFAULT_LIMITS = XmlLimits()


# Comments are dropped so that text split by a comment reads as one value, the same way
# every other XML reader sees it (a check must not read "AB" where the service reads "ABC").
_OPTIONS = dict(
    resolve_entities=False,
    no_network=True,
    load_dtd=False,
    huge_tree=False,
    remove_pis=True,
    remove_comments=True,
    collect_ids=False,
)


# "<!" starts a comment or a CDATA section (a DOCTYPE is refused), "<?" a PI.
_MARKUP = re.compile(rb"<[!?]")
_XSI_NS = "http://www.w3.org/2001/XMLSchema-instance"
_XSI_NIL = f"{{{_XSI_NS}}}nil"


def parse_xml(
    data: bytes, limits: XmlLimits = DEFAULT_LIMITS, *, plain_text: bool = False
) -> etree._Element:
    """The root element of ``data``, or XmlError naming what is wrong with it.

    ``plain_text``: the document is passed on as it is to a reader we do not control (a SOAP
    service), so it must not hold text that readers can read differently. Refused are a
    comment or processing instruction next to an element's text (lxml here joins
    ``155<!---->0`` into "1550"; DOM's first text node, ElementTree-like ``.text`` of a
    comment-keeping parser read "155"), a CDATA section that is not the whole text of its
    element (the same split), text next to child elements (mixed content: some readers take
    the first text node, some all text), and xsi:nil="true" on an element with content
    (schema-aware readers see no value). Character and entity references are not refused:
    every XML reader resolves them alike."""
    if not isinstance(data, bytes):
        raise XmlError("XML must be given as bytes (the encoding is declared inside)")
    if len(data) > limits.max_bytes:
        raise XmlError(f"XML document of {len(data)} bytes exceeds the limit of {limits.max_bytes}")
    if not data.strip():
        raise XmlError("empty XML document")
    parser = etree.XMLPullParser(events=("start", "end", "start-ns"), **_OPTIONS)
    # Looking for xsi:nil only where the namespace is declared keeps big documents cheap.
    may_nil = plain_text and _XSI_NS.encode() in data
    depth = 0
    elements = 0
    namespaces = 0
    root: etree._Element | None = None
    chunk = 64 * 1024
    try:
        for pos in range(0, len(data), chunk):
            parser.feed(data[pos : pos + chunk])
            for event, element in parser.read_events():
                if event == "start-ns":
                    namespaces += 1
                    if namespaces > limits.max_namespaces:
                        raise XmlError(f"XML declares more than {limits.max_namespaces} namespaces")
                elif event == "start":
                    if root is None:
                        root = element
                        _no_doctype(element)
                    depth += 1
                    elements += 1
                    if depth > limits.max_depth:
                        raise XmlError(f"XML nesting deeper than {limits.max_depth} elements")
                    if elements > limits.max_elements:
                        raise XmlError(f"XML document has more than {limits.max_elements} elements")
                else:
                    depth -= 1
                    _check_text(element, limits.max_text)
                    if plain_text and (len(element) or may_nil):
                        _check_plain(element)
        parser.close()
    except etree.XMLSyntaxError as exc:
        raise XmlError(f"malformed XML: {exc.msg}") from exc
    if root is None:
        raise XmlError("XML document has no root element")
    _no_doctype(root)
    if plain_text:
        _no_split_text(data)
    return root


def _check_plain(element: etree._Element) -> None:
    """Mixed content and xsi:nil with content (comments are already removed from the tree,
    so its children are elements)."""
    if len(element):
        texts = [element.text, *(child.tail for child in element)]
        if any(t is not None and t.strip() for t in texts):
            raise XmlError(
                f"element {etree.QName(element).localname} holds both text and elements; "
                "readers disagree on its text (put the text in an element of its own)"
            )
    nil = element.get(_XSI_NIL)
    if nil is not None and nil.strip() in ("true", "1") and (len(element) or element.text):
        raise XmlError(
            f"element {etree.QName(element).localname} is xsi:nil but has content; "
            "readers disagree on whether it has a value"
        )


def _no_split_text(data: bytes) -> None:
    """A second, exact reading with expat, only for documents holding comments, processing
    instructions or CDATA sections (the byte sequences that start them cannot occur
    elsewhere in a document without a DTD): none of them may split or hide an element's
    text."""
    start = 3 if data.startswith(b"\xef\xbb\xbf") else 0
    if data.startswith(b"<?xml", start):
        start += 5  # the XML declaration
    if _MARKUP.search(data, start) is None:
        return
    # Per open element: [name, text seen, non-blank text seen, comment/PI seen, CDATA count]
    stack: list[list[object]] = []
    in_cdata = False

    def start(name: str, _attrs: object) -> None:
        stack.append([name, False, False, False, 0])

    def end(_name: str) -> None:
        name, text, solid, markup, cdata = stack.pop()
        local = str(name).rpartition(":")[2]
        if markup and solid:
            raise XmlError(
                f"a comment or processing instruction inside the text of {local}: readers "
                "disagree on its value; remove it"
            )
        if cdata and (cdata > 1 or text or markup):  # type: ignore[operator]
            raise XmlError(
                f"a CDATA section in {local} is not its whole text: readers disagree on its "
                "value; send the text in one piece"
            )

    def chars(text: str) -> None:
        if not stack:
            return
        frame = stack[-1]
        if not in_cdata:
            frame[1] = True
        if text.strip():
            frame[2] = True

    def markup(*_args: object) -> None:
        if stack:
            stack[-1][3] = True

    def cdata_start() -> None:
        nonlocal in_cdata
        in_cdata = True
        if stack:
            stack[-1][4] = int(stack[-1][4]) + 1  # type: ignore[call-overload]

    def cdata_end() -> None:
        nonlocal in_cdata
        in_cdata = False

    parser = expat.ParserCreate()
    parser.buffer_text = True
    parser.StartElementHandler = start
    parser.EndElementHandler = end
    parser.CharacterDataHandler = chars
    parser.CommentHandler = markup
    parser.ProcessingInstructionHandler = markup
    parser.StartCdataSectionHandler = cdata_start
    parser.EndCdataSectionHandler = cdata_end
    try:
        parser.Parse(data, True)
    except expat.ExpatError as exc:  # lxml accepted it; expat must too
        raise XmlError(f"malformed XML: {exc}") from exc


def _no_doctype(element: etree._Element) -> None:
    docinfo = element.getroottree().docinfo
    if docinfo.doctype or docinfo.internalDTD is not None or docinfo.externalDTD is not None:
        raise XmlError("XML with a DOCTYPE is refused (no DTDs, no entities)")


def _check_text(element: etree._Element, limit: int) -> None:
    for text in (element.text, element.tail):
        if text is not None and len(text) > limit:
            raise XmlError(f"XML text node longer than {limit} characters")
