"""``otel_luna/serve/_inflate.py``: a body's Content-Encoding undone in bounded pieces, in work
linear in the body, whatever its members, frames, padding and the size of the pieces."""

from __future__ import annotations

import gzip
import zlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from otel_luna.serve import _inflate as inflate
from otel_luna.serve._inflate import zstd


def _compress(encoding: str, data: bytes) -> bytes:
    if encoding == "gzip":
        return gzip.compress(data, compresslevel=1)
    if encoding == "zstd":
        return zstd.compress(data)
    return zlib.compress(data)


#: Data that compresses (runs) and data that does not (random bytes), in a few parts.
_PARTS = st.lists(
    st.one_of(
        st.binary(max_size=3000),
        st.builds(
            lambda byte, count: bytes([byte]) * count, st.integers(0, 255), st.integers(0, 300_000)
        ),
    ),
    min_size=1,
    max_size=12,
)


@settings(max_examples=150, deadline=None)
@given(
    encoding=st.sampled_from(["gzip", "zstd", "deflate"]),
    parts=_PARTS,
    step=st.sampled_from([1, 7, 4096, 1 << 20]),
    padding=st.integers(0, 40),
)
@pytest.mark.slow  # seconds of CPU
def test_every_member_is_decoded_whole_in_pieces_of_at_most_step(
    encoding: str, parts: list[bytes], step: int, padding: int
) -> None:
    """Members (gzip) or frames (zstd) of any size one after another, gzip's NUL padding:
    decoded to the same bytes in pieces of at most ``step`` (deflate: one stream, the rest
    after it ignored)."""
    if encoding == "deflate":
        parts = [b"".join(parts)]
    body = b"".join(_compress(encoding, part) for part in parts)
    if encoding == "gzip":
        body += bytes(padding)
    pieces = list(inflate.decoded(body, encoding, step))
    assert b"".join(pieces) == b"".join(parts)
    assert all(0 < len(piece) <= step for piece in pieces)


@settings(max_examples=100, deadline=None)
@given(encoding=st.sampled_from(["gzip", "zstd"]), parts=_PARTS, data=st.data())
def test_a_body_cut_inside_its_last_member_is_malformed(
    encoding: str, parts: list[bytes], data: st.DataObject
) -> None:
    members = [_compress(encoding, part) for part in parts]
    cut = data.draw(st.integers(1, len(members[-1]) - 1))
    with pytest.raises(inflate.Malformed, match="truncated"):
        b"".join(inflate.decoded(b"".join(members)[:-cut], encoding, 1 << 20))
