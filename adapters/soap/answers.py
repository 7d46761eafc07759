"""JSON answers read straight from the legacy service's XML, without zeep's object model.

``jsonmap.response_json`` lets zeep parse the response wrapper into its value objects, then
serialises those into dicts and JSON values: about 40% of the bridge's CPU per answer. Most
answers have a plain shape (a closed sequence of simple elements, nested complex types,
repeated elements, attributes), and for those this module builds, once per operation, a plan
that walks the lxml tree and yields the JSON value directly.

Theory of operation: the plan reproduces zeep's reading (zeep 4.3, strict mode) only on the
happy path, and gives up on anything else. Giving up (``_Fallback``) is always safe: the
whole answer then goes through zeep as before, which also decides on errors. So:

- A plan exists only for types whose every part is understood: a ComplexType (zeep's class
  for it reading the plain way, no SOAP-encoded array) holding one non-repeated
  xsd:sequence of plain elements (no choice, group, all, any, nested sequence, default
  values, recursion), or simple content; attributes with a name and no default; simple
  types that are zeep's built-ins (lists, unions and anySimpleType/anyType are zeep's).
- Elements match by exact tag. zeep also accepts a child whose local name matches in
  another namespace, and skips a required element when a child of a foreign namespace
  stands in its place; both, a required element missing before the end, a child no field
  takes, comments or processing instructions, non-blank text between elements (mixed
  content), and any attribute the type does not declare (xsi:type, xsi:nil included) give up.
- Like zeep, an element absent at the end of its sequence is null (``[]`` when repeated),
  and a complex element with neither children nor attributes is null.
- Values are converted by the type's own ``pythonvalue`` and ``to_json_value``, the very
  functions of the zeep path, so the JSON cannot differ; where zeep would swallow a
  conversion error (log it and give null), the plan gives up and lets zeep do exactly that.
  xsd:string (zeep keeps the text as is), integers (zeep's ``int(text)`` itself) and
  the plain forms of boolean and date skip the detour: their JSON is a fixed function of
  text those forms fully describe.
"""

from __future__ import annotations

import datetime
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import zeep
from lxml import etree
from zeep.xsd import ComplexType
from zeep.xsd.elements import Attribute, Element
from zeep.xsd.elements.indicators import Sequence
from zeep.xsd.types import builtins as b
from zeep.xsd.types.simple import AnySimpleType

from .jsonmap import _shape, response_json, to_json_value

__all__ = ["ResponseCodec"]

Convert = Callable[[str], Any]

# The plan mirrors the reading of these zeep releases (tests/test_soap_answers.py compares
# the two, and fails when an installed release is not listed). A prefix: patch releases of
# 4.3 are taken on trust until that test runs against them; under any other release every
# answer goes through zeep: a slower answer, never a different one.
ZEEP_READING = ("4.3.",)


class _Fallback(Exception):
    """The answer holds something the plan does not read exactly as zeep would."""


@dataclass(frozen=True, slots=True)
class _ElementPlan:
    name: str  # the JSON property (zeep's attribute name)
    tag: str  # {namespace}local, as lxml spells tags
    local: str
    optional: bool
    repeated: bool
    max_occurs: int | None  # None: unbounded
    leaf: Convert | None  # a simple type's text -> JSON value
    content: _TypePlan | None  # a complex type's plan


@dataclass(frozen=True, slots=True)
class _TypePlan:
    elements: tuple[_ElementPlan, ...]
    attributes: dict[str, tuple[str, Convert]]  # attribute tag -> (name, conversion)
    simple_content: Convert | None  # the text of an element of simple content, as _value_1


# --- building a plan, once per operation ----------------------------------------------------


def _plain_convert(xsd_type: Any) -> Convert | None:
    """The conversion zeep applies to the text of a simple type, or None when the type is
    not one of zeep's built-ins read the plain way."""
    if not isinstance(xsd_type, b.BuiltinType):
        return None
    cls = type(xsd_type)
    if cls.parse_xmlelement is not AnySimpleType.parse_xmlelement:
        return None
    if cls.pythonvalue is b.String.pythonvalue:
        return _same  # xsd:string and its restrictions: zeep keeps the text, whitespace too
    pythonvalue = xsd_type.pythonvalue
    if cls.pythonvalue is b.Boolean.pythonvalue:
        return _fast_boolean(pythonvalue)
    if cls.pythonvalue in (b.Integer.pythonvalue, b.Long.pythonvalue):
        return int  # zeep's own reading of integers, to the letter: int(text)
    if cls.pythonvalue is b.Date.pythonvalue:
        return _fast_date(pythonvalue)

    def convert(text: str) -> Any:
        return to_json_value(pythonvalue(text))

    return convert


def _same(text: str) -> str:
    return text


_BOOLEANS = {"true": True, "false": False, "1": True, "0": False}
_PLAIN_DATE = re.compile(r"([0-9]{4})-([0-9]{2})-([0-9]{2})").fullmatch


def _fast_boolean(pythonvalue: Callable[[str], Any]) -> Convert:
    def convert(text: str) -> Any:
        value = _BOOLEANS.get(text)
        return to_json_value(pythonvalue(text)) if value is None else value

    return convert


def _fast_date(pythonvalue: Callable[[str], Any]) -> Convert:
    def convert(text: str) -> Any:
        # zeep gives a datetime.date, whose isoformat() is this very YYYY-MM-DD text when
        # the day exists (else ValueError: the answer goes to zeep); other forms (a zone, a
        # sign, more digits, whitespace) go zeep's way.
        m = _PLAIN_DATE(text)
        if m is None:
            return to_json_value(pythonvalue(text))
        datetime.date(int(m[1]), int(m[2]), int(m[3]))
        return text

    return convert


def _type_plan(ctype: Any, seen: tuple[int, ...]) -> _TypePlan | None:
    if not isinstance(ctype, ComplexType) or id(ctype) in seen:
        return None  # recursion is left to zeep
    if type(ctype).parse_xmlelement is not ComplexType.parse_xmlelement:
        return None  # zeep makes a class per type; one that reads its own way is not ours
    if getattr(ctype, "_array_type", None) or not (ctype.attributes or ctype.elements):
        return None  # SOAP-encoded arrays; an empty type is zeep's None
    shape = _shape(ctype)
    if shape.open:
        return None
    attributes: dict[str, tuple[str, Convert]] = {}
    elements: list[_ElementPlan] = []
    simple_content: Convert | None = None
    nested = ctype.elements_nested
    inner = ctype._element  # zeep keeps simple content as its one pseudo-element here
    if isinstance(inner, Element) and isinstance(inner.type, AnySimpleType):
        simple_content = _plain_convert(inner.type)
        if simple_content is None or [name for name, _ in nested] != ["_value_1"]:
            return None
    elif nested:
        if len(nested) != 1:
            return None
        sequence = nested[0][1]
        if type(sequence) is not Sequence or sequence.accepts_multiple:
            return None
        if not all(type(item) is Element for item in sequence):
            return None
        if [name for name, _ in sequence.elements] != [
            f.name for f in shape.fields if not isinstance(f.node, Attribute)
        ]:
            return None  # zeep renamed a duplicate; keep its own naming
        for name, node in sequence.elements:
            plan = _element_plan(name, node, (*seen, id(ctype)))
            if plan is None:
                return None
            elements.append(plan)
    for f in shape.fields:
        if not isinstance(f.node, Attribute):  # (zeep's Attribute is an Element too)
            continue
        node = f.node
        convert = _plain_convert(node.type)
        if type(node) is not Attribute or not node.name or node.default is not None:
            return None
        if convert is None:
            return None
        attributes[node.qname.text] = (f.name, convert)
    names = [name for name, _ in ctype.attributes]
    if [f.name for f in shape.fields if isinstance(f.node, Attribute)] != names:
        return None
    if len(set(names)) != len(names):
        # zeep names attributes of one local name alike (n and tns:n, or one declared twice)
        # and picks among them by schema order (n, tns:n: the later; twice: the first), where
        # the plan's reading would keep the later in the XML.
        return None
    return _TypePlan(tuple(elements), attributes, simple_content)


def _element_plan(name: str, node: Element, seen: tuple[int, ...]) -> _ElementPlan | None:
    if node.default is not None or node.qname is None:
        return None  # a default stands in, unconverted, for an absent required element
    leaf = _plain_convert(node.type)
    content = None if leaf is not None else _type_plan(node.type, seen)
    if leaf is None and content is None:
        return None
    max_occurs = node.max_occurs
    return _ElementPlan(
        name=name,
        tag=node.qname.text,
        local=node.qname.localname,
        optional=bool(node.is_optional),
        repeated=bool(node.accepts_multiple),
        max_occurs=None if max_occurs == "unbounded" else int(max_occurs),
        leaf=leaf,
        content=content,
    )


# --- reading an answer -----------------------------------------------------------------------


def _read_complex(xml: etree._Element, plan: _TypePlan, allow_none: bool) -> Any:
    attrib = xml.attrib
    if plan.simple_content is not None:
        if len(xml):
            raise _Fallback  # zeep reads the text before the first child only
        text = xml.text
        out: dict[str, Any] = {"_value_1": None if text is None else plan.simple_content(text)}
    else:
        children = list(xml)
        if allow_none and not children and not attrib:
            return None
        if (text := xml.text) is not None and not text.isspace():
            raise _Fallback  # mixed content
        out = {}
        i, count = 0, len(children)
        for e in plan.elements:
            values: list[Any] = []
            while i < count and (e.max_occurs is None or len(values) < e.max_occurs):
                child = children[i]
                tag = child.tag
                if tag != e.tag:
                    if not isinstance(tag, str) or etree.QName(tag).localname == e.local:
                        raise _Fallback
                    break
                if (tail := child.tail) is not None and not tail.isspace():
                    raise _Fallback
                values.append(_read_element(child, e))
                i += 1
            if not values and not e.optional and i < count:
                raise _Fallback  # zeep either refuses the answer or skips, by namespace
            if e.repeated:
                out[e.name] = values
            else:
                out[e.name] = values[0] if values else None
        if i < count:
            raise _Fallback  # a child no field takes
    for name, _ in plan.attributes.values():
        out[name] = None
    for key, text in attrib.items():
        known = plan.attributes.get(key)
        if known is None:
            raise _Fallback  # xsi:type, xsi:nil, or an attribute the schema does not name
        out[known[0]] = known[1](text)
    return out


def _read_element(xml: etree._Element, plan: _ElementPlan) -> Any:
    if plan.content is not None:
        return _read_complex(xml, plan.content, True)
    if len(xml) or xml.attrib:
        raise _Fallback
    text = xml.text
    if text is None:
        return None
    assert plan.leaf is not None
    return plan.leaf(text)


class ResponseCodec:
    """Turns the response wrapper of one operation into its JSON object: straight from the
    XML when the plan covers the answer, through zeep (``response_json``) otherwise."""

    def __init__(self, element: Element, schema: Any) -> None:
        self.element = element
        self.schema = schema
        same_zeep = zeep.__version__.startswith(ZEEP_READING)
        self._plan = _type_plan(element.type, ()) if same_zeep else None
        self.covered = self._plan is not None  # whether answers may skip zeep at all
        self.fast_answers = 0  # read without zeep, for tests and profiling

    def to_json(self, xml: etree._Element) -> dict[str, Any]:
        if self._plan is not None:
            try:
                # The wrapper itself is never None (zeep parses it with allow_none=False).
                result: dict[str, Any] = _read_complex(xml, self._plan, False)
            except (_Fallback, ValueError, TypeError, ArithmeticError):
                # ValueError, TypeError: what zeep swallows into null; ArithmeticError:
                # decimal's InvalidOperation, which zeep lets through. zeep decides both.
                pass
            else:
                self.fast_answers += 1
                return result
        return response_json(self.element, xml, self.schema)
