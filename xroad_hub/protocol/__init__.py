"""The protocol core: X-Road identifiers, r1 and SOAP 4.0 messages, signatures,
global configuration, Merkle math, checkpoints, RFC 3161 structures, data subjects and the
evidence catalog. Pure functions and frozen dataclasses: no sockets, no database, no
event loop (ARCHITECTURE.md)."""
