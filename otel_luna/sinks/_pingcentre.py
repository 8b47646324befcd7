"""Ping Centre: one HTTP POST of one JSON object per ping (watchdog-proxy's ``METRICS_URL``).

No batching on the wire: Ping Centre takes one ping per request. Pings of a batch are POSTed
concurrently (at most ``max_in_flight`` at once) over reused connections. Each reply is
classified like the InfluxDB ones (:func:`~otel_luna.sinks.classify`): a 2xx is delivered; a
connection error, timeout, 408, 429 or 5xx is retried later (only the pings that failed); a
400 (Ping Centre's answer to a ping without ``topic``), 413 or 422 refuses that ping for good:
it goes to the dead-letter file. 401, 403, 404 (and other 4xx, TLS errors) block the
destination: no more pings of the batch are sent, none is dead-lettered, and every ping not
delivered waits in the spool.
"""

from __future__ import annotations

import threading

import urllib3

from otel_luna.redact import redact
from otel_luna.settings._declare import Setting
from otel_luna.settings._parsers import number
from otel_luna.settings._settings import Settings
from otel_luna.sinks._base import (
    JSON,
    MESSAGE_LIMIT,
    REPLY_LIMIT,
    Failure,
    Sink,
    SinkError,
    classify,
    classify_connection_error,
    connection_trouble,
    parse_retry_after,
    server_reason,
    suppress_instrumentation,
)

MAX_IN_FLIGHT = Setting(
    "max_in_flight",
    8,
    *number(int, 1, 1024),
    doc="most pings being POSTed at once (one HTTP request per ping)",
)

#: How one ping fared: None when delivered, else (failure, HTTP status, reason, Retry-After,
#: the class of a connection's trouble).
_Outcome = tuple[Failure, int | None, str, float | None, str | None] | None


class PingCentreSink(Sink):
    """POSTs each line of a body as its own ``application/json`` request."""

    format = JSON
    settings = (MAX_IN_FLIGHT,)

    def __init__(self, settings: Settings) -> None:
        self._url = settings.endpoint
        self._timeout = settings.timeout
        self._max_in_flight: int = settings.option(MAX_IN_FLIGHT)
        self._secrets = settings.secrets
        self._pool = self._new_pool()

    def _new_pool(self) -> urllib3.PoolManager:
        return urllib3.PoolManager(
            num_pools=1,
            maxsize=self._max_in_flight,
            block=False,  # our workers bound the requests in flight; never wait for the pool
            retries=False,
            timeout=urllib3.Timeout(total=self._timeout),
        )

    def after_fork_in_child(self) -> None:
        """A pool of the child's own; the parent's sockets are left open for the parent."""
        self._pool = self._new_pool()

    def _post_all(self, pings: list[bytes]) -> list[_Outcome]:
        """Post every ping, at most ``max_in_flight`` at once, from short-lived threads of our
        own: a ``concurrent.futures`` executor refuses work during interpreter exit, exactly
        when the SDK's final flush runs. Once the destination answers BLOCKED the pings not yet
        sent are not sent: they get that same outcome."""
        outcomes: list[_Outcome] = [None] * len(pings)
        indexes = iter(range(len(pings)))
        lock = threading.Lock()
        blocking: list[_Outcome] = []

        def work() -> None:
            suppress_instrumentation()  # new threads start with an empty context
            while True:
                with lock:
                    index = next(indexes, None)
                if index is None:
                    return
                if blocking:
                    outcomes[index] = blocking[0]
                    continue
                outcome = outcomes[index] = self._post(pings[index])
                if outcome is not None and outcome[0] is Failure.BLOCKED:
                    blocking.append(outcome)

        workers = min(self._max_in_flight, len(pings))
        if workers <= 1:
            work()
            return outcomes
        threads = [threading.Thread(target=work, daemon=True) for _ in range(workers)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        return outcomes

    def _post(self, ping: bytes) -> _Outcome:
        try:
            response = self._pool.request(
                "POST",
                self._url,
                body=ping,
                headers={"Content-Type": "application/json"},
                preload_content=True,
            )
        except urllib3.exceptions.HTTPError as error:
            reason = redact(f"{type(error).__name__}: {error}", self._secrets)
            return classify_connection_error(error), None, reason, None, connection_trouble(error)
        status = response.status
        if status < 300:
            return None
        reason = server_reason(response.data[:REPLY_LIMIT]) or f"HTTP {status}"
        reason = redact(reason, self._secrets)[:MESSAGE_LIMIT]  # redacted before shortened
        retry_after = parse_retry_after(response.headers.get("Retry-After"))
        return classify(status, reason), status, reason, retry_after, None

    def write(self, body: bytes) -> None:
        pings = body.splitlines()
        outcomes = self._post_all(pings)
        failed = [outcome for outcome in outcomes if outcome is not None]
        if not failed:
            return
        blocked = [outcome for outcome in failed if outcome[0] is Failure.BLOCKED]
        retry = [outcome for outcome in failed if outcome[0] is Failure.RETRY]
        decisive = (blocked or retry or failed)[0]
        if blocked:  # nothing is refused for good while the destination refuses everything
            keep = [ping for ping, outcome in zip(pings, outcomes, strict=True) if outcome]
            rejected = []
        else:
            keep = [
                ping
                for ping, outcome in zip(pings, outcomes, strict=True)
                if outcome and outcome[0] is Failure.RETRY
            ]
            rejected = [
                (ping, outcome[2], outcome[1])
                for ping, outcome in zip(pings, outcomes, strict=True)
                if outcome and outcome[0] in (Failure.PER_LINE, Failure.TOO_LARGE)
            ]
        settled = rejected or any(outcome is None for outcome in outcomes)
        hints = [outcome[3] for outcome in failed if outcome[3] is not None]
        raise SinkError(
            f"{self._url}: {len(failed)} of {len(pings)} pings failed, e.g. {decisive[2]}",
            failure=decisive[0],
            status=decisive[1],
            retry_after=max(hints) if hints else None,
            # Some pings were settled: say which are left; else the whole body is.
            retry_body=b"".join(ping + b"\n" for ping in keep) if settled else None,
            rejected=rejected if settled else None,
            secrets=self._secrets,
            trouble=decisive[4],
        )

    def close(self) -> None:
        self._pool.clear()
