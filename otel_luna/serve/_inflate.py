"""A request body's ``Content-Encoding`` undone, in bounded pieces. Pure.

gzip (one member or several, as RFC 1952 allows; NUL padding after the last), deflate (with
the zlib header as RFC 9110 says, or raw as some clients send it) and zstd (one frame or
several; RFC 8878). Each piece is at most ``step`` bytes, so the caller holds what it keeps in
its budget and stops at its limit: nothing trusts a size the body declares (zstd's frame
content size, gzip's ISIZE).

The work is linear in the body: the input is handed to the decoder in slices of a
:class:`memoryview` that grow from :data:`FEED` bytes (doubling up to :data:`MAX_FEED`) and
start small again at each member, so what a decoder copies of the rest of the body at the end
of a member (``unused_data``) or when its output is full (``unconsumed_tail``) is at most about
the bytes it read. (Taking the rest of the body as the next member's input copied it once per
member: a 1 MiB body of 52,000 empty gzip members cost 1.6 s, 16 MiB 7 minutes.) Every member
costs a decoder (zstd: 8 µs to set up), so a body may have at most :data:`MAX_MEMBERS`:
clients send one.
"""

from __future__ import annotations

import sys
import zlib
from collections.abc import Callable, Iterator
from typing import Any

if sys.version_info >= (3, 14):
    from compression import zstd
else:  # pragma: no cover - the same module, PEP 784's backport
    from backports import zstd

#: Content codings understood ("" and identity: none).
ENCODINGS = ("", "identity", "gzip", "x-gzip", "deflate", "zstd")
#: Bytes handed to a decoder first, in each member.
FEED = 256
#: Bytes handed to a decoder at most at once.
MAX_FEED = 1 << 20
#: gzip members or zstd frames a body may have.
MAX_MEMBERS = 1000
#: A zstd frame's window may take at most 2**23 bytes (8 MiB, what RFC 8878 asks decoders to
#: support and the window of zstd's levels up to 19); a frame asking for more is refused
#: before anything is allocated for it.
ZSTD_WINDOW_LOG_MAX = 23


class Malformed(ValueError):
    """A body its ``Content-Encoding`` cannot read (broken, truncated, too many members)."""


def decoded(raw: bytes | bytearray, encoding: str, step: int) -> Iterator[bytes]:
    """``raw`` decoded, in pieces of at most ``step`` bytes; :class:`Malformed` where it
    cannot be. ``encoding`` is a lower-case coding of :data:`ENCODINGS` other than none."""
    new, several = _decoder(raw, encoding)
    view = memoryview(raw)
    end = len(view)
    pos = 0  # bytes of raw the decoders have taken
    members = 1
    decoder = new()
    feed = FEED
    try:
        while True:
            piece: bytes | memoryview = b""
            if getattr(decoder, "needs_input", True):
                piece = view[pos : pos + feed]
                pos += len(piece)
                feed = min(2 * feed, MAX_FEED)
            out = decoder.decompress(piece, step)
            # What it did not take: after its end, else (zlib) what did not fit in ``step``.
            pos -= len(decoder.unused_data if decoder.eof else _tail(decoder))
            if out:
                yield out
            if decoder.eof:
                if pos >= end or not several:
                    return  # deflate: what follows its end is ignored, as before
                if encoding != "zstd" and view[pos] == 0 and not view[pos:].tobytes().strip(b"\0"):
                    return  # gzip padded with NULs, as gzip(1) allows
                members += 1
                if members > MAX_MEMBERS:
                    what = "zstd frames" if encoding == "zstd" else "gzip members"
                    raise Malformed(f"more than {MAX_MEMBERS} {what}")
                decoder = new()
                feed = FEED
            elif not out and pos >= end and getattr(decoder, "needs_input", True):
                raise Malformed("truncated")
    except (zlib.error, zstd.ZstdError, EOFError) as error:
        raise Malformed(str(error)) from error


def _tail(decoder: Any) -> bytes:
    return getattr(decoder, "unconsumed_tail", b"")  # zstd keeps it: needs_input is False


def _decoder(raw: bytes | bytearray, encoding: str) -> tuple[Callable[[], Any], bool]:
    """A maker of decoders for one member of ``raw``, and whether several may follow."""
    if encoding == "zstd":
        options: dict[int, int] = {zstd.DecompressionParameter.window_log_max: ZSTD_WINDOW_LOG_MAX}
        return lambda: zstd.ZstdDecompressor(options=options), True
    if encoding in ("gzip", "x-gzip"):
        return lambda: zlib.decompressobj(16 + zlib.MAX_WBITS), True
    if len(raw) >= 2 and raw[0] & 0x0F == 8 and (raw[0] << 8 | raw[1]) % 31 == 0:
        wbits = zlib.MAX_WBITS  # deflate as RFC 9110 says: with the zlib header
    else:
        wbits = -zlib.MAX_WBITS  # deflate as some clients send it: raw
    return lambda: zlib.decompressobj(wbits), False
