"""The rules of an exchange, one test per rule, without a network: plain function calls on
the signed metadata, a service's registration and the global configuration."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta

import pytest

from xroad_hub.errors import ProtocolError
from xroad_hub.federation import ServiceConfig
from xroad_hub.node.metaservices import METASERVICES
from xroad_hub.protocol.access import (
    check_addressed,
    check_answer,
    check_hosted,
    check_protocol,
    decide_access,
    node_serving,
    purpose_of,
    signed_purpose_matches,
)
from xroad_hub.protocol.exchange import AnswerMeta, RequestMeta
from xroad_hub.protocol.globalconf import GlobalConf, NodeEntry
from xroad_hub.protocol.identifiers import (
    parse_member_id,
    parse_node_id,
    parse_service_id,
    parse_subsystem_id,
)
from xroad_hub.protocol.message import body_digest
from xroad_hub.protocol.rest import request_hash

PORTAL = parse_subsystem_id("TH/GOV/DGA/devportal")
OTHER = parse_subsystem_id("TH/GOV/DGA/officeapp")
REGISTRY = parse_subsystem_id("TH/GOV/DBD/registry")
ECHO = parse_service_id("TH/GOV/DBD/registry/echo")
HUB1 = parse_node_id("TH/GOV/DGA/hub1")
DBD1 = parse_node_id("TH/GOV/DBD/hub1")

REQUEST = RequestMeta(
    id="m-1",
    request_id="r-1",
    client=PORTAL,
    service=ECHO,
    target_node=DBD1,
    method="GET",
    path="",
    query="",
    headers=(),
    user_id=None,
    issue=None,
    represented_party=None,
    created=1767225600.0,
    body_sha512=body_digest(b""),
)
RULES = ServiceConfig(
    id=ECHO,
    adapter="rest",
    url="http://127.0.0.1:1",
    allow=frozenset({PORTAL}),
    version="v1",
    answer_subjects=(),
)


def _request(**changes: object) -> RequestMeta:
    return dataclasses.replace(REQUEST, **changes)  # type: ignore[arg-type]


def _refused(fn, *args, **kw) -> ProtocolError:  # type: ignore[no-untyped-def]
    with pytest.raises(ProtocolError) as info:
        fn(*args, **kw)
    return info.value


def _decide(rules: ServiceConfig | None, request: RequestMeta = REQUEST, served: bool = True):  # type: ignore[no-untyped-def]
    return decide_access(rules, request, provider_served=served, metaservices=METASERVICES)


# --- decide_access: default deny, rule by rule -------------------------------------------


def test_client_with_access_right_is_served_the_registered_version() -> None:
    access = _decide(RULES)
    assert access.rules is RULES
    assert access.service == parse_service_id("TH/GOV/DBD/registry/echo/v1")


def test_client_without_access_right_is_denied() -> None:
    err = _refused(_decide, RULES, _request(client=OTHER))
    assert err.code == "AccessDenied"
    assert str(OTHER) in err.message


def test_nobody_is_allowed_by_default() -> None:
    assert _refused(_decide, dataclasses.replace(RULES, allow=frozenset())).code == "AccessDenied"


def test_disabled_service_answers_its_notice() -> None:
    rules = dataclasses.replace(RULES, disabled=True, disabled_notice="back on Monday")
    err = _refused(_decide, rules)
    assert (err.code, err.message) == ("ServiceDisabled", "back on Monday")


def test_disabled_comes_before_access_rights() -> None:
    rules = dataclasses.replace(RULES, disabled=True, allow=frozenset())
    assert _refused(_decide, rules).code == "ServiceDisabled"


def test_other_version_is_unknown() -> None:
    err = _refused(_decide, RULES, _request(service=parse_service_id(f"{ECHO}/v2")))
    assert err.code == "UnknownService"
    assert "served as version v1" in err.message
    assert _decide(RULES, _request(service=parse_service_id(f"{ECHO}/v1"))).rules is RULES


def test_purpose_bound_service_accepts_a_declared_purpose() -> None:
    rules = dataclasses.replace(RULES, purposes=("food-business-licence",))
    assert _decide(rules, _request(purpose="food-business-licence")).rules is rules


def test_purpose_bound_service_refuses_another_purpose() -> None:
    rules = dataclasses.replace(RULES, purposes=("food-business-licence",))
    err = _refused(_decide, rules, _request(purpose="curiosity"))
    assert err.code == "AccessDenied"
    assert "'curiosity' is not one of them" in err.message


def test_purpose_bound_service_refuses_a_request_without_purpose() -> None:
    rules = dataclasses.replace(RULES, purposes=("food-business-licence",))
    err = _refused(_decide, rules)
    assert err.code == "AccessDenied"
    assert "names no purpose" in err.message


def test_legal_basis_bound_service_needs_a_declared_one() -> None:
    act = "Public Health Act B.E. 2535 s.38"
    rules = dataclasses.replace(RULES, legal_bases=(act,))
    assert _decide(rules, _request(legal_basis=act)).rules is rules
    err = _refused(_decide, rules, _request(legal_basis="curiosity"))
    assert err.code == "AccessDenied" and "not one of them" in err.message
    err = _refused(_decide, rules)
    assert err.code == "AccessDenied" and "X-Road-Legal-Basis" in err.message


def test_unregistered_service_of_a_served_provider_is_unknown() -> None:
    assert _refused(_decide, None).code == "UnknownService"


def test_provider_not_served_here_is_an_unknown_member() -> None:
    assert _refused(_decide, None, served=False).code == "UnknownMember"


@pytest.mark.parametrize("code", sorted(METASERVICES))
def test_metaservices_of_a_served_provider_are_answered_by_the_node(code: str) -> None:
    access = _decide(None, _request(service=parse_service_id(f"{REGISTRY}/{code}")))
    assert access.rules is None


def test_metaservice_of_a_provider_not_served_here_is_unknown_member() -> None:
    request = _request(service=parse_service_id(f"{REGISTRY}/listMethods"))
    assert _refused(_decide, None, request, served=False).code == "UnknownMember"


def test_a_registered_service_named_like_a_metaservice_is_the_service() -> None:
    rules = dataclasses.replace(
        RULES, id=parse_service_id(f"{REGISTRY}/getWsdl"), allow=frozenset()
    )
    request = _request(service=parse_service_id(f"{REGISTRY}/getWsdl"))
    assert _refused(_decide, rules, request).code == "AccessDenied"


# --- check_protocol ------------------------------------------------------------------------


def test_rest_service_refuses_soap() -> None:
    err = _refused(check_protocol, RULES, _request(protocol="soap"))
    assert err.code == "InvalidRequest"
    check_protocol(RULES, REQUEST)


def test_passthrough_soap_service_refuses_rest() -> None:
    rules = dataclasses.replace(RULES, adapter="soap", options={"mode": "passthrough"})
    assert _refused(check_protocol, rules, REQUEST).code == "InvalidRequest"
    check_protocol(rules, _request(protocol="soap"))


def test_bridged_soap_service_takes_both() -> None:
    rules = dataclasses.replace(RULES, adapter="soap", options={"mode": "bridge"})
    check_protocol(rules, REQUEST)
    check_protocol(rules, _request(protocol="soap"))


# --- hosting and addressing ----------------------------------------------------------------


PEER = NodeEntry(HUB1, "127.0.0.1:1", "ab", frozenset({PORTAL}))


def test_client_hosted_by_the_delivering_node() -> None:
    check_hosted(PORTAL, PEER)


def test_client_of_another_node_is_refused() -> None:
    err = _refused(check_hosted, OTHER, PEER)
    assert err.code == "SslAuthenticationFailed"


def test_owner_member_of_the_delivering_node_is_its_client() -> None:
    check_hosted(parse_member_id("TH/GOV/DGA"), PEER)
    assert _refused(check_hosted, parse_member_id("TH/GOV/DBD"), PEER).code == (
        "SslAuthenticationFailed"
    )


def test_request_addressed_to_another_node_is_refused() -> None:
    check_addressed(REQUEST, DBD1)
    err = _refused(check_addressed, REQUEST, HUB1)
    assert err.code == "InvalidMessage"


# --- the client's node: routing and purposes -------------------------------------------------

NOW = datetime(2026, 1, 1, tzinfo=UTC)
CONF = GlobalConf(
    instance="TH",
    serial=1,
    generated_at=NOW,
    expires_at=NOW + timedelta(hours=1),
    members={},
    nodes=(PEER, NodeEntry(DBD1, "127.0.0.1:2", "cd", frozenset({REGISTRY}))),
    trusted_cas_der=(),
)


def test_request_goes_to_the_node_hosting_the_provider() -> None:
    assert node_serving(CONF, REGISTRY, None).id == DBD1


def test_named_node_must_serve_the_provider() -> None:
    assert node_serving(CONF, REGISTRY, DBD1).id == DBD1
    assert _refused(node_serving, CONF, REGISTRY, HUB1).code == "UnknownMember"
    assert _refused(node_serving, CONF, REGISTRY, parse_node_id("TH/GOV/X/n")).code == (
        "UnknownMember"
    )


def test_provider_nobody_hosts_is_an_unknown_member() -> None:
    err = _refused(node_serving, CONF, parse_subsystem_id("TH/GOV/X/y"), None)
    assert err.code == "UnknownMember"


def test_purpose_named_by_the_client_counts() -> None:
    assert purpose_of("a", None, ("default", "law")) == ("a", None, False)


def test_registered_default_purpose_applies_when_none_named() -> None:
    assert purpose_of(None, None, ("default", "law")) == ("default", "law", True)
    assert purpose_of(None, "own law", ("default", "law")) == ("default", "own law", True)


def test_no_purpose_and_no_default() -> None:
    assert purpose_of(None, "law", None) == (None, "law", False)


def test_soap_header_names_the_signed_purpose_or_none_for_a_default() -> None:
    signed = _request(purpose="p", legal_basis="l")
    assert signed_purpose_matches(signed, "p", "l")
    assert not signed_purpose_matches(signed, None, None)
    assert not signed_purpose_matches(signed, "p", "other")
    by_default = _request(purpose="p", legal_basis="l", purpose_default=True)
    assert signed_purpose_matches(by_default, None, None)
    assert signed_purpose_matches(by_default, None, "l")
    assert not signed_purpose_matches(by_default, "p", "l")


# --- check_answer --------------------------------------------------------------------------

BODY = b'{"q": 1}'
REQUEST_BYTES = REQUEST.encode()
ANSWER = AnswerMeta(
    id="m-1",
    request_id="r-1",
    service=parse_service_id(f"{ECHO}/v1"),
    status=200,
    headers=(),
    request_hash=request_hash(REQUEST_BYTES, BODY),
    created=1767225601.0,
    body_sha512=body_digest(b""),
)


def test_answer_of_this_request_is_accepted() -> None:
    check_answer(REQUEST, REQUEST_BYTES, BODY, ANSWER)


@pytest.mark.parametrize(
    "changes",
    [
        {"id": "m-2"},
        {"request_id": "r-2"},
        {"request_hash": request_hash(REQUEST_BYTES, b"other body")},
        {"request_hash": request_hash(REQUEST_BYTES + b" ", BODY)},
    ],
)
def test_answer_of_another_request_is_inconsistent(changes: dict[str, str]) -> None:
    answer = dataclasses.replace(ANSWER, **changes)  # type: ignore[arg-type]
    assert _refused(check_answer, REQUEST, REQUEST_BYTES, BODY, answer).code == (
        "InconsistentResponse"
    )
