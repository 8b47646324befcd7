"""What both OTLP front ends share: the paths and services, how each signal's request is
parsed, accepted and answered, the bearer-token check, and :class:`HttpProtocol`, OTLP/HTTP as a
pure function of (method, path, headers, body) that the HTTP server only hosts."""

from __future__ import annotations

import hmac
import logging
from collections import Counter
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

from google.protobuf import json_format
from google.protobuf.message import Message
from google.rpc import code_pb2, status_pb2
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsPartialSuccess,
    ExportMetricsServiceRequest,
    ExportMetricsServiceResponse,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTracePartialSuccess,
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

from otel_luna.delivery import RateLog
from otel_luna.ingest import METRICS, TRACES, Result
from otel_luna.outcomes import Reason, describe, rejected
from otel_luna.serve import _inflate as inflate
from otel_luna.serve import _otlp as otlp
from otel_luna.serve._budget import ByteBudget as ByteBudget  # re-exported: the hosts use it
from otel_luna.serve._decoded import ProtobufBound, json_bound
from otel_luna.serve._receiver import RETRY_AFTER_SECONDS, Backpressure, Receiver
from otel_luna.serve._settings import ServeSettings

_logger = logging.getLogger("otel_luna.serve.http")

TRACE_SERVICE = "opentelemetry.proto.collector.trace.v1.TraceService"
METRICS_SERVICE = "opentelemetry.proto.collector.metrics.v1.MetricsService"
TRACES_PATH = "/v1/traces"
METRICS_PATH = "/v1/metrics"
LOGS_PATH = "/v1/logs"
PROTOBUF = "application/x-protobuf"
JSON = "application/json"


class Signal:
    """How one OTLP signal is parsed, accepted and answered."""

    def __init__(
        self,
        request_type: type[Message],
        accept: Callable[[Any], Result],
        respond: Callable[[int, str], Message],
        name: str = TRACES,
        malformed: Reason = Reason.MALFORMED_SPAN,
    ) -> None:
        self.request_type = request_type
        self.accept = accept
        self.respond = respond
        #: The ingest's signal (``traces``/``metrics``) and the counter of unreadable parts.
        self.name = name
        self.malformed = malformed
        #: What a protobuf body of this signal may take decoded, at most.
        self.bound = _protobuf_bound(request_type)

    def decoded_bound(self, data: bytes | bytearray, json: bool, limit: int) -> int:
        """Bytes ``data`` may take once decoded (at least its own size), known before decoding
        (:mod:`otel_luna.serve._decoded`); made tighter when a quick figure passes ``limit``."""
        return max(len(data), json_bound(data) if json else self.bound(data, limit))


_bounds: dict[str, ProtobufBound] = {}


def _protobuf_bound(request_type: type[Message]) -> ProtobufBound:
    """One bound per request type (made from its descriptors once)."""
    name = request_type.DESCRIPTOR.full_name
    bound = _bounds.get(name)
    if bound is None:
        bound = _bounds[name] = ProtobufBound(request_type.DESCRIPTOR)
    return bound


def decoded_too_large(bound: int, limit: int) -> str:
    """Why a request was refused by ``serve_max_decoded_bytes`` (HTTP and gRPC alike)."""
    return (
        f"request may take up to {bound / 2**20:.0f} MiB decoded, more than {limit} bytes "
        "(serve_max_decoded_bytes: many small messages decode to 30-90 times their size); "
        "send fewer spans or data points per request"
    )


def signals(receiver: Receiver) -> dict[str, Signal]:
    # A message with 0 rejected is the OTLP way to warn (values dropped from written points).
    def traces_response(rejected: int, message: str) -> Message:
        if not rejected and not message:
            return ExportTraceServiceResponse()
        partial = ExportTracePartialSuccess(rejected_spans=rejected, error_message=message)
        return ExportTraceServiceResponse(partial_success=partial)

    def metrics_response(rejected: int, message: str) -> Message:
        if not rejected and not message:
            return ExportMetricsServiceResponse()
        partial = ExportMetricsPartialSuccess(rejected_data_points=rejected, error_message=message)
        return ExportMetricsServiceResponse(partial_success=partial)

    return {
        TRACES_PATH: Signal(
            ExportTraceServiceRequest,
            receiver.accept_traces,
            traces_response,
            TRACES,
            Reason.MALFORMED_SPAN,
        ),
        METRICS_PATH: Signal(
            ExportMetricsServiceRequest,
            receiver.accept_metrics,
            metrics_response,
            METRICS,
            Reason.MALFORMED_DATA_POINT,
        ),
    }


def token_ok(expected: str | None, header: str | None) -> bool:
    if expected is None:
        return True
    if header is None:
        return False
    # The scheme is case-insensitive (RFC 9110, 11.1); the token is compared as bytes:
    # compare_digest refuses str with non-ASCII characters (a hostile header).
    scheme, _, given = header.strip().partition(" ")
    if scheme.lower() != "bearer":
        return False
    return hmac.compare_digest(
        given.strip().encode("utf-8", "surrogatepass"), expected.encode("utf-8", "surrogatepass")
    )


# -- OTLP/HTTP ---------------------------------------------------------------------------------


class Answer(NamedTuple):
    """An HTTP answer: status, headers (``Content-Type`` among them), body."""

    status: int
    headers: dict[str, str]
    body: bytes


#: Seconds between two log lines of one kind of refusal (the others are counted in the next).
LOG_INTERVAL = 10.0
#: Seconds a request that was read waits for its decoded bound to fit in the budget before it is
#: refused as busy: large requests (each bounded at far more than its size) take turns instead.
DECODE_WAIT = 5.0
#: Bytes inflated at a time, each held in the budget before the next.
_INFLATE_STEP = 1 << 20
_MESSAGE_CHARS = 1000


class _TooLarge(Exception):
    pass


class _Busy(Exception):
    pass


class HttpProtocol:
    """OTLP/HTTP without sockets or a framework: :meth:`check` decides what can be decided from
    the request line and headers (before any body byte is read), :meth:`handle` answers a whole
    request. Errors are answers (a ``google.rpc.Status`` in the request's encoding), each with a
    counter in ``receiver.counts()`` and a log line (at most one per kind every
    :data:`LOG_INTERVAL` seconds). Thread-safe; nothing raises."""

    def __init__(
        self, receiver: Receiver, settings: ServeSettings, budget: ByteBudget | None = None
    ) -> None:
        self.receiver = receiver
        self.settings = settings
        # One budget per process, both front ends' (the receiver's), unless given one.
        self.budget = budget if budget is not None else receiver.budget
        self._signals = signals(receiver)
        self._log = RateLog(LOG_INTERVAL)

    # -- the two steps ----------------------------------------------------------------------

    def check(self, method: str, path: str, headers: Mapping[str, str]) -> Answer | None:
        """The answer decided before the body: ``None`` to go on and read it."""
        try:
            return self._check(method, path.split("?", 1)[0], _lowered(headers))
        except Exception as error:  # noqa: BLE001 - a bug: an answer all the same
            return self.failed(headers, error)

    def handle(self, path: str, headers: Mapping[str, str], body: bytes | bytearray) -> Answer:
        """The answer to a whole ``POST``: decompress, parse, accept, respond."""
        try:
            return self._handle(path.split("?", 1)[0], _lowered(headers), body)
        except Exception as error:  # noqa: BLE001 - a bug: an answer all the same
            return self.failed(headers, error)

    # -- answers the host gives on its own --------------------------------------------------

    def busy(self, headers: Mapping[str, str]) -> Answer:
        """503 + ``Retry-After``: too many request bytes are being read or decoded."""
        return self._refuse(
            _lowered(headers),
            503,
            code_pb2.UNAVAILABLE,
            Reason.REQUESTS_REFUSED_BUSY,
            "too many request bytes in flight (serve_max_inflight_bytes); retry later",
            retry=True,
        )

    def stopping(self, headers: Mapping[str, str]) -> Answer:
        """503 + ``Retry-After``: serve is stopping (another replica, or this one restarted,
        takes the retry)."""
        return self._refuse(
            _lowered(headers),
            503,
            code_pb2.UNAVAILABLE,
            Reason.REQUESTS_REFUSED_STOPPING,
            "otel-luna serve is stopping; retry later",
            retry=True,
        )

    def cut_at_stop(self, headers: Mapping[str, str]) -> Answer:
        """503 + ``Retry-After``: the stop's grace ended while the body was still arriving (the
        OTLP clients retry 503, against another replica or this one restarted)."""
        return self._refuse(
            _lowered(headers),
            503,
            code_pb2.UNAVAILABLE,
            Reason.REQUESTS_REFUSED_CUT_AT_STOP,
            "otel-luna serve stopped before the request arrived whole; retry later",
            retry=True,
        )

    def timed_out(self, headers: Mapping[str, str]) -> Answer:
        """408: the body did not arrive within ``serve_read_timeout``."""
        seconds = self.settings.serve_read_timeout
        return self._refuse(
            _lowered(headers),
            408,
            code_pb2.DEADLINE_EXCEEDED,
            Reason.REQUESTS_REFUSED_TIMEOUT,
            f"the request did not arrive within {seconds:g} s (serve_read_timeout)",
        )

    def too_large(self, headers: Mapping[str, str]) -> Answer:
        """413: the body (chunked, of no declared length) passed ``serve_max_message_bytes``."""
        return self._too_large(_lowered(headers))

    def bad_request(self, headers: Mapping[str, str], why: str, status: int = 400) -> Answer:
        """400 (or 413, 414, 431 for oversized requests, request lines and headers): what the
        HTTP layer could not read, e.g. broken chunked framing."""
        lowered = _lowered(headers)
        if status in (413, 414, 431):
            return self._refuse(
                lowered,
                status,
                code_pb2.RESOURCE_EXHAUSTED,
                Reason.REQUESTS_REFUSED_TOO_LARGE,
                f"request head too large: {why}",
            )
        return self._refuse(
            lowered, 400, code_pb2.INVALID_ARGUMENT, Reason.REQUESTS_REFUSED_MALFORMED, why
        )

    def failed(self, headers: Mapping[str, str], error: BaseException) -> Answer:
        """500: a bug. Logged with its type and text (no traceback), counted."""
        try:
            lowered = _lowered(headers)
        except Exception:  # noqa: BLE001 - headers that cannot even be read
            lowered = {}
        return self._refuse(
            lowered,
            500,
            code_pb2.INTERNAL,
            Reason.REQUESTS_FAILED,
            f"internal error: {type(error).__name__}: {str(error)[:200]}",
            level=logging.ERROR,
        )

    # -- inside ------------------------------------------------------------------------------

    def _check(self, method: str, path: str, headers: dict[str, str]) -> Answer | None:
        if path not in self._signals:
            what = "logs are not handled by otel-luna" if path == LOGS_PATH else "no such path"
            return self._refuse(
                headers, 404, code_pb2.NOT_FOUND, Reason.REQUESTS_REFUSED_NOT_FOUND, what
            )
        if method != "POST":
            return self._refuse(
                headers,
                405,
                code_pb2.UNIMPLEMENTED,
                Reason.REQUESTS_REFUSED_METHOD,
                f"{method[:20]} is not allowed; use POST",
                extra={"Allow": "POST"},
            )
        if not token_ok(self.settings.serve_token, headers.get("authorization")):
            return self._refuse(
                headers,
                401,
                code_pb2.UNAUTHENTICATED,
                Reason.REQUESTS_REFUSED_UNAUTHENTICATED,
                "missing or wrong bearer token",
                extra={"WWW-Authenticate": "Bearer"},
            )
        if _media_type(headers) not in (PROTOBUF, JSON):
            return self._refuse(
                headers,
                415,
                code_pb2.INVALID_ARGUMENT,
                Reason.REQUESTS_REFUSED_UNSUPPORTED,
                f"use Content-Type {PROTOBUF} or {JSON}",
            )
        encoding = headers.get("content-encoding", "").strip().lower()
        if encoding not in inflate.ENCODINGS:
            return self._refuse(
                headers,
                415,
                code_pb2.INVALID_ARGUMENT,
                Reason.REQUESTS_REFUSED_UNSUPPORTED,
                f"unsupported Content-Encoding {encoding[:40]!r}; use gzip, zstd, deflate or none",
            )
        codings = [c.strip() for c in headers.get("transfer-encoding", "").lower().split(",")]
        if any(coding not in ("", "chunked") for coding in codings):
            return self._refuse(  # RFC 9112, 6.1: a transfer coding not understood is a 501
                headers,
                501,
                code_pb2.UNIMPLEMENTED,
                Reason.REQUESTS_REFUSED_UNSUPPORTED,
                f"unsupported Transfer-Encoding {headers['transfer-encoding'][:40]!r}; "
                "use chunked (compress with Content-Encoding: gzip)",
            )
        length = headers.get("content-length")
        if length is not None:
            if not length.strip().isdigit():
                return self._refuse(
                    headers,
                    400,
                    code_pb2.INVALID_ARGUMENT,
                    Reason.REQUESTS_REFUSED_MALFORMED,
                    "bad Content-Length",
                )
            if int(length) > self.settings.serve_max_message_bytes:
                return self._too_large(headers)
        return None

    def _handle(self, path: str, headers: dict[str, str], body: bytes | bytearray) -> Answer:
        refused = self._check("POST", path, headers)
        if refused is not None:
            return refused
        signal_ = self._signals[path]
        answer_type = _answer_type(headers)
        if len(body) > self.settings.serve_max_message_bytes:
            return self._too_large(headers)
        held = [0]  # inflated bytes and the decoded bound, given back once accepted
        try:
            return self._decode_and_accept(signal_, headers, answer_type, body, held)
        finally:
            if held[0]:
                self.budget.give(held[0])

    def _decode_and_accept(
        self,
        signal_: Signal,
        headers: dict[str, str],
        answer_type: str,
        body: bytes | bytearray,
        held: list[int],
    ) -> Answer:
        try:
            data = self._decompress(body, headers.get("content-encoding", ""), held)
        except _TooLarge:
            return self._too_large(headers)
        except _Busy:
            return self.busy(headers)
        except inflate.Malformed as error:
            return self._malformed(headers, f"bad compressed body: {error}")
        limit = self.settings.serve_max_decoded_bytes
        decoded = signal_.decoded_bound(data, answer_type == JSON, limit)
        if decoded > limit:
            return self._refuse(
                headers,
                413,
                code_pb2.RESOURCE_EXHAUSTED,
                Reason.REQUESTS_REFUSED_DECODED_TOO_LARGE,
                decoded_too_large(decoded, limit),
            )
        # The body is held by the host (its length) and the inflated bytes here: alone, it fits.
        if not self.budget.take(decoded, held=len(body) + held[0], wait=DECODE_WAIT):
            return self.busy(headers)
        held[0] += decoded
        request = signal_.request_type()
        malformed: list[otlp.Malformed] = []
        try:
            if answer_type == JSON:
                malformed = otlp.parse_json(data, request)
            else:
                request.ParseFromString(data)
        except RecursionError:
            return self._malformed(headers, "nesting too deep")
        except Exception as error:  # noqa: BLE001 - DecodeError, ValueError, json errors, ...
            what = str(error)[:300] or type(error).__name__
            return self._malformed(headers, f"{type(error).__name__}: {what}")
        del data
        try:
            result = signal_.accept(request)
        except Backpressure as error:  # counted by the receiver
            return self._refuse(headers, 503, code_pb2.UNAVAILABLE, None, str(error), retry=True)
        count, message = self._partial(signal_, result, malformed)
        response = signal_.respond(count, message)
        return Answer(200, {"Content-Type": answer_type}, _encode(response, answer_type))

    def _partial(
        self, signal_: Signal, result: Result, malformed: list[otlp.Malformed]
    ) -> tuple[int, str]:
        """The partial success: the ingest's, plus the parts of an OTLP/JSON body left out."""
        if not malformed:
            return result.rejected, result.message
        lost = sum(part.items for part in malformed)
        self.receiver.ingest.count(signal_.name, signal_.malformed, lost)
        counts: Counter[Reason] = Counter(result.problems)
        counts[signal_.malformed] += lost
        first = malformed[0]
        noun = "span" if signal_.malformed is Reason.MALFORMED_SPAN else "metric"
        message = (
            f"{describe(counts)}; {len(malformed)} unreadable {noun}(s) left out, "
            f"first {first.where}: {first.error}"
        )
        if len(message) > _MESSAGE_CHARS:
            message = message[:_MESSAGE_CHARS] + "..."
        # An error may quote the body's lone surrogate: protobuf strings must be UTF-8.
        return rejected(counts), message.encode("utf-8", "backslashreplace").decode()

    def _decompress(self, raw: bytes | bytearray, encoding: str, held: list[int]) -> Any:
        """``raw`` decoded (:mod:`otel_luna.serve._inflate`), each step held in the budget;
        ``_TooLarge`` past the message limit."""
        encoding = encoding.strip().lower()
        if encoding in ("", "identity"):
            return raw
        limit = self.settings.serve_max_message_bytes
        out = bytearray()
        for chunk in inflate.decoded(raw, encoding, _INFLATE_STEP):
            if len(out) + len(chunk) > limit:
                raise _TooLarge
            if not self.budget.take(len(chunk)):
                raise _Busy
            held[0] += len(chunk)
            out += chunk
        return out

    def _too_large(self, headers: dict[str, str]) -> Answer:
        limit = self.settings.serve_max_message_bytes
        return self._refuse(
            headers,
            413,
            code_pb2.RESOURCE_EXHAUSTED,
            Reason.REQUESTS_REFUSED_TOO_LARGE,
            f"request larger than {limit} bytes (serve_max_message_bytes, after decompression)",
        )

    def _malformed(self, headers: dict[str, str], why: str) -> Answer:
        return self._refuse(
            headers,
            400,
            code_pb2.INVALID_ARGUMENT,
            Reason.REQUESTS_REFUSED_MALFORMED,
            f"malformed request: {why}",
        )

    def _refuse(
        self,
        headers: dict[str, str],
        status: int,
        code: int,
        reason: Reason | None,
        message: str,
        *,
        retry: bool = False,
        extra: dict[str, str] | None = None,
        level: int = logging.WARNING,
    ) -> Answer:
        """An error answer: a ``google.rpc.Status`` in the request's encoding, counted (unless
        the receiver counted it: ``reason`` None) and logged."""
        # A parse error may quote the body's lone surrogate: protobuf strings must be UTF-8.
        message = message.encode("utf-8", "backslashreplace").decode()
        if reason is not None:
            self.receiver.requests.add(reason)
        self.log(str(reason or "backpressure"), f"{status}: {message}", level)
        answer_type = _answer_type(headers)
        answer_headers = {"Content-Type": answer_type, **(extra or {})}
        if retry:
            answer_headers["Retry-After"] = str(RETRY_AFTER_SECONDS)
        body = _encode(status_pb2.Status(code=code, message=message), answer_type)
        return Answer(status, answer_headers, body)

    def log(self, key: str, text: str, level: int = logging.WARNING) -> None:
        """One line per ``key`` every :data:`LOG_INTERVAL` seconds, saying how many were not
        logged since (the host logs its own events here too: timeouts, TLS failures)."""
        due = self._log.due(key)
        if due is None:
            return
        more = f"; {due.skipped} more since the last line" if due.skipped else ""
        _logger.log(level, "otlp/http %s (%s%s)", text[:400], key, more)


#: Headers that must come once: a repeated one is as good as none.
_SINGLE = frozenset({"authorization"})


def _lowered(headers: Mapping[str, str]) -> dict[str, str]:
    lowered: dict[str, str] = {}
    repeated: set[str] = set()
    for name, value in headers.items():
        key = str(name).lower()
        if key in lowered and key in _SINGLE:
            repeated.add(key)  # which one a proxy in front checked is anybody's guess
        lowered[key] = value
    for key in repeated:
        del lowered[key]
    return lowered


def _media_type(headers: Mapping[str, str]) -> str:
    return headers.get("content-type", "").split(";", 1)[0].strip().lower()


def _answer_type(headers: Mapping[str, str]) -> str:
    """Answers are in the request's encoding: JSON for JSON, else protobuf."""
    return JSON if _media_type(headers) == JSON else PROTOBUF


def _encode(message: Message, answer_type: str) -> bytes:
    text: str = json_format.MessageToJson(message, indent=None) if answer_type == JSON else ""
    serialized: bytes = text.encode() if text else message.SerializeToString()
    return serialized
