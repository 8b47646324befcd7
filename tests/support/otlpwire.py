"""Protobuf bodies written byte by byte: OTLP requests of millions of empty messages (decoding
them costs 30-90 times their size), for ``tests/serve/test_serve_decode_memory.py`` and
``benchmarks/serve_decode_flood.py``."""

from __future__ import annotations


def varint(value: int) -> bytes:
    out = bytearray()
    while True:
        low, value = value & 0x7F, value >> 7
        if not value:
            out.append(low)
            return bytes(out)
        out.append(low | 0x80)


def field(number: int, payload: bytes) -> bytes:
    """Length-delimited field ``number`` holding ``payload`` (a message, bytes or a string)."""
    return varint(number << 3 | 2) + varint(len(payload)) + payload


def empties(size: int, number: int, *path: int) -> bytes:
    """A body of about ``size`` bytes: empty messages in field ``number`` of the message that
    ``path`` (field numbers from the request down) leads to."""
    inner = field(number, b"") * ((size - 8 * len(path)) // 2)
    for outer in reversed(path):
        inner = field(outer, inner)
    return inner
