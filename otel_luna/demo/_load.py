"""The demo's load generator: a seeded mix of requests over the example service's routes,
failing ones included (:func:`plan_requests`), sent concurrently with a progress bar on standard
error (:func:`drive`, aiohttp: the ``demo`` extra)."""

from __future__ import annotations

import asyncio
import json
import random
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TextIO

from otel_luna.demo._errors import DemoError

__all__ = [
    "BAD_INPUT_DATA",
    "DEFAULT_CONCURRENCY",
    "DEFAULT_REQUESTS",
    "EVENTS_ROUTE",
    "HANDLER_NOT_FOUND",
    "REQUEST_ID_HEADER",
    "REQUEST_MIX",
    "REQUEST_TIMEOUT",
    "Call",
    "DriveResult",
    "ProgressBar",
    "drive",
    "plan_requests",
]

DEFAULT_REQUESTS = 300
DEFAULT_CONCURRENCY = 8
REQUEST_ID_HEADER = "LUNA-Request-Id"
#: Seconds to wait for one request.
REQUEST_TIMEOUT = 30.0

#: The app's LUNA error codes (see ``otel_luna/examples/luna_handlers_app.py``).
BAD_INPUT_DATA = 12031
HANDLER_NOT_FOUND = 22002

#: The request mix: kind of request and its weight.
REQUEST_MIX: tuple[tuple[str, int], ...] = (
    ("detector", 25),
    ("extractor", 20),
    ("extractor_bad_body", 6),
    ("handler_events", 27),
    ("unknown_handler_events", 10),
    ("version", 12),
)
EVENTS_ROUTE = "POST:/handlers/{handler_id}/events"


@dataclass(frozen=True)
class Call:
    """One planned request and what the app should answer."""

    kind: str
    method: str
    path: str
    route: str
    expect_status: int
    expect_error_code: int | None = None
    body: bytes = b""
    content_type: str | None = None
    request_id: str | None = None
    handler_id: str | None = None
    #: The estimations the app counts (``record_usages``) when it answers as expected.
    usages: tuple[tuple[str, int], ...] = ()

    @property
    def headers(self) -> dict[str, str]:
        headers = {}
        if self.content_type:
            headers["Content-Type"] = self.content_type
        if self.request_id:
            headers[REQUEST_ID_HEADER] = self.request_id
        return headers


def plan_requests(
    count: int,
    handler_ids: Sequence[str],
    unknown_handler_ids: Sequence[str],
    rng: random.Random,
) -> list[Call]:
    """``count`` requests drawn from :data:`REQUEST_MIX`; two in three carry a request id."""
    kinds = [kind for kind, _ in REQUEST_MIX]
    weights = [weight for _, weight in REQUEST_MIX]
    calls = []
    for kind in rng.choices(kinds, weights, k=count):
        request_id = None
        if rng.random() < 2 / 3:
            request_id = f"{int(time.time())},{uuid.UUID(int=rng.getrandbits(128), version=4)}"
        calls.append(_call(kind, handler_ids, unknown_handler_ids, rng, request_id))
    return calls


def _call(
    kind: str,
    handler_ids: Sequence[str],
    unknown_handler_ids: Sequence[str],
    rng: random.Random,
    request_id: str | None,
) -> Call:
    json_type = "application/json"
    if kind == "detector":
        image = rng.randbytes(rng.randint(64, 512))
        return Call(
            kind,
            "POST",
            "/detector",
            "POST:/detector",
            201,
            body=image,
            content_type="image/jpeg",
            request_id=request_id,
            usages=(("face_detector", 1),),
        )
    if kind == "extractor":
        samples = [str(uuid.UUID(int=rng.getrandbits(128))) for _ in range(rng.randint(1, 3))]
        return Call(
            kind,
            "POST",
            "/extractor",
            "POST:/extractor",
            201,
            body=json.dumps({"sample_ids": samples}).encode(),
            content_type=json_type,
            request_id=request_id,
            usages=(
                ("face_descriptor_extractor", len(samples)),
                ("face_basic_attributes_extractor", len(samples)),
            ),
        )
    if kind == "extractor_bad_body":
        return Call(
            kind,
            "POST",
            "/extractor",
            "POST:/extractor",
            400,
            BAD_INPUT_DATA,
            body=b"{not json",
            content_type=json_type,
            request_id=request_id,
        )
    if kind in ("handler_events", "unknown_handler_events"):
        known = kind == "handler_events"
        handler_id = rng.choice(handler_ids if known else unknown_handler_ids)
        body = json.dumps({"images": [{"url": "http://image-store/1.jpg"}]}).encode()
        return Call(
            kind,
            "POST",
            f"/handlers/{handler_id}/events",
            EVENTS_ROUTE,
            201 if known else 404,
            None if known else HANDLER_NOT_FOUND,
            body=body,
            content_type=json_type,
            request_id=request_id,
            handler_id=handler_id,
        )
    if kind == "version":
        return Call(kind, "GET", "/version", "GET:/version", 200, request_id=request_id)
    raise ValueError(f"unknown request kind {kind!r}")


class ProgressBar:
    """A one-line progress bar on a terminal, redrawn with ``\\r`` (at most every 50 ms).

    On a stream that is not a terminal only the final state is written, once.
    """

    width = 30
    redraw_seconds = 0.05

    def __init__(self, total: int, stream: TextIO | None, label: str = "requests") -> None:
        self.total = total
        self.stream = stream
        self.label = label
        self._tty = stream is not None and stream.isatty()
        self._started = time.monotonic()
        self._drawn_at = -1.0
        #: Seconds from :meth:`start` to the latest :meth:`update`.
        self.elapsed = 0.0

    def start(self, at: float | None = None) -> None:
        """Count the time from ``at`` (a :func:`time.monotonic` value; default now)."""
        self._started = time.monotonic() if at is None else at
        self.elapsed = 0.0

    def render(self, done: int) -> str:
        """The bar for ``done`` of :attr:`total`, with the time of the latest :meth:`update`."""
        filled = self.width * done // max(self.total, 1)
        bar = "#" * filled + "." * (self.width - filled)
        return f"[{bar}] {done}/{self.total} {self.label} {self.elapsed:5.1f} s"

    def update(self, done: int) -> None:
        """Note ``done`` (and the time since :meth:`start` in :attr:`elapsed`); redraw."""
        now = time.monotonic()
        self.elapsed = now - self._started
        if self.stream is None:
            return
        final = done >= self.total
        if not final and (not self._tty or now - self._drawn_at < self.redraw_seconds):
            return
        self._drawn_at = now
        self.stream.write(("\r" if self._tty else "") + self.render(done))
        self.stream.flush()

    def close(self) -> None:
        if self.stream is not None:
            self.stream.write("\n")
            self.stream.flush()


@dataclass
class DriveResult:
    """What the app answered: ``statuses[i]`` for ``calls[i]`` (``None``: no answer);
    ``seconds`` from the first request sent to the last answer (the time the progress bar shows)."""

    statuses: list[int | None]
    seconds: float
    problems: list[str] = field(default_factory=list)

    @property
    def answered(self) -> int:
        return sum(status is not None for status in self.statuses)


def drive(
    base_url: str,
    calls: Sequence[Call],
    concurrency: int = DEFAULT_CONCURRENCY,
    progress: TextIO | None = None,
) -> DriveResult:
    """Send ``calls`` to ``base_url``, ``concurrency`` at a time; never raises on HTTP errors."""
    return asyncio.run(_drive(base_url, calls, concurrency, ProgressBar(len(calls), progress)))


async def _drive(
    base_url: str, calls: Sequence[Call], concurrency: int, bar: ProgressBar
) -> DriveResult:
    try:
        import aiohttp
    except ImportError:  # pragma: no cover - aiohttp is in the demo extra
        raise DemoError("aiohttp is needed: pip install 'otel-luna[demo]'") from None

    statuses: list[int | None] = [None] * len(calls)
    problems: list[str] = []
    pending = iter(range(len(calls)))
    done = 0
    bar.start()  # the bar and the summary line count the same time
    timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT)
    connector = aiohttp.TCPConnector(limit=concurrency)

    async def worker(session: aiohttp.ClientSession) -> None:
        nonlocal done
        for index in pending:  # one iterator shared by the workers
            call = calls[index]
            try:
                async with session.request(
                    call.method, base_url + call.path, data=call.body or None, headers=call.headers
                ) as response:
                    await response.read()
                    statuses[index] = response.status
            except (aiohttp.ClientError, asyncio.TimeoutError) as error:
                problems.append(f"{call.method} {call.path}: {type(error).__name__}: {error}")
            else:
                if response.status != call.expect_status:
                    problems.append(
                        f"{call.method} {call.path}: HTTP {response.status}, "
                        f"expected {call.expect_status}"
                    )
            done += 1
            bar.update(done)

    bar.update(0)
    try:
        async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
            workers = max(1, min(concurrency, len(calls)))
            await asyncio.gather(*(worker(session) for _ in range(workers)))
    finally:
        bar.close()
    return DriveResult(statuses, bar.elapsed, problems)
