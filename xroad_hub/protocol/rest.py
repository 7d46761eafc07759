"""X-Road Message Protocol for REST (r1), sans-I/O: targets, headers, request hash, errors.

Theory of operation. A client information system sends ``METHOD /r1/{service}[/path][?q]``
with ``X-Road-Client`` to its own node. The node parses the target strictly (every part is
percent-encoded on its own, no dot segments, no encoded slashes in the forwarded path, a URI
length limit) because the remainder of the path is later appended to a backend URL: anything
loose here becomes path traversal or SSRF at the provider. Headers are split in three:
hop-by-hop and host-revealing headers are dropped, X-Road headers are consumed into the signed
message; towards the service only an allow-list passes (``filter_request_headers``), back to
the client everything else passes unchanged.
"""

from __future__ import annotations

import base64
import hashlib
import re
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import unquote
from xml.sax.saxutils import escape

import orjson

from xroad_hub.errors import ProtocolError, XRoadError
from xroad_hub.protocol.identifiers import (
    ClientId,
    ServiceId,
    parse_client_id,
    parse_r1_service,
    valid_part,
)

__all__ = [
    "MAX_URI_LENGTH",
    "R1Target",
    "check_header_value",
    "check_headers",
    "check_method",
    "check_path",
    "check_query",
    "error_response",
    "filter_request_headers",
    "filter_response_headers",
    "is_token",
    "parse_r1_target",
    "parse_represented_party",
    "request_hash",
    "select_client",
]

MAX_URI_LENGTH = 2000
_MAX_HEADER_VALUE = 255

# Dropped in both directions: hop-by-hop headers, and headers that reveal the origin host.
_DROPPED = frozenset(
    h.lower()
    for h in (
        "Connection",
        "Keep-Alive",
        "Proxy-Authenticate",
        "Proxy-Authorization",
        "TE",
        "Trailer",
        "Transfer-Encoding",
        "Upgrade",
        "Host",
        "User-Agent",
        "Server",
        # Recomputed for the body actually sent; Expect is answered by our own server.
        "Content-Length",
        "Expect",
    )
)
# X-Road headers the nodes set or consume; a system on either side cannot inject them.
_XROAD_OWN = frozenset(
    h.lower()
    for h in (
        "X-Road-Client",
        "X-Road-Service",
        "X-Road-Id",
        "X-Road-UserId",
        "X-Road-Issue",
        "X-Road-Request-Id",
        "X-Road-Request-Hash",
        "X-Road-Error",
        "X-Road-Security-Server",
        "X-Road-Represented-Party",
        # xroad-hub's own: why the data is asked for (see README, purpose and legal basis).
        "X-Road-Purpose",
        "X-Road-Legal-Basis",
    )
)
# RFC 3986 pchar: unreserved, sub-delims, ':' '@' and well-formed percent-escapes.
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_BAD_QUERY = re.compile(r"[\x00-\x20\x7f#]")
_BAD_VALUE = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
_SAFE_SEGMENT = re.compile(r"(?:[A-Za-z0-9\-._~!$&'()*+,;=:@]|%[0-9A-Fa-f]{2})*")
# The common path, passed by one match (check_path runs on every exchange of both nodes):
# non-empty segments of _SAFE_SEGMENT's characters but '.', '%' and ';' (no dot segment,
# no escape, no parameter can hide in them), an empty last one allowed. Anything else is
# read segment by segment.
_PLAIN_PATH = re.compile(r"(?:/[A-Za-z0-9\-_~!$&'()*+,=:@]+)*/?")


@dataclass(frozen=True, slots=True)
class R1Target:
    service: ServiceId
    path: str  # raw, still percent-encoded; "" or starting with "/"
    query: str  # raw query string, passed unchanged


def parse_r1_target(raw_path: str, raw_query: str = "") -> R1Target:
    """Parse ``/r1/INSTANCE/CLASS/MEMBER/SUBSYSTEM/SERVICECODE[/path]`` strictly.

    The subsystem is required: in X-Road 7 every service belongs to a subsystem, and making it
    optional would make the service code and the first path segment ambiguous.
    """
    if len(raw_path) + (len(raw_query) + 1 if raw_query else 0) > MAX_URI_LENGTH:
        raise ProtocolError(
            "BadRequest",
            f"request URI longer than {MAX_URI_LENGTH} characters; send large data in the body",
        )
    if not raw_path.startswith("/r1/"):
        raise ProtocolError(
            "InvalidProtocolVersion",
            "unsupported protocol: request paths must start with /r1/ (X-Road REST r1)",
        )
    segments = raw_path[len("/r1/") :].split("/")
    if len(segments) < 5:
        raise ProtocolError(
            "BadRequest",
            "service identifier must be /r1/INSTANCE/CLASS/MEMBER/SUBSYSTEM/SERVICECODE[/path]",
        )
    service = parse_r1_service("/".join(segments[:5]))
    path = "/" + "/".join(segments[5:]) if len(segments) > 5 else ""
    check_path(path)
    check_query(raw_query)
    return R1Target(service, path, raw_query)


def check_path(path: str) -> None:
    """The path remainder forwarded to a backend: "" or "/seg/seg..." of RFC 3986 segments,
    no dot segments, no encoded separators, no empty inner segments.

    Both nodes run it: the provider's node never trusts the client's node to have done so.
    """
    if not path or _PLAIN_PATH.fullmatch(path):
        return
    if not path.startswith("/"):
        raise ProtocolError("BadRequest", "the request path must start with '/'")
    segments = path[1:].split("/")
    for seg in segments:
        _check_path_segment(seg)
    if any(seg == "" for seg in segments[:-1]):
        raise ProtocolError("BadRequest", "empty path segment ('//') in the request path")


def check_query(query: str) -> None:
    """Queries pass unchanged, but nothing that could end or split the request line."""
    if _BAD_QUERY.search(query):
        raise ProtocolError(
            "BadRequest", "the query string holds spaces, control characters or '#'"
        )


def is_token(text: str) -> bool:
    """Whether ``text`` is an RFC 9110 token: what a method and a field name are made of."""
    return _TOKEN.fullmatch(text) is not None


def check_method(method: str) -> None:
    if not is_token(method):
        raise ProtocolError("BadRequest", "the request method is not an HTTP token")


def check_headers(headers: object) -> list[tuple[str, str]]:
    """Headers as a list of (token name, single-line value) pairs, or BadRequest."""
    if not isinstance(headers, list):
        raise ProtocolError("BadRequest", "headers must be a list of name/value pairs")
    out = []
    for pair in headers:
        if not (isinstance(pair, list | tuple) and len(pair) == 2):
            raise ProtocolError("BadRequest", "headers must be a list of name/value pairs")
        name, value = pair
        if not (isinstance(name, str) and isinstance(value, str)) or not is_token(name):
            raise ProtocolError("BadRequest", "header name is not an HTTP token")
        if _BAD_VALUE.search(value):
            raise ProtocolError("BadRequest", f"header {name} holds control characters")
        out.append((name, value))
    return out


def _check_path_segment(seg: str) -> None:
    if not _SAFE_SEGMENT.fullmatch(seg):
        raise ProtocolError("BadRequest", "illegal character in the request path")
    if "%" not in seg:
        # The common segment: ASCII of _SAFE_SEGMENT with no escape reads the same decoded
        # once, twice and NFKC-folded, and holds no separator; only the dot test is left.
        for part in (seg, seg.split(";", 1)[0]):
            if part.strip() and not part.strip(". \t"):
                raise ProtocolError("BadRequest", "path traversal ('.' or '..' segment) refused")
        return
    # Backends read a segment in more ways than one: servlet containers strip ";params"
    # (``..;x``), some decode twice (``%252e%252e``), some fold Unicode compatibility
    # characters (U+FF0E FULLWIDTH FULL STOP is NFKC '.'). A segment is refused when any
    # of those readings is a dot segment or holds a separator, so every backend sees a path
    # below the service's base.
    once = _utf8_unquote(seg)
    twice = _utf8_unquote(once)
    for reading in {seg, once, twice}:
        for form in {reading, unicodedata.normalize("NFKC", reading)}:
            if any(c in form for c in _SEPARATORS):
                raise ProtocolError(
                    "BadRequest",
                    "encoded '/', '\\' or NUL in the request path is not allowed",
                )
            for part in {form, form.split(";", 1)[0]}:
                if part.strip() and not part.strip(". \t"):
                    raise ProtocolError(
                        "BadRequest", "path traversal ('.' or '..' segment) refused"
                    )


_SEPARATORS = ("/", "\\", "\x00")


def _utf8_unquote(text: str) -> str:
    """One percent-decoding, as UTF-8. Anything else (overlong forms such as %c0%ae, which
    old decoders read as '.') is refused: the node reads the path as the backend does."""
    try:
        return unquote(text, errors="strict")
    except UnicodeDecodeError:
        raise ProtocolError("BadRequest", "the request path is not percent-encoded UTF-8") from None


def select_client(values: list[str]) -> ClientId:
    """The X-Road-Client header: mandatory; when repeated, the last one counts."""
    if not values or not values[-1].strip():
        raise ProtocolError("MissingHeader", "X-Road-Client header is missing")
    return parse_client_id(values[-1])


def parse_represented_party(value: str) -> str:
    """``[CLASS/]CODE`` of X-Road-Represented-Party, validated like identifier parts."""
    parts = value.strip().split("/")
    if len(parts) not in (1, 2) or not all(valid_part(p) for p in parts):
        raise ProtocolError(
            "BadRequest", "X-Road-Represented-Party must be [CLASS/]CODE of identifier characters"
        )
    return "/".join(parts)


def check_header_value(name: str, value: str) -> str:
    """UserId and Issue are free text, but bounded and printable (they end up in logs)."""
    if len(value) > _MAX_HEADER_VALUE or not value.isprintable():
        raise ProtocolError(
            "BadRequest", f"{name} must be printable and at most {_MAX_HEADER_VALUE} characters"
        )
    return value


def filter_request_headers(
    headers: Iterable[tuple[str, str]], *, drop: frozenset[str] = frozenset()
) -> list[tuple[str, str]]:
    """Headers that pass from the client system to the provider system, in order.

    An allow-list, as X-Road has it: content negotiation, representation and cache headers,
    trace context, and user-defined ``X-`` headers. Everything else stays behind: the
    client's credentials and cookies for other systems (Authorization, Cookie), and what
    proxies assert about the origin or the identity of a caller (Forwarded, X-Forwarded-*,
    X-Real-IP, X-Original-URL, X-SSL-Client-*...), which a backend behind its own proxy
    would believe. Both nodes run it; the provider's node never trusts the client's."""
    out = []
    for k, v in headers:
        lk = _key(k)
        if lk in _BLOCKED or lk in drop or lk in _NOT_PASSED:
            continue
        if lk in _PASSED or (lk.startswith("x-") and not lk.startswith(_NOT_PASSED_PREFIXES)):
            out.append((k, v))
    return out


# Standard headers a request may carry to the service (RFC 9110/9111 negotiation,
# representation, conditional and cache headers; W3C trace context).
_PASSED = frozenset(
    (
        "accept",
        "accept-charset",
        "accept-encoding",
        "accept-language",
        "content-type",
        "content-encoding",
        "content-language",
        "content-disposition",
        "cache-control",
        "pragma",
        "expires",
        "etag",
        "last-modified",
        "if-match",
        "if-none-match",
        "if-modified-since",
        "if-unmodified-since",
        "if-range",
        "range",
        "prefer",
        "traceparent",
        "tracestate",
    )
)
# X- headers that are not the client's own data: origin, routing and identity assertions of
# proxies, method overrides (another operation than the one checked), credentials.
_NOT_PASSED_PREFIXES = (
    "x-road-",
    "x-forwarded-",
    "x-original-",
    "x-rewrite-",
    "x-remote-",
    "x-real-",
    "x-client-",
    "x-cluster-client-",
    "x-originating-",
    "x-true-client-",
    "x-proxyuser-",
    "x-ssl-",
    "x-auth-request-",
    "x-amzn-oidc-",
    "x-ms-client-principal",
    "x-goog-authenticated-",
    "x-envoy-",
    "x-http-method",
    "x-method-override",
)
_NOT_PASSED = frozenset(
    (
        "x-host",
        "x-api-key",
        "x-auth-token",
        "x-access-token",
        "x-csrf-token",
        "x-xsrf-token",
        "x-user",
        "x-authenticated-user",
        "x-authenticated-userid",
    )
)


def filter_response_headers(headers: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    """Headers that pass from the provider system back to the client (X-Road ones replaced)."""
    return [(k, v) for k, v in headers if _key(k) not in _BLOCKED]


_BLOCKED = _DROPPED | _XROAD_OWN


def _key(name: str) -> str:
    # CGI and WSGI servers read X_Road_UserId as X-Road-UserId (both become HTTP_X_ROAD_
    # USERID), so an underscore spelling must not slip past the X-Road header filter.
    return name.lower().replace("_", "-")


def request_hash(headers_bytes: bytes, body: bytes) -> str:
    """base64(SHA512(SHA512(headers) + SHA512(body))), or base64(SHA512(headers)) without body.

    ``headers_bytes`` is the signed request metadata: the exact bytes both nodes hold.
    """
    head = hashlib.sha512(headers_bytes).digest()
    if not body:
        return base64.b64encode(head).decode()
    return base64.b64encode(hashlib.sha512(head + hashlib.sha512(body).digest()).digest()).decode()


def error_response(err: XRoadError, accept: str | None) -> tuple[int, dict[str, str], bytes]:
    """Render an X-Road error as (status, headers, body), honouring Accept (JSON by default)."""
    headers = {"X-Road-Error": err.code}
    accept = (accept or "").lower()
    if ("xml" in accept) and "json" not in accept:
        headers["Content-Type"] = "application/xml;charset=utf-8"
        body = (
            "<?xml version='1.0' encoding='UTF-8'?><error>"
            f"<type>{escape(err.code)}</type><message>{escape(err.message)}</message>"
            f"<detail>{escape(err.detail)}</detail></error>"
        ).encode()
    else:
        headers["Content-Type"] = "application/json;charset=utf-8"
        body = orjson.dumps(err.as_dict())
    return err.status, headers, body
