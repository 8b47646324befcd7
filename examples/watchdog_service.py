"""A small watchdog-proxy-like aiohttp service that sends the watchdog metrics pings.

watchdog-proxy takes images from consumer applications, queues them, and has a worker submit
each to PhotoDNA and report the answer back to the consumer. This stand-in does the same in one
process, with stand-ins for PhotoDNA and for the consumer's callback:

* ``POST /accept`` — a ``multipart/form-data`` body with a ``consumer_name`` field and an
  ``image`` file part (its content type is the ping's ``type``): answered 201
  ``{"id": WATCHDOG_ID}`` after a ``new_item`` ping, and the item goes to the queue;
* a **poller** moves items from the queue to the workers (at most one waiting per worker) and
  sends a ``poller_heartbeat`` with the queue sizes when it starts, every
  ``--heartbeat-interval`` seconds, and when it stops;
* ``--workers`` **workers** each take an item and, inside
  ``with worker_works(worker_id, consumer_name, watchdog_id) as work:``, time
  ``work.sent()`` (the upload to the PhotoDNA stand-in), ``work.received()`` (the wait for its
  answer: a match with probability ``--match-rate``; with probability ``--error-rate`` it raises
  :class:`PhotoDNAError` instead) and ``work.submitted()`` (the consumer callback stand-in).
  A worker that raises still sends its ``worker_works`` ping, with ``is_error`` true;
* ``GET /status`` — JSON counters: accepted, processed, errors, matches and the queue sizes.

It never configures OpenTelemetry: run it unchanged under ``opentelemetry-instrument`` with the
``luna`` exporter and the ``watchdog`` profile, e.g. to Ping Centre::

    OTEL_TRACES_EXPORTER=luna OTEL_METRICS_EXPORTER=none OTEL_LOGS_EXPORTER=none \\
    OTEL_EXPORTER_LUNA_SCHEMA=watchdog OTEL_EXPORTER_LUNA_SINK=pingcentre \\
    OTEL_EXPORTER_LUNA_ENDPOINT=https://ping-centre.example/v3/links/ping-centre \\
    opentelemetry-instrument python examples/watchdog_service.py --port 8080

(or ``OTEL_EXPORTER_LUNA_ENDPOINT=http://127.0.0.1:8086`` for InfluxDB, ``file://$PWD/w.jsonl``
for a file of pings). It prints ``listening on http://HOST:PORT`` once bound (``--port 0`` picks
a free port). On SIGTERM or SIGINT it stops accepting, lets the workers drain the queue for at
most ``--drain-timeout`` seconds, sends the last heartbeat and exits 0, so the SDK flushes the
exporter at exit.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
import signal
import sys
import uuid
from collections import Counter
from dataclasses import dataclass

from aiohttp import web

from otel_luna.watchdog import new_item, poller_heartbeat, worker_works

DEFAULT_CONTENT_TYPE = "application/octet-stream"


class PhotoDNAError(RuntimeError):
    """The PhotoDNA stand-in failed to answer."""


@dataclass(frozen=True)
class Item:
    """One submitted image on its way through the queue."""

    watchdog_id: str
    consumer_name: str
    content_type: str
    image: bytes


class PhotoDNA:
    """Stand-in for the PhotoDNA match API: an upload, then a random answer or an error."""

    def __init__(
        self,
        rng: random.Random,
        match_rate: float,
        error_rate: float,
        latency_ms: tuple[float, float],
    ) -> None:
        self._rng = rng
        self._match_rate = match_rate
        self._error_rate = error_rate
        self._latency = latency_ms

    async def _pause(self) -> None:
        await asyncio.sleep(self._rng.uniform(*self._latency) / 1000)

    async def send(self, image: bytes) -> str:
        """Upload the image; PhotoDNA's tracking id."""
        await self._pause()
        return f"1_photodna_{uuid.uuid4()}"

    async def answer(self, tracking_id: str) -> bool:
        """Wait for the match result of ``tracking_id``; raises :class:`PhotoDNAError` now and
        then."""
        await self._pause()
        if self._rng.random() < self._error_rate:
            raise PhotoDNAError(f"PhotoDNA answered 500 for {tracking_id}")
        return self._rng.random() < self._match_rate


class Consumer:
    """Stand-in for the consumer's callback (``positive_uri`` / ``negative_uri`` in the
    original): it only takes a little time."""

    def __init__(self, rng: random.Random, latency_ms: tuple[float, float]) -> None:
        self._rng = rng
        self._latency = latency_ms

    async def notify(self, item: Item, is_match: bool) -> None:
        await asyncio.sleep(self._rng.uniform(*self._latency) / 1000)


class Watchdog:
    """The queue, the poller and the workers."""

    def __init__(
        self,
        photodna: PhotoDNA,
        consumer: Consumer,
        workers: int,
        heartbeat_interval: float,
    ) -> None:
        self.photodna = photodna
        self.consumer = consumer
        self.workers = workers
        self.heartbeat_interval = heartbeat_interval
        self.poller_id = str(uuid.uuid4())
        self.queue: asyncio.Queue[Item] = asyncio.Queue()
        self.handoff: asyncio.Queue[Item] = asyncio.Queue(maxsize=workers)
        self.waiting = 0  # taken from the queue, not yet started by a worker
        self.in_progress = 0
        self.counts: Counter[str] = Counter()
        self._unfinished = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._tasks: list[asyncio.Task[None]] = []

    # -- accepting ------------------------------------------------------------------------------

    def submit(self, consumer_name: str, content_type: str, image: bytes) -> str:
        """Queue an image; its watchdog id. Sends ``new_item``."""
        item = Item(str(uuid.uuid4()), consumer_name, content_type, image)
        new_item(item.consumer_name, item.watchdog_id, item.content_type)
        self.counts["accepted"] += 1
        self._unfinished += 1
        self._idle.clear()
        self.queue.put_nowait(item)
        return item.watchdog_id

    def status(self) -> dict[str, int]:
        return {
            "accepted": self.counts["accepted"],
            "processed": self.counts["processed"],
            "errors": self.counts["errors"],
            "matches": self.counts["matches"],
            "items_in_queue": self.queue.qsize(),
            "items_in_progress": self.in_progress,
            "items_in_waiting": self.waiting,
        }

    # -- poller and workers ---------------------------------------------------------------------

    def heartbeat(self) -> None:
        poller_heartbeat(self.poller_id, self.queue.qsize(), self.in_progress, self.waiting)
        self.counts["heartbeats"] += 1

    async def _heartbeats(self) -> None:
        while True:
            await asyncio.sleep(self.heartbeat_interval)
            self.heartbeat()

    async def _poll(self) -> None:
        while True:
            item = await self.queue.get()
            self.waiting += 1
            await self.handoff.put(item)

    async def _work(self) -> None:
        while True:
            item = await self.handoff.get()
            self.waiting -= 1
            self.in_progress += 1
            try:
                await self.process(item)
            except PhotoDNAError as error:
                self.counts["errors"] += 1
                print(f"worker: {item.watchdog_id}: {error}", flush=True)
            except Exception as error:  # noqa: BLE001 - a worker outlives any item, as a Lambda
                self.counts["errors"] += 1
                print(f"worker: {item.watchdog_id}: {error!r}", flush=True)
            finally:
                self.in_progress -= 1
                self.counts["processed"] += 1
                self._unfinished -= 1
                if self._unfinished == 0:
                    self._idle.set()

    async def process(self, item: Item) -> None:
        """One ``worker_works`` ping per item, whether it raises or not."""
        worker_id = str(uuid.uuid4())  # per invocation, as Lambda's awsRequestId
        with worker_works(worker_id, item.consumer_name, item.watchdog_id) as work:
            with work.sent():
                tracking_id = await self.photodna.send(item.image)
            work.set_photodna_tracking_id(tracking_id)
            with work.received():
                is_match = await self.photodna.answer(tracking_id)
            work.set_match(is_match)
            with work.submitted():
                await self.consumer.notify(item, is_match)
        if is_match:
            self.counts["matches"] += 1

    def start(self) -> None:
        self.heartbeat()
        self._tasks = [asyncio.create_task(self._poll()), asyncio.create_task(self._heartbeats())]
        self._tasks += [asyncio.create_task(self._work()) for _ in range(self.workers)]

    async def stop(self, drain_timeout: float) -> int:
        """Let the workers finish what was accepted (at most ``drain_timeout`` s), stop the
        tasks, send the last heartbeat; the number of items left unprocessed."""
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._idle.wait(), drain_timeout)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self.heartbeat()
        return self._unfinished


# -- HTTP ---------------------------------------------------------------------------------------

WATCHDOG = web.AppKey("watchdog", Watchdog)


async def accept(request: web.Request) -> web.Response:
    watchdog = request.app[WATCHDOG]
    if not request.content_type.startswith("multipart/"):
        return web.json_response({"error": "expected multipart/form-data"}, status=400)
    form = await request.post()
    consumer_name = form.get("consumer_name")
    image = form.get("image")
    if not isinstance(consumer_name, str) or not consumer_name:
        return web.json_response({"error": "consumer_name is required"}, status=400)
    if not isinstance(image, web.FileField):
        return web.json_response({"error": "an image file part is required"}, status=400)
    data = image.file.read()
    if not data:
        return web.json_response({"error": "the image is empty"}, status=400)
    watchdog_id = watchdog.submit(consumer_name, image.content_type or DEFAULT_CONTENT_TYPE, data)
    return web.json_response({"id": watchdog_id}, status=201)


async def status(request: web.Request) -> web.Response:
    watchdog = request.app[WATCHDOG]
    return web.json_response(watchdog.status())


def make_app(watchdog: Watchdog) -> web.Application:
    """The application; ``web.Application`` is looked up now, so instrumentation applies."""
    app = web.Application(client_max_size=16 * 1024 * 1024)
    app[WATCHDOG] = watchdog
    app.router.add_post("/accept", accept)
    app.router.add_get("/status", status)
    return app


async def serve(args: argparse.Namespace) -> None:
    """Serve until SIGTERM or SIGINT; then stop accepting, drain, send the last heartbeat."""
    rng = random.Random(args.seed)
    latency = _range(args.latency_ms)
    watchdog = Watchdog(
        PhotoDNA(rng, args.match_rate, args.error_rate, latency),
        Consumer(rng, latency),
        args.workers,
        args.heartbeat_interval,
    )
    runner = web.AppRunner(make_app(watchdog), handle_signals=False, access_log=None)
    await runner.setup()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    watchdog.start()
    try:
        site = web.TCPSite(runner, args.host, args.port)
        await site.start()
        print(f"listening on http://{args.host}:{runner.addresses[0][1]}", flush=True)
        await stop.wait()
    finally:
        await runner.cleanup()  # no new items from here on
        left = await watchdog.stop(args.drain_timeout)
        counts = watchdog.counts
        print(
            f"stopped: {counts['accepted']} accepted, {counts['processed']} processed, "
            f"{counts['errors']} errors, {left} left in the queue",
            flush=True,
        )


def _range(text: str) -> tuple[float, float]:
    low, _, high = text.partition(",")
    return float(low), float(high or low)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.partition("\n")[0])
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8080, help="port to bind; 0 picks a free one")
    parser.add_argument("--workers", type=int, default=2, help="concurrent workers (default 2)")
    parser.add_argument(
        "--heartbeat-interval",
        type=float,
        default=20.0,
        metavar="SECONDS",
        help="seconds between poller heartbeats (default 20, as watchdog-proxy)",
    )
    parser.add_argument(
        "--match-rate", type=float, default=0.2, help="share of PhotoDNA matches (default 0.2)"
    )
    parser.add_argument(
        "--error-rate", type=float, default=0.05, help="share of PhotoDNA errors (default 0.05)"
    )
    parser.add_argument(
        "--latency-ms",
        default="2,20",
        metavar="LOW,HIGH",
        help="each stand-in call takes a random time in this range (default 2,20)",
    )
    parser.add_argument(
        "--drain-timeout",
        type=float,
        default=10.0,
        metavar="SECONDS",
        help="at shutdown, seconds to let the workers empty the queue (default 10)",
    )
    parser.add_argument("--seed", type=int, default=None, help="seed of the stand-ins' randomness")
    args = parser.parse_args(argv)
    if args.workers < 1:
        parser.error("--workers must be at least 1")
    asyncio.run(serve(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
