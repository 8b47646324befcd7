"""How much memory a request body may take once decoded, known before it is decoded. Pure.

A protobuf message costs upb about a hundred bytes however small it is on the wire (an empty
``Span`` is 2 bytes there and 177 decoded), so an OTLP body of millions of empty messages — at
any level: ``ResourceSpans``, spans, attributes, events, data points — decodes to 30-90 times its
size. The bound here is

    decoded <= base x bytes + weight x (bytes that can start the tag of a message field)

Every message inside a request starts with its field's tag, whose first byte is one of a few
values (field number and wire type 2, taken from the request's descriptors): counting those
bytes (one pass at C speed: ``bytes.translate`` deleting the others) bounds the number of
messages. Bytes of strings and ids that happen to look like a tag only raise the bound.
``weight`` bounds one message of the largest type the byte can start (64 + 8 per field, above
what upb allocates; 32 for an element of a repeated string field); ``base`` covers the rest:
strings copied (2), or, where the request type has repeated varint fields (metrics' bucket
counts), packed varints grown from 1 byte to 8 with array doubling (16).
When that quick figure passes the limit it is made tighter, each tag byte with the weight of
the types it can start (a second pass over the tag bytes alone).

OTLP/JSON is bounded the same way, by its objects, arrays and elements: each bracket and comma
at half a Python dict and a message (:data:`JSON_WEIGHT`), plus :data:`JSON_BASE` per byte (the
text decoded, its strings, the message's strings).

Measured on a realistic OTLP request of 512 SERVER spans (361 KB): upb takes 2.9 bytes per
byte, the bound says 22 (0.3-0.6 µs a span to compute); for 2-byte empty spans both say 88.
"""

from __future__ import annotations

from collections.abc import Iterator

from google.protobuf.descriptor import Descriptor, FieldDescriptor

#: Bytes of the body (text, strings, arrays) per byte, without repeated varint fields.
BASE = 2
#: The same where the request type has repeated varint fields (packed: 1 byte on the wire, 8 in
#: an array that doubles as it grows).
BASE_REPEATED_VARINTS = 16
#: An element of a repeated string or bytes field: a 16-byte view, in an array that doubles.
STRING_WEIGHT = 32
_LENGTH_DELIMITED = (FieldDescriptor.TYPE_STRING, FieldDescriptor.TYPE_BYTES)
_FIXED = (
    FieldDescriptor.TYPE_DOUBLE,
    FieldDescriptor.TYPE_FLOAT,
    FieldDescriptor.TYPE_FIXED64,
    FieldDescriptor.TYPE_FIXED32,
    FieldDescriptor.TYPE_SFIXED64,
    FieldDescriptor.TYPE_SFIXED32,
)
#: OTLP/JSON: bytes per byte of the body (the text decoded, its strings, the message's copies).
JSON_BASE = 4
#: OTLP/JSON: bytes per bracket or comma. An object has two brackets for a Python dict (one
#: entry: 208 with its list slot) and the message it becomes (at most 192); an element or entry
#: has its comma for its object and slot (a short string: 59; a dict entry that doubles: 100).
JSON_WEIGHT = 200
_JSON_DELETE = bytes(b for b in range(256) if b not in b"{}[],")
#: Bytes counted at a time.
CHUNK = 1 << 20


def message_weight(descriptor: Descriptor) -> int:
    """Bytes above what upb allocates for one message of this type (measured: an empty ``Span``
    177 of 192, ``ResourceSpans`` 64 of 88, ``KeyValue`` 54 of 80)."""
    return 64 + 8 * len(descriptor.fields)


def _tag_first_byte(number: int) -> int:
    tag = number << 3 | 2  # wire type 2: length-delimited
    return tag if tag < 0x80 else (tag & 0x7F) | 0x80


def _message_fields(root: Descriptor) -> Iterator[FieldDescriptor]:
    seen: set[str] = set()
    stack = [root]
    while stack:
        descriptor = stack.pop()
        if descriptor.full_name in seen:
            continue
        seen.add(descriptor.full_name)
        for field in descriptor.fields:
            yield field
            if field.message_type is not None:
                stack.append(field.message_type)


class ProtobufBound:
    """The bound for one request type (e.g. ``ExportTraceServiceRequest``)."""

    def __init__(self, root: Descriptor) -> None:
        weights: dict[int, int] = {}
        repeated_varints = False
        for field in _message_fields(root):
            if field.message_type is not None:
                weight = message_weight(field.message_type)
            elif not _is_repeated(field):
                continue
            elif field.type in _LENGTH_DELIMITED:
                weight = STRING_WEIGHT
            else:
                repeated_varints |= field.type not in _FIXED
                continue
            first = _tag_first_byte(field.number)
            weights[first] = max(weights.get(first, 0), weight)
        self.base = BASE_REPEATED_VARINTS if repeated_varints else BASE
        self.weights = tuple(sorted(weights.items()))
        self.weight = max(weights.values(), default=0)
        self._delete = bytes(b for b in range(256) if b not in weights)

    def __call__(self, data: bytes | bytearray, limit: int) -> int:
        """Bytes ``data`` may take decoded, at most; tighter when the quick figure passes
        ``limit``."""
        tags = sum(len(chunk.translate(None, self._delete)) for chunk in _chunks(data))
        quick = self.base * len(data) + self.weight * tags
        if quick <= limit:
            return quick
        tight = self.base * len(data)
        for chunk in _chunks(data):
            found = chunk.translate(None, self._delete)
            tight += sum(weight * found.count(byte) for byte, weight in self.weights)
        return tight


def json_bound(data: bytes | bytearray) -> int:
    """Bytes an OTLP/JSON body may take parsed (Python objects and the message), at most."""
    marks = sum(len(chunk.translate(None, _JSON_DELETE)) for chunk in _chunks(data))
    return JSON_BASE * len(data) + JSON_WEIGHT * marks


def _chunks(data: bytes | bytearray) -> Iterator[bytes | bytearray]:
    """``data`` in pieces of :data:`CHUNK` bytes (whole when smaller): what is kept of each
    piece (up to all of it, for a body of empty messages) is never more than one piece."""
    if len(data) <= CHUNK:
        yield data
        return
    for start in range(0, len(data), CHUNK):
        yield data[start : start + CHUNK]


def _is_repeated(field: FieldDescriptor) -> bool:
    repeated = getattr(field, "is_repeated", None)  # protobuf >= 6; ``label`` before
    if repeated is not None:
        return bool(repeated)
    return bool(field.label == FieldDescriptor.LABEL_REPEATED)
