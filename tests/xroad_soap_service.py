"""An X-Road-aware SOAP service for the pass-through tests, written with lxml alone (not with
xroad_hub.protocol.soap, so that the node is tested against an independent implementation).

It answers ``echo`` with ``echoResponse`` holding the same children, echoes the X-Road
header as X-Road requires, and sends attachments back byte for byte. The text decides
misbehaviour: ``fault`` answers a SOAP Fault, ``forge-id`` changes the echoed message id.

``RECEIVED`` keeps, per message id, what the service read (the way a typical service
reads: the first text node of an element, comments kept by the parser) and the SOAPAction
it got, so tests can compare it with what the node logged.
"""

from __future__ import annotations

from email.message import Message

from aiohttp import web
from lxml import etree

SOAP_ENV = "http://schemas.xmlsoap.org/soap/envelope/"
XRD = "http://x-road.eu/xsd/xroad.xsd"
RECEIVED: dict[str, dict[str, str | None]] = {}


async def xroad_soap_echo(request: web.Request) -> web.Response:
    body = await request.read()
    content_type = request.headers.get("Content-Type", "")
    params = Message()
    params["Content-Type"] = content_type
    boundary = params.get_param("boundary")
    if params.get_content_type() == "multipart/related" and isinstance(boundary, str):
        delimiter = b"--" + boundary.encode()
        first = body.index(delimiter) + len(delimiter) + 2
        start = body.index(b"\r\n\r\n", first) + 4
        end = body.index(b"\r\n" + delimiter, start)
    else:
        start, end = 0, len(body)
    envelope = etree.fromstring(body[start:end])
    wrapper = envelope.find(f"{{{SOAP_ENV}}}Body")[0]
    text = wrapper.findtext("{*}text")
    header = envelope.find(f"{{{SOAP_ENV}}}Header")
    RECEIVED[str(header.findtext(f"{{{XRD}}}id"))] = {
        "userId": header.findtext(f"{{{XRD}}}userId"),
        "text": text,
        "soapAction": request.headers.get("SOAPAction"),
    }
    if text in ("fault", "fault-empty-header"):
        # Java's SAAJ writes an empty Header into every message, faults included.
        header = "<e:Header/>" if text == "fault-empty-header" else ""
        fault = (
            f'<e:Envelope xmlns:e="{SOAP_ENV}">{header}<e:Body><e:Fault>'
            "<faultcode>Server.EchoFailed</faultcode>"
            "<faultstring>the echo service failed on purpose</faultstring>"
            "</e:Fault></e:Body></e:Envelope>"
        )
        return web.Response(status=500, body=fault.encode(), content_type="text/xml")
    if text == "forge-id":
        envelope.find(f"{{{SOAP_ENV}}}Header/{{{XRD}}}id").text = "forged"
    wrapper.tag = wrapper.tag + "Response"
    soap = etree.tostring(envelope, xml_declaration=True, encoding="UTF-8")
    return web.Response(
        body=body[:start] + soap + body[end:], headers={"Content-Type": content_type}
    )
