"""Parsing XML from other organisations without trusting it, sans-I/O.

Every XML document that crosses a trust boundary (SOAP messages, WSDL files, legacy
answers) is parsed here and nowhere else:

- no DTD at all: a DOCTYPE is refused before any entity could be defined, which rules out
  external entities (XXE), entity expansion (billion laughs) and DTD-driven network access;
- no network access and no external files while parsing;
- bounded size, element depth, element count and text node length, checked while the
  document streams in, so a hostile document costs at most the limits.
"""

from __future__ import annotations

from dataclasses import dataclass

from lxml import etree

__all__ = ["XmlError", "XmlLimits", "parse_xml"]


class XmlError(ValueError):
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


def parse_xml(data: bytes, limits: XmlLimits = DEFAULT_LIMITS) -> etree._Element:
    """The root element of ``data``, or XmlError naming what is wrong with it."""
    if not isinstance(data, bytes):
        raise XmlError("XML must be given as bytes (the encoding is declared inside)")
    if len(data) > limits.max_bytes:
        raise XmlError(f"XML document of {len(data)} bytes exceeds the limit of {limits.max_bytes}")
    if not data.strip():
        raise XmlError("empty XML document")
    parser = etree.XMLPullParser(events=("start", "end", "start-ns"), **_OPTIONS)
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
        parser.close()
    except etree.XMLSyntaxError as exc:
        raise XmlError(f"malformed XML: {exc.msg}") from exc
    if root is None:
        raise XmlError("XML document has no root element")
    _no_doctype(root)
    return root


def _no_doctype(element: etree._Element) -> None:
    docinfo = element.getroottree().docinfo
    if docinfo.doctype or docinfo.internalDTD is not None or docinfo.externalDTD is not None:
        raise XmlError("XML with a DOCTYPE is refused (no DTDs, no entities)")


def _check_text(element: etree._Element, limit: int) -> None:
    for text in (element.text, element.tail):
        if text is not None and len(text) > limit:
            raise XmlError(f"XML text node longer than {limit} characters")
