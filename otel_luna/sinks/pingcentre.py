"""Ping Centre: one HTTP POST of one JSON object per ping (watchdog-proxy's ``METRICS_URL``).

No batching on the wire: Ping Centre takes one ping per request. Pings of a batch are POSTed
concurrently (at most ``max_in_flight`` at once) over reused connections. A 2xx is delivered;
a connection error, timeout, 408, 429 or 5xx is retried later (only the pings that failed);
any other 4xx — Ping Centre answers 400 to a ping without ``topic`` — is refused for good and
goes to the dead-letter file.
"""

from __future__ import annotations

import threading

import urllib3

from otel_luna.settings import Settings
from otel_luna.sinks import SinkError, parse_retry_after, suppress_instrumentation

_RETRYABLE_STATUS = frozenset({408, 429})


class PingCentreSink:
    """POSTs each line of a body as its own ``application/json`` request."""

    format = "json"

    def __init__(self, settings: Settings) -> None:
        self._url = settings.endpoint
        self._pool = urllib3.PoolManager(
            num_pools=1,
            maxsize=settings.max_in_flight,
            block=False,  # our workers bound the requests in flight; never wait for the pool
            retries=False,
            timeout=urllib3.Timeout(total=settings.timeout),
        )
        self._max_in_flight = settings.max_in_flight

    def _post_all(
        self, pings: list[bytes]
    ) -> list[tuple[bool, int | None, str, float | None] | None]:
        """Post every ping, at most ``max_in_flight`` at once, from short-lived threads of our
        own: a ``concurrent.futures`` executor refuses work during interpreter exit, exactly
        when the SDK's final flush runs."""
        outcomes: list[tuple[bool, int | None, str, float | None] | None] = [None] * len(pings)
        workers = min(self._max_in_flight, len(pings))
        if workers <= 1:
            return [self._post(ping) for ping in pings]
        indexes = iter(range(len(pings)))
        lock = threading.Lock()

        def work() -> None:
            suppress_instrumentation()  # new threads start with an empty context
            while True:
                with lock:
                    index = next(indexes, None)
                if index is None:
                    return
                outcomes[index] = self._post(pings[index])

        threads = [threading.Thread(target=work, daemon=True) for _ in range(workers)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        return outcomes

    def _post(self, ping: bytes) -> tuple[bool, int | None, str, float | None] | None:
        """None when delivered, else (retryable, status, reason, retry-after)."""
        try:
            response = self._pool.request(
                "POST",
                self._url,
                body=ping,
                headers={"Content-Type": "application/json"},
                preload_content=True,
            )
        except urllib3.exceptions.HTTPError as error:
            return True, None, type(error).__name__, None
        status = response.status
        if status < 300:
            return None
        reason = response.data[:300].decode(errors="replace").strip() or f"HTTP {status}"
        retryable = status in _RETRYABLE_STATUS or status >= 500
        return retryable, status, reason, parse_retry_after(response.headers.get("Retry-After"))

    def write(self, body: bytes) -> None:
        pings = body.splitlines()
        outcomes = self._post_all(pings)
        retry = [
            ping for ping, outcome in zip(pings, outcomes, strict=True) if outcome and outcome[0]
        ]
        rejected = [
            (ping, outcome[2], outcome[1])
            for ping, outcome in zip(pings, outcomes, strict=True)
            if outcome and not outcome[0]
        ]
        if not retry and not rejected:
            return
        failed = [outcome for outcome in outcomes if outcome]
        hints = [outcome[3] for outcome in failed if outcome[3] is not None]
        raise SinkError(
            f"{self._url}: {len(failed)} of {len(pings)} pings failed, e.g. {failed[0][2]}",
            retryable=bool(retry),
            status=failed[0][1],
            retry_after=max(hints) if hints else None,
            retry_body=b"".join(ping + b"\n" for ping in retry),
            rejected=rejected,
        )

    def close(self) -> None:
        self._pool.clear()
