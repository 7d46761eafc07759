"""JSON views of a WSDL's wrapper elements, derived from its XML Schema through zeep.

One walk over zeep's type model serves three purposes, so they never disagree: the OpenAPI
schemas published for a bridged service, the validation of JSON requests against them, and
the conversion of JSON values into the values zeep serialises (and of zeep's parsed answers
back into JSON).

Mapping choices (published in the OpenAPI description as well):

- A wrapper element becomes a JSON object whose properties are its child elements (and
  attributes), named by their XML local names; minOccurs >= 1 makes a property required,
  maxOccurs > 1 an array.
- xsd:decimal answers are JSON *strings* ("12345.67"): exact, whatever the client's JSON
  library does with numbers. Requests may give decimals as numbers or strings.
- xsd:float and xsd:double answers are numbers, but the three values JSON has no number
  for are the strings "INF", "-INF" and "NaN" (their XML Schema spelling).
- date, dateTime and time are ISO 8601 strings as in XML Schema; base64Binary is base64 text.
- Answers carry every child of the response wrapper; absent or nil ones are null.
- Recursive types are described down to the first repetition, then as a free-form object.
- An element of simple content with attributes is an object: the attributes by name, the
  text as ``_value_1`` (zeep's name for it). xsd:anyType content is a plain string.
"""

from __future__ import annotations

import base64
import binascii
import datetime
import decimal
import logging
import math
import re
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import parse_qsl

import isodate
import jsonschema
from lxml import etree
from zeep.helpers import serialize_object
from zeep.xsd import AnyObject, ComplexType, CompoundValue
from zeep.xsd.elements import Any as XsdAny
from zeep.xsd.elements import AnyAttribute, Attribute, Element
from zeep.xsd.elements.indicators import All, Choice, Group, Sequence
from zeep.xsd.types import builtins as b
from zeep.xsd.types.simple import AnySimpleType

from xroad_hub.protocol.jsonbody import JsonBodyError, loads_json

__all__ = [
    "InputError",
    "RequestCodec",
    "element_schema",
    "json_schema",
    "query_parameters",
    "response_json",
    "takes_query",
    "to_json_value",
]

Direction = Literal["request", "response"]

# zeep reads a value it cannot convert as null (see the module docstring) and logs it first
# through the standard library, with a traceback that quotes the value: a person's id or
# name in the node's operational log, and a line that is not JSON. Those two are silenced.
for _reader in ("zeep.xsd.types.simple", "zeep.xsd.elements.attribute"):
    logging.getLogger(_reader).setLevel(logging.CRITICAL + 1)

_ZONE = r"(Z|[+-]\d{2}:\d{2})?"
_DAY = r"-?\d{4,}-\d{2}-\d{2}"
_TIME = r"\d{2}:\d{2}:\d{2}(\.\d+)?"
PATTERNS = {
    "date": f"^{_DAY}{_ZONE}$",
    "date-time": f"^{_DAY}T{_TIME}{_ZONE}$",
    "time": f"^{_TIME}{_ZONE}$",
}
DECIMAL_TEXT = r"^[+-]?(\d+(\.\d*)?|\.\d+)$"
_NOT_FINITE = ("INF", "-INF", "NaN")  # an answer's float or double JSON has no number for

# (minimum, maximum, format) of the bounded integer types, most derived first.
_INTEGERS: tuple[tuple[type, int | None, int | None, str | None], ...] = (
    (b.UnsignedByte, 0, 255, "int32"),
    (b.UnsignedShort, 0, 65535, "int32"),
    (b.UnsignedInt, 0, 2**32 - 1, "int64"),
    (b.UnsignedLong, 0, 2**64 - 1, None),
    (b.Byte, -(2**7), 2**7 - 1, "int32"),
    (b.Short, -(2**15), 2**15 - 1, "int32"),
    (b.Int, -(2**31), 2**31 - 1, "int32"),
    (b.Long, -(2**63), 2**63 - 1, "int64"),
    (b.PositiveInteger, 1, None, None),
    (b.NonNegativeInteger, 0, None, None),
    (b.NegativeInteger, None, -1, None),
    (b.NonPositiveInteger, None, 0, None),
    (b.Integer, None, None, None),
)


class InputError(ValueError):
    """A request the service's schema does not accept; the message says where and why."""


# --- the shape of a complex type ----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Field:
    name: str  # the JSON property and zeep keyword: the XML local name
    node: Element | Attribute
    required: bool

    @property
    def repeated(self) -> bool:
        return isinstance(self.node, Element) and self.node.accepts_multiple

    @property
    def nillable(self) -> bool:
        return isinstance(self.node, Element) and bool(self.node.nillable)


@dataclass(frozen=True, slots=True)
class _Shape:
    fields: tuple[_Field, ...]
    open: bool  # xsd:any or a construct JSON cannot name: unknown properties are allowed


def _shape(ctype: ComplexType) -> _Shape:
    fields: list[_Field] = []
    is_open = False

    def walk(item: Any, optional: bool) -> None:
        nonlocal is_open
        if isinstance(item, XsdAny):
            is_open = True
        elif isinstance(item, Element):
            fields.append(_Field(item.attr_name, item, not (optional or item.is_optional)))
        elif isinstance(item, Group):
            if item.accepts_multiple:
                is_open = True
            else:
                walk(item.child, optional or item.is_optional)
        elif isinstance(item, Sequence | All | Choice):
            if item.accepts_multiple:
                # zeep wants repeated groups as lists of dicts under a generated name; JSON
                # clients cannot know that name, so such content is left undescribed.
                is_open = True
                return
            for child in item:
                walk(child, optional or item.is_optional or isinstance(item, Choice))
        else:
            is_open = True

    for _name, item in ctype.elements_nested:
        walk(item, False)
    for name, attr in ctype.attributes:
        if isinstance(attr, AnyAttribute):
            is_open = True  # xsd:anyAttribute names no attribute (and has no `required`)
            continue
        fields.append(_Field(name, attr, bool(attr.required)))
    return _Shape(tuple(fields), is_open)


def _is_complex(xsd_type: Any) -> bool:
    return isinstance(xsd_type, ComplexType)


# --- schemas ------------------------------------------------------------------------------


def element_schema(element: Element, direction: Direction) -> dict[str, Any]:
    """OpenAPI 3.0 schema of a wrapper element's content (a JSON object)."""
    return _type_schema(element.type, direction, ())


def _type_schema(xsd_type: Any, direction: Direction, seen: tuple[int, ...]) -> dict[str, Any]:
    if _is_complex(xsd_type):
        if id(xsd_type) in seen:
            return {"type": "object", "description": "recursive content, not described"}
        shape = _shape(xsd_type)
        props: dict[str, Any] = {}
        for f in shape.fields:
            props[f.name] = _field_schema(f, direction, (*seen, id(xsd_type)))
        out: dict[str, Any] = {"type": "object", "properties": props}
        required = [f.name for f in shape.fields if f.required]
        if required:
            out["required"] = required
        if not shape.open:
            out["additionalProperties"] = False
        return out
    if isinstance(xsd_type, AnySimpleType):
        return _simple_schema(xsd_type, direction)
    return {}  # xsd:anyType: free content


def _field_schema(f: _Field, direction: Direction, seen: tuple[int, ...]) -> dict[str, Any]:
    schema = _type_schema(f.node.type, direction, seen)
    if isinstance(f.node, Element) and f.node.accepts_multiple:
        schema = {"type": "array", "items": schema}
        if f.node.min_occurs:
            schema["minItems"] = f.node.min_occurs
        if isinstance(f.node.max_occurs, int):
            schema["maxItems"] = f.node.max_occurs
    elif not f.required or f.nillable:
        schema = {**schema, "nullable": True}
    return schema


def _simple_schema(t: AnySimpleType, direction: Direction) -> dict[str, Any]:
    if isinstance(t, b.Boolean):
        return {"type": "boolean"}
    if isinstance(t, b.Integer):
        for cls, low, high, fmt in _INTEGERS:
            if isinstance(t, cls):
                out: dict[str, Any] = {"type": "integer"}
                if fmt:
                    out["format"] = fmt
                if low is not None:
                    out["minimum"] = low
                if high is not None:
                    out["maximum"] = high
                return out
    if isinstance(t, b.Decimal):
        text = {"type": "string", "format": "decimal", "pattern": DECIMAL_TEXT}
        if direction == "response":
            return text
        return {"anyOf": [{"type": "number"}, text]}
    if isinstance(t, b.Float | b.Double):
        number = {"type": "number", "format": "float" if isinstance(t, b.Float) else "double"}
        if direction == "response":
            return {"anyOf": [number, {"type": "string", "enum": list(_NOT_FINITE)}]}
        return number
    if isinstance(t, b.DateTime):
        return {"type": "string", "format": "date-time", "pattern": PATTERNS["date-time"]}
    if isinstance(t, b.Date):
        return {"type": "string", "format": "date", "pattern": PATTERNS["date"]}
    if isinstance(t, b.Time):
        return {"type": "string", "format": "time", "pattern": PATTERNS["time"]}
    if isinstance(t, b.Base64Binary):
        return {"type": "string", "format": "byte"}
    if isinstance(t, b.Duration):
        return {"type": "string", "format": "duration"}
    return {"type": "string"}


def json_schema(openapi: Any) -> Any:
    """The same schema for a JSON Schema validator: OpenAPI 3.0's ``nullable`` becomes a
    ``null`` alternative."""
    if isinstance(openapi, list):
        return [json_schema(s) for s in openapi]
    if not isinstance(openapi, dict):
        return openapi
    out = {k: json_schema(v) for k, v in openapi.items() if k != "nullable"}
    if openapi.get("nullable"):
        if "type" in out:
            out["type"] = [out["type"], "null"]
        else:
            out = {"anyOf": [out, {"type": "null"}]} if out else out
    return out


def takes_query(element: Element) -> bool:
    """True when every field of the request wrapper is simple (or a list of simple values),
    so the request can be given as a query string."""
    if not _is_complex(element.type):
        return False
    shape = _shape(element.type)
    return not shape.open and all(not _is_complex(f.node.type) for f in shape.fields)


def query_parameters(element: Element) -> list[dict[str, Any]]:
    """OpenAPI 3.0 query parameters for a request wrapper that ``takes_query``."""
    params: list[dict[str, Any]] = []
    for f in _shape(element.type).fields:
        param: dict[str, Any] = {
            "name": f.name,
            "in": "query",
            "required": f.required,
            "schema": _field_schema(f, "request", ()),
        }
        if f.repeated:
            param["style"] = "form"
            param["explode"] = True  # a list is the parameter repeated: ?id=1&id=2
        params.append(param)
    return params


# --- requests -----------------------------------------------------------------------------


class RequestCodec:
    """Turns a JSON body or query string into the value zeep renders as the request wrapper."""

    def __init__(self, element: Element) -> None:
        self.element = element
        self.schema = element_schema(element, "request")
        self._validator = jsonschema.Draft7Validator(json_schema(self.schema))
        self.query_allowed = takes_query(element)

    def from_json_body(self, body: bytes) -> dict[str, Any]:
        if not body.strip():
            return self.from_json({})
        try:
            # The node's own reading (jsonbody.py), so the subject it records from this body
            # is the one the legacy service is asked about.
            data = loads_json(body, parse_float=decimal.Decimal)
        except JsonBodyError as exc:
            raise InputError(str(exc)) from exc
        return self.from_json(data)

    def from_query(self, query: str) -> dict[str, Any]:
        try:
            pairs = parse_qsl(
                query, keep_blank_values=True, strict_parsing=bool(query), max_num_fields=1000
            )
        except ValueError as exc:
            raise InputError(f"malformed query string: {exc}") from exc
        fields = {f.name: f for f in _shape(self.element.type).fields}
        data: dict[str, Any] = {}
        for key, text in pairs:
            f = fields.get(key)
            if f is None:
                raise InputError(f"unknown query parameter {key!r}")
            value = _from_text(f.node.type, text, key)
            if f.repeated:
                data.setdefault(key, []).append(value)
            elif key in data:
                raise InputError(f"query parameter {key!r} given more than once")
            else:
                data[key] = value
        return self.from_json(data)

    def from_json(self, data: Any) -> dict[str, Any]:
        if not isinstance(data, dict):
            raise InputError("the request must be a JSON object")
        error = jsonschema.exceptions.best_match(self._validator.iter_errors(data))
        if error is not None:
            where = error.json_path if error.absolute_path else "the request"
            raise InputError(f"{where}: {error.message}")
        return _content(self.element.type, data, "$")


def _from_text(xsd_type: Any, text: str, key: str) -> Any:
    """A query string value typed as the schema says, for the JSON validation that follows."""
    try:
        if isinstance(xsd_type, b.Boolean):
            if text in ("true", "1"):
                return True
            if text in ("false", "0"):
                return False
            raise ValueError("expected true or false")
        if isinstance(xsd_type, b.Integer):
            if not re.fullmatch(r"[+-]?\d+", text):
                raise ValueError("expected an integer")
            return int(text)
        if isinstance(xsd_type, b.Float | b.Double):
            value = float(text)
            if value != value or value in (float("inf"), float("-inf")):
                raise ValueError("expected a finite number")
            return value
    except ValueError as exc:
        raise InputError(f"query parameter {key!r}: {text!r}: {exc}") from None
    return text


def _content(xsd_type: ComplexType, data: dict[str, Any], path: str) -> dict[str, Any]:
    shape = _shape(xsd_type)
    out: dict[str, Any] = {}
    known = {f.name: f for f in shape.fields}
    for key, value in data.items():
        f = known.get(key)
        if f is None:
            # Only reachable for open content; zeep's strict mode has the last word.
            out[key] = value
            continue
        where = f"{path}.{key}"
        if value is None:
            out[key] = None
        elif f.repeated:
            out[key] = [_value(f.node.type, v, f"{where}[{i}]") for i, v in enumerate(value)]
        else:
            out[key] = _value(f.node.type, value, where)
    return out


def _value(xsd_type: Any, value: Any, path: str) -> Any:
    if _is_complex(xsd_type):
        if not isinstance(value, dict):
            raise InputError(f"{path}: expected an object")
        return _content(xsd_type, value, path)
    if isinstance(value, dict | list):
        raise InputError(f"{path}: expected a single value")
    if value is None:
        return None
    if isinstance(xsd_type, b.Boolean | b.Integer):
        return value
    if isinstance(xsd_type, b.Decimal):
        try:
            return decimal.Decimal(str(value))
        except decimal.InvalidOperation:
            raise InputError(f"{path}: {value!r} is not a decimal number") from None
    if isinstance(xsd_type, b.Float | b.Double):
        return float(value)
    if isinstance(xsd_type, b.Date | b.DateTime | b.Time | b.Duration):
        try:
            xsd_type.pythonvalue(value)
        except (ValueError, isodate.ISO8601Error):
            kind = xsd_type.qname.localname if xsd_type.qname is not None else "value"
            raise InputError(f"{path}: {value!r} is not a valid {kind}") from None
        # The client's own text goes on (zeep passes strings through): no reformatting of
        # time zones or fractions.
        return value
    if isinstance(xsd_type, b.Base64Binary):
        try:
            base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            raise InputError(f"{path}: not valid base64") from None
        return value
    return value if isinstance(value, str) else str(value)


# --- answers ------------------------------------------------------------------------------


def response_json(element: Element, xml: etree._Element, schema: Any) -> dict[str, Any]:
    """The response wrapper parsed by zeep against the schema, as a JSON object."""
    value = element.parse(xml, schema)
    result = to_json_value(serialize_object(value, dict))
    if not isinstance(result, dict):
        return {"value": result}
    return result


def to_json_value(value: Any) -> Any:
    """Plain JSON values for what zeep parses out of XML (see the module docstring)."""
    if isinstance(value, dict):
        return {str(k): to_json_value(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [to_json_value(v) for v in value]
    if isinstance(value, CompoundValue):
        return to_json_value(serialize_object(value, dict))
    if isinstance(value, AnyObject):
        return to_json_value(value.value)
    if isinstance(value, float) and not math.isfinite(value):
        # JSON has no number for these; json.dumps would write Infinity or NaN, which
        # strict JSON readers refuse.
        return _NOT_FINITE[0 if value > 0 else 1 if value < 0 else 2]
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, decimal.Decimal):
        return str(value)
    if isinstance(value, datetime.datetime | datetime.date | datetime.time):
        return value.isoformat()
    if isinstance(value, datetime.timedelta | isodate.Duration):
        return isodate.duration_isoformat(value)
    if isinstance(value, bytes):
        return base64.b64encode(value).decode("ascii")
    if isinstance(value, etree._Element):
        return etree.tostring(value, encoding="unicode")
    return str(value)
