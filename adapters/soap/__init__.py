"""SOAP adapters: legacy SOAP services bridged into X-Road (REST and SOAP clients), and
X-Road-aware SOAP services reached by pass-through.

Registration of a legacy service: ``fetch_wsdl`` -> ``load_wsdl`` (refuses what X-Road cannot
carry) -> ``zeep_client`` once per WSDL -> one ``SoapBridgeAdapter`` per operation (= X-Road
service code). Metadata: ``xroad_wsdl`` for SOAP clients, ``openapi_for`` for REST clients.
"""

from .bridge import SoapBridgeAdapter
from .openapi import openapi_for
from .passthrough import SoapPassthroughAdapter
from .wsdl import WsdlError, WsdlInfo, WsdlOperation, fetch_wsdl, load_wsdl, zeep_client
from .xroadwsdl import CLIENT_NODE_PLACEHOLDER, hide_endpoint, xroad_wsdl

__all__ = [
    "CLIENT_NODE_PLACEHOLDER",
    "SoapBridgeAdapter",
    "SoapPassthroughAdapter",
    "WsdlError",
    "WsdlInfo",
    "WsdlOperation",
    "fetch_wsdl",
    "hide_endpoint",
    "load_wsdl",
    "openapi_for",
    "xroad_wsdl",
    "zeep_client",
]
