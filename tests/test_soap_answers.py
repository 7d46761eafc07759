"""The SOAP bridge's JSON answers read straight from XML (adapters/soap/answers.py) are byte
for byte what zeep's reading gives (jsonmap.response_json): random answers, valid and
mangled, for schemas covering each construct the fast reading supports and several it leaves
to zeep; then DOPA's real service through the bridge."""

from __future__ import annotations

import copy
import json
import random
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import zeep
from lxml import etree
from zeep.xsd import ComplexType
from zeep.xsd.elements import Any as XsdAny
from zeep.xsd.elements import Element
from zeep.xsd.elements.indicators import All, Choice, Group, Sequence
from zeep.xsd.types import builtins as b
from zeep.xsd.types.collection import ListType, UnionType

from adapters.base import AdapterRequest
from adapters.soap import SoapBridgeAdapter, fetch_wsdl, load_wsdl, zeep_client
from adapters.soap.answers import ResponseCodec
from adapters.soap.bridge import _json
from adapters.soap.jsonmap import element_schema, json_schema, response_json
from xroad_hub.demo.dopa import dopa_app
from xroad_hub.demo.synthetic import demo_people, population

from .conftest import served_app
from .soap_legacy import LegacyServer

ROOT = Path(__file__).resolve().parent.parent
T = "urn:test:answers"
XSI = "http://www.w3.org/2001/XMLSchema-instance"
DOCS_PER_ELEMENT = 400
DOPA_SEED, DOPA_COUNT = 2569, 20

# --- schemas ---------------------------------------------------------------------------------

COVERED = """
<xs:simpleType name="Colour"><xs:restriction base="xs:string">
  <xs:enumeration value="red"/><xs:enumeration value="green"/></xs:restriction></xs:simpleType>
<xs:simpleType name="Small"><xs:restriction base="xs:int"><xs:maxInclusive value="9"/>
  </xs:restriction></xs:simpleType>
<xs:complexType name="Money"><xs:simpleContent><xs:extension base="xs:decimal">
  <xs:attribute name="currency" type="xs:string" use="required"/>
  <xs:attribute name="asOf" type="xs:date"/></xs:extension></xs:simpleContent></xs:complexType>
<xs:complexType name="Name"><xs:sequence>
  <xs:element name="given" type="xs:string"/>
  <xs:element name="family" type="xs:normalizedString" minOccurs="0"/>
</xs:sequence><xs:attribute name="lang" type="xs:language"/></xs:complexType>
<xs:complexType name="Item"><xs:sequence>
  <xs:element name="code" type="xs:token"/>
  <xs:element name="price" type="tns:Money" minOccurs="0" nillable="true"/>
  <xs:element name="tags" type="xs:string" minOccurs="0" maxOccurs="3"/>
  <xs:element name="names" type="tns:Name" minOccurs="0" maxOccurs="unbounded" nillable="true"/>
</xs:sequence><xs:attribute name="n" type="xs:unsignedShort" use="required"/></xs:complexType>
<xs:element name="simples"><xs:complexType><xs:sequence>
  <xs:element name="s" type="xs:string"/>
  <xs:element name="ns" type="xs:normalizedString" minOccurs="0"/>
  <xs:element name="tok" type="xs:token" minOccurs="0"/>
  <xs:element name="flag" type="xs:boolean" minOccurs="0" nillable="true"/>
  <xs:element name="i" type="xs:int" minOccurs="0"/>
  <xs:element name="big" type="xs:integer" minOccurs="0"/>
  <xs:element name="l" type="xs:long" minOccurs="0"/>
  <xs:element name="ub" type="xs:unsignedByte" minOccurs="0"/>
  <xs:element name="small" type="tns:Small" minOccurs="0"/>
  <xs:element name="dec" type="xs:decimal" minOccurs="0"/>
  <xs:element name="f" type="xs:float" minOccurs="0"/>
  <xs:element name="d" type="xs:double" minOccurs="0"/>
  <xs:element name="day" type="xs:date" minOccurs="0"/>
  <xs:element name="at" type="xs:dateTime" minOccurs="0"/>
  <xs:element name="t" type="xs:time" minOccurs="0"/>
  <xs:element name="dur" type="xs:duration" minOccurs="0"/>
  <xs:element name="b64" type="xs:base64Binary" minOccurs="0"/>
  <xs:element name="hex" type="xs:hexBinary" minOccurs="0"/>
  <xs:element name="uri" type="xs:anyURI" minOccurs="0"/>
  <xs:element name="year" type="xs:gYear" minOccurs="0"/>
  <xs:element name="colour" type="tns:Colour" minOccurs="0" maxOccurs="unbounded"/>
  <xs:element name="last" type="xs:string"/>
</xs:sequence><xs:attribute name="version" type="xs:int"/>
<xs:attribute name="stamp" type="xs:dateTime"/></xs:complexType></xs:element>
<xs:element name="nested"><xs:complexType><xs:sequence>
  <xs:element name="name" type="tns:Name" nillable="true"/>
  <xs:element name="items" type="tns:Item" minOccurs="1" maxOccurs="4"/>
  <xs:element name="total" type="tns:Money" minOccurs="0"/>
  <xs:element name="note" type="xs:string" minOccurs="0"/>
</xs:sequence></xs:complexType></xs:element>
<xs:complexType name="Base"><xs:sequence><xs:element name="id" type="xs:int"/></xs:sequence>
</xs:complexType>
<xs:complexType name="Derived"><xs:complexContent><xs:extension base="tns:Base"><xs:sequence>
  <xs:element name="extra" type="xs:string" minOccurs="0"/></xs:sequence></xs:extension>
</xs:complexContent></xs:complexType>
<!-- zeep flattens an extension into one sequence: read as any other -->
<xs:element name="extended"><xs:complexType><xs:sequence>
  <xs:element name="d" type="tns:Derived"/></xs:sequence></xs:complexType></xs:element>
<xs:element name="onlyAttributes"><xs:complexType>
  <xs:attribute name="a" type="xs:boolean"/><xs:attribute name="b" type="xs:decimal"/>
</xs:complexType></xs:element>
"""

# Constructs the fast reading leaves to zeep: the whole answer of such an element goes there.
NOT_COVERED = """
<xs:complexType name="Tree"><xs:sequence>
  <xs:element name="label" type="xs:string"/>
  <xs:element name="child" type="tns:Tree" minOccurs="0" maxOccurs="unbounded"/>
</xs:sequence></xs:complexType>
<xs:simpleType name="Ints"><xs:list itemType="xs:int"/></xs:simpleType>
<xs:simpleType name="IntOrDate"><xs:union memberTypes="xs:int xs:date"/></xs:simpleType>
<xs:group name="G"><xs:sequence><xs:element name="g1" type="xs:string"/>
  <xs:element name="g2" type="xs:int" minOccurs="0"/></xs:sequence></xs:group>
<xs:element name="withChoice"><xs:complexType><xs:sequence>
  <xs:element name="first" type="xs:string"/>
  <xs:choice><xs:element name="x" type="xs:int"/><xs:element name="y" type="xs:date"/>
  </xs:choice></xs:sequence></xs:complexType></xs:element>
<xs:element name="withAny"><xs:complexType><xs:sequence>
  <xs:element name="first" type="xs:string"/>
  <xs:any namespace="##other" processContents="lax" minOccurs="0" maxOccurs="unbounded"/>
</xs:sequence></xs:complexType></xs:element>
<xs:element name="withAnyType"><xs:complexType><xs:sequence>
  <xs:element name="free" type="xs:anyType" minOccurs="0"/><xs:element name="n" type="xs:int"/>
</xs:sequence></xs:complexType></xs:element>
<xs:element name="withList"><xs:complexType><xs:sequence>
  <xs:element name="ints" type="tns:Ints"/><xs:element name="u" type="tns:IntOrDate"/>
</xs:sequence></xs:complexType></xs:element>
<xs:element name="recursive"><xs:complexType><xs:sequence>
  <xs:element name="root" type="tns:Tree"/></xs:sequence></xs:complexType></xs:element>
<xs:element name="withGroup"><xs:complexType><xs:sequence>
  <xs:group ref="tns:G"/><xs:element name="after" type="xs:string"/>
</xs:sequence></xs:complexType></xs:element>
<xs:element name="withDefaults"><xs:complexType><xs:sequence>
  <xs:element name="n" type="xs:int" default="7"/></xs:sequence>
  <xs:attribute name="kind" type="xs:string" default="plain"/></xs:complexType></xs:element>
<xs:element name="withAll"><xs:complexType><xs:all>
  <xs:element name="p" type="xs:string"/><xs:element name="q" type="xs:int" minOccurs="0"/>
</xs:all></xs:complexType></xs:element>
<xs:element name="repeatedSequence"><xs:complexType><xs:sequence maxOccurs="3">
  <xs:element name="k" type="xs:string"/><xs:element name="v" type="xs:int"/>
</xs:sequence></xs:complexType></xs:element>
<xs:element name="withAnyAttribute"><xs:complexType><xs:sequence>
  <xs:element name="v" type="xs:int"/></xs:sequence><xs:anyAttribute processContents="lax"/>
</xs:complexType></xs:element>
"""


def _client(types: str, element_form: str) -> zeep.Client:
    wsdl = f"""<?xml version="1.0"?>
<wsdl:definitions xmlns:wsdl="http://schemas.xmlsoap.org/wsdl/"
    xmlns:xs="http://www.w3.org/2001/XMLSchema" xmlns:tns="{T}" targetNamespace="{T}">
  <wsdl:types><xs:schema targetNamespace="{T}" elementFormDefault="{element_form}">
    {types}</xs:schema></wsdl:types>
</wsdl:definitions>"""
    return zeep_client(wsdl.encode())


def _wrappers(client: zeep.Client) -> list[Element]:
    return [el for el in client.wsdl.types.elements if el.qname.namespace == T]


# --- random answers --------------------------------------------------------------------------

TEXTS: list[tuple[type, list[str]]] = [
    (b.Boolean, ["true", "false", "1", "0", " true ", "TRUE", "yes", "\n0\t"]),
    (
        b.Integer,
        [
            "0",
            "7",
            "-1",
            "+1",
            "007",
            "-0",
            "12345678901234567890123",
            " 42 ",
            "1_000",
            "1.0",
            "abc",
            "\u0663",
            "255",
            "256",
            "-129",
        ],
    ),
    (
        b.Decimal,
        ["1.50", "+1", "-0", "0.0", ".5", "5.", "1e3", "NaN", "abc", " 2.5 ", "12345.67", "-.0"],
    ),
    (b.Float, ["1.5", "1e3", "INF", "-INF", "NaN", "1.0E-3", "abc", " 2 ", "+1", "0.1"]),
    (b.Double, ["1.5", "1e308", "1e309", "-0", "3.141592653589793", ".5", "x"]),
    (
        b.Date,
        [
            "2020-01-05",
            "2020-02-29",
            "2019-02-29",
            "2020-13-01",
            "0000-01-01",
            "0001-01-01",
            "9999-12-31",
            "2020-01-05Z",
            "2020-01-05+07:00",
            " 2020-01-05 ",
            "20200105",
            "-2020-01-05",
            "12020-01-05",
            "2020-1-5",
            "2020-04-31",
            "1900-02-29",
            "2000-02-29",
        ],
    ),
    (
        b.DateTime,
        [
            "2020-01-05T10:11:12",
            "2020-01-05T10:11:12Z",
            "2020-01-05T10:11:12+07:00",
            "2020-01-05T10:11:12.123456Z",
            "2020-01-05T10:11:12.5-03:30",
            "2020-01-05",
            "2020-01-05 10:11:12",
            "2020-01-05T24:00:00",
            "bad",
            "2020-01-05T10:11:12.1234567",
        ],
    ),
    (b.Time, ["10:11:12", "10:11:12Z", "10:11:12.250+07:00", "25:00:00", "x"]),
    (b.Duration, ["P1D", "PT1H30M", "-P1Y", "P1Y2M3DT4H5M6.7S", "x", "-PT5S"]),
    (b.Base64Binary, ["aGVsbG8=", "aGVs\nbG8=", "!!", "aGVsbG8", "4pyT"]),
    (b.HexBinary, ["0aff", "ZZ"]),
    (b.gYear, ["2020", "2020Z", "2020+07:00", "x"]),
]
STRINGS = ["plain", " spaced  out ", "tab\there", "line\nbreak", "\u0e44\u0e17\u0e22", "<&>", "  "]


def _text(xsd_type: Any, rng: random.Random) -> str:
    if isinstance(xsd_type, ListType):
        return " ".join(_text(xsd_type.item_type, rng) for _ in range(rng.randint(0, 3)))
    if isinstance(xsd_type, UnionType):
        return _text(rng.choice(xsd_type.item_types), rng)
    for cls, texts in TEXTS:
        if isinstance(xsd_type, cls):
            # Mostly plain, valid text; the odd forms often enough to meet each of them.
            return texts[0] if rng.random() < 0.8 else rng.choice(texts)
    return rng.choice(STRINGS)


def _occurs(node: Any, rng: random.Random) -> int:
    high = node.max_occurs if isinstance(node.max_occurs, int) else node.min_occurs + 3
    return rng.randint(node.min_occurs, max(node.min_occurs, min(high, node.min_occurs + 3)))


def _fill(parent: etree._Element, xsd_type: Any, rng: random.Random, depth: int) -> None:
    if not isinstance(xsd_type, ComplexType):
        if rng.random() < 0.1 and not isinstance(xsd_type, b.BuiltinType):
            etree.SubElement(parent, f"{{{T}}}free").text = "inner"  # anyType content
        else:
            parent.text = _text(xsd_type, rng)
        return
    inner = xsd_type._element
    if isinstance(inner, Element) and not isinstance(inner.type, ComplexType):
        parent.text = _text(inner.type, rng)  # simple content
    else:
        for _name, item in xsd_type.elements_nested:
            _particle(parent, item, rng, depth)
    for _name, attr in xsd_type.attributes:
        if attr.name and (attr.required or rng.random() < 0.7):
            parent.set(attr.qname.text, _text(attr.type, rng))


def _particle(parent: etree._Element, item: Any, rng: random.Random, depth: int) -> None:
    if isinstance(item, XsdAny):
        for _ in range(_occurs(item, rng)):
            etree.SubElement(parent, "{urn:other}extra").text = "x"
    elif isinstance(item, Element):
        count = _occurs(item, rng) if depth < 4 else item.min_occurs
        for _ in range(count):
            _fill(etree.SubElement(parent, item.qname), item.type, rng, depth + 1)
    elif isinstance(item, Group):
        _particle(parent, item.child, rng, depth)
    elif isinstance(item, Choice):
        for _ in range(max(1, _occurs(item, rng))):
            _particle(parent, rng.choice(list(item)), rng, depth)
    elif isinstance(item, Sequence | All):
        for _ in range(max(1, _occurs(item, rng))):
            children = list(item)
            if isinstance(item, All):
                rng.shuffle(children)
            for child in children:
                _particle(parent, child, rng, depth)


def _mangle(root: etree._Element, rng: random.Random) -> None:
    """One change of the kind legacy services make, or schemas allow: each must either be
    read exactly as zeep reads it or be left to zeep."""
    nodes = [n for n in root.iter() if isinstance(n.tag, str)]
    node = rng.choice(nodes)
    kind = rng.randrange(13)
    if kind == 0:
        node.set(f"{{{XSI}}}nil", "true")
        if rng.random() < 0.5:
            node.text = None
            for child in list(node):
                node.remove(child)
    elif kind == 1:
        node.set(f"{{{XSI}}}type", rng.choice(["xs:string", "tns:Name", "xs:int"]))
    elif kind == 2:
        node.set(rng.choice(["unknown", f"{{{T}}}n", "lang"]), "1")
    elif kind == 3:
        node.insert(rng.randint(0, len(node)), etree.Comment("a comment"))
    elif kind == 4 and node is not root:
        node.getparent().remove(node)
    elif kind == 5 and node is not root:
        node.addnext(copy.deepcopy(node))
    elif kind == 6 and node is not root:
        node.tag = etree.QName(node).localname  # the namespace forgotten
    elif kind == 7 and node is not root:
        node.tag = f"{{urn:elsewhere}}{etree.QName(node).localname}"
    elif kind == 8:
        etree.SubElement(node, rng.choice([f"{{{T}}}stray", "stray", f"{{{T}}}given"])).text = "1"
    elif kind == 9:
        node.text = rng.choice(["mixed", " \n ", ""])
        if len(node):
            node[-1].tail = rng.choice(["tail", "\n"])
    elif kind == 10:
        node.text = None
        for child in list(node):
            node.remove(child)
    elif kind == 11:
        node.append(etree.ProcessingInstruction("pi", "x"))
    else:
        node.text = rng.choice([*STRINGS, "1", "2020-01-05", "true"])


def _outcome(read: Callable[[etree._Element], Any], xml: etree._Element) -> bytes:
    try:
        result = read(xml)
    except Exception as exc:  # zeep's refusals must be the same refusals
        return f"raised {type(exc).__name__}: {exc}".encode()
    return _json(200, result).body  # the bridge's own bytes


def _differential(element: Element, schema: Any, seed: int) -> tuple[int, int]:
    """(answers read without zeep, answers) over random documents; asserts equal bytes."""
    rng = random.Random(seed)
    codec = ResponseCodec(element, schema)
    total = 0
    for n in range(DOCS_PER_ELEMENT):
        root = etree.Element(
            element.qname, nsmap={"tns": T, "xs": "http://www.w3.org/2001/XMLSchema"}
        )
        _fill(root, element.type, rng, 0)
        for _ in range(rng.choice([0, 0, 0, 1, 1, 2])):
            _mangle(root, rng)
        xml = etree.fromstring(etree.tostring(root))  # as parsed off the wire
        old = _outcome(lambda x: response_json(element, x, schema), xml)
        new = _outcome(codec.to_json, xml)
        assert new == old, f"{element.qname} document {n}:\n{etree.tostring(xml).decode()}"
        total += 1
    return codec.fast_answers, total


@pytest.mark.parametrize("element_form", ["qualified", "unqualified"])
def test_covered_shapes_read_fast_and_exactly_as_zeep(element_form: str) -> None:
    client = _client(COVERED, element_form)
    for i, element in enumerate(_wrappers(client)):
        codec = ResponseCodec(element, client.wsdl.types)
        assert codec.covered, element.qname.text
        fast, total = _differential(element, client.wsdl.types, seed=i)
        # Most answers skip zeep, yet the mangled ones show the fall-back at work.
        assert total / 4 < fast < total, (element.qname.text, fast)


def test_shapes_left_to_zeep_give_zeeps_answer() -> None:
    client = _client(NOT_COVERED, "qualified")
    wrappers = _wrappers(client)
    assert len(wrappers) == 10
    for i, element in enumerate(wrappers):
        assert not ResponseCodec(element, client.wsdl.types).covered, element.qname.text
        fast, _total = _differential(element, client.wsdl.types, seed=100 + i)
        assert fast == 0


@pytest.mark.parametrize(
    "wsdl", ["xroad_hub/demo/dopa.wsdl", "tests/data/soap/legacy-population.wsdl"]
)
def test_real_wsdls_read_fast_and_exactly_as_zeep(wsdl: str) -> None:
    client = zeep_client((ROOT / wsdl).read_bytes())
    outputs = [
        op.output.body for b_ in client.wsdl.bindings.values() for op in b_._operations.values()
    ]
    assert outputs
    for i, element in enumerate(outputs):
        assert ResponseCodec(element, client.wsdl.types).covered, element.qname.text
        fast, total = _differential(element, client.wsdl.types, seed=200 + i)
        assert total / 4 < fast < total, (element.qname.text, fast)


def test_any_attribute_leaves_the_json_open() -> None:
    # jsonmap's shape walk used to fail on xsd:anyAttribute (it has no `required`), so no
    # schema, request codec or answer plan could be made for such an element.
    client = _client(NOT_COVERED, "qualified")
    element = client.get_element(f"{{{T}}}withAnyAttribute")
    schema = element_schema(element, "response")
    assert "additionalProperties" not in schema
    assert list(schema["properties"]) == ["v"]


def test_another_zeep_release_gets_zeeps_own_reading(monkeypatch: pytest.MonkeyPatch) -> None:
    client = zeep_client((ROOT / "xroad_hub/demo/dopa.wsdl").read_bytes())
    element = client.get_element("{http://dopa.go.th/population/v1}getPersonResponse")
    assert ResponseCodec(element, client.wsdl.types).covered
    monkeypatch.setattr(zeep, "__version__", "5.0.0")
    assert not ResponseCodec(element, client.wsdl.types).covered


# --- end to end: DOPA's service through the bridge -------------------------------------------


@pytest.fixture(scope="module")
async def dopa_url() -> AsyncIterator[str]:
    async with served_app(dopa_app(DOPA_SEED, DOPA_COUNT)) as url:
        yield url + "/"


async def _bridged_without_zeep(
    wsdl_url: str, calls: list[tuple[str, AdapterRequest]], monkeypatch: pytest.MonkeyPatch
) -> list[Any]:
    """Each call through a bridge adapter of its operation: answered without zeep's parse,
    and with the very bytes zeep's reading gives for the service's answer. The JSON answers."""
    wsdl = await fetch_wsdl(wsdl_url, timeout=10)
    info = load_wsdl(wsdl, wsdl_url)
    client = zeep_client(wsdl)
    adapters = {op: SoapBridgeAdapter(info, client, operation=op) for op, _ in calls}
    seen: list[etree._Element] = []
    for adapter in adapters.values():

        async def recorded(wrapper: etree._Element, call: Any = adapter._call) -> etree._Element:
            answer = await call(wrapper)
            seen.append(answer)
            return answer

        monkeypatch.setattr(adapter, "_call", recorded)
    parsed: list[object] = []
    zeep_parse = Element.parse

    def counted(self: Element, *args: Any, **kwargs: Any) -> Any:
        parsed.append(self)
        return zeep_parse(self, *args, **kwargs)

    monkeypatch.setattr(Element, "parse", counted)
    answers = []
    try:
        for op, request in calls:
            adapter = adapters[op]
            answer = await adapter.handle(request)
            assert answer.status == 200, answer.body
            assert not parsed, f"zeep parsed an answer of {op} the fast reading covers"
            expected = response_json(adapter._response_element, seen[-1], client.wsdl.types)
            assert answer.body == _json(200, expected).body
            assert parsed  # that comparison did go through zeep
            parsed.clear()
            answers.append(json.loads(answer.body))
        for op, adapter in adapters.items():
            assert adapter.answers.fast_answers == sum(1 for o, _ in calls if o == op)
    finally:
        for adapter in adapters.values():
            await adapter.close()
    return answers


def _get(query: str) -> AdapterRequest:
    return AdapterRequest("GET", "", query, (), b"")


async def test_dopa_answers_skip_zeep_and_are_unchanged(
    dopa_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    people = demo_people(DOPA_SEED, DOPA_COUNT)
    deceased = next(c for c in population(DOPA_SEED, people).citizens if c.status == "deceased")
    calls = [
        (op, _get(f"citizenId={p.citizen_id}"))
        for p in people[:3]
        for op in ("getPerson", "getHouseRegistration")
    ]
    calls.append(("getPerson", _get(f"citizenId={deceased.citizen_id}")))
    answers = await _bridged_without_zeep(f"{dopa_url}?wsdl", calls, monkeypatch)
    assert answers[0]["person"]["citizenId"] == people[0].citizen_id
    assert answers[0]["person"]["deathDate"] is None
    assert answers[1]["houseRegistration"]["members"]["member"]
    assert answers[-1]["person"]["deathDate"] == deceased.death_date


async def test_legacy_fixture_answers_skip_zeep_and_are_unchanged(
    legacy_soap: LegacyServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    citizen = "1101700203451"
    find = json.dumps({"citizenIds": {"Mandatorystring": [citizen, "999"]}}).encode()
    calls = [
        ("getPerson", _get(f"citizenId={citizen}")),
        ("countChildren", _get(f"citizenId={citizen}&bornAfterYear=2011")),
        ("findPersons", AdapterRequest("POST", "", "", (), find)),
        ("findPersons", AdapterRequest("POST", "", "", (), b'{"citizenIds": null}')),
    ]
    answers = await _bridged_without_zeep(legacy_soap.wsdl_url, calls, monkeypatch)
    assert answers[0]["getPersonResult"]["income"] == "12345.67"
    assert answers[2]["findPersonsResult"]["Person"][0]["citizenId"] == citizen
    assert answers[3] == {"findPersonsResult": None}


def test_attributes_of_one_local_name_are_left_to_zeep() -> None:
    # zeep gives n and tns:n one property, the later in the schema winning; the plan used to
    # take the later in the document: {"n": "a"} where zeep answers {"n": 5}.
    types = """<xs:element name="w"><xs:complexType><xs:sequence>
      <xs:element name="v" type="xs:string" minOccurs="0"/></xs:sequence>
      <xs:attribute name="n" type="xs:string"/>
      <xs:attribute name="n" form="qualified" type="xs:int"/></xs:complexType></xs:element>"""
    client = _client(types, "qualified")
    element = client.get_element(f"{{{T}}}w")
    xml = etree.fromstring(f'<t:w xmlns:t="{T}" t:n="5" n="a"/>')
    codec = ResponseCodec(element, client.wsdl.types)
    expected = {"v": None, "n": 5}
    assert response_json(element, xml, client.wsdl.types) == expected
    assert codec.to_json(xml) == expected


def test_infinite_and_nan_doubles_are_strict_json_the_schema_describes() -> None:
    # JSON has no number for them: json.dumps wrote Infinity and NaN, which strict JSON
    # readers refuse. They are the strings XML Schema spells them with.
    client = _client(
        '<xs:element name="m"><xs:complexType><xs:sequence>'
        '<xs:element name="v" type="xs:double" maxOccurs="unbounded"/>'
        "</xs:sequence></xs:complexType></xs:element>",
        "qualified",
    )
    element = client.get_element(f"{{{T}}}m")
    xml = etree.fromstring(f'<m xmlns="{T}"><v>INF</v><v>-INF</v><v>NaN</v><v>1.5</v><v>-0</v></m>')
    for read in (ResponseCodec(element, client.wsdl.types).to_json,
                 lambda x: response_json(element, x, client.wsdl.types)):  # fmt: skip
        body = _json(200, read(xml)).body
        doc = json.loads(body, parse_constant=_not_json)
        assert doc == {"v": ["INF", "-INF", "NaN", 1.5, -0.0]}
        jsonschema.validate(doc, json_schema(element_schema(element, "response")))


def _not_json(name: str) -> Any:
    raise AssertionError(f"{name} is not JSON")
