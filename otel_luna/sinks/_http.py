"""HTTP plumbing shared by the package: the InfluxDB sinks' pooled poster, basic auth."""

from __future__ import annotations

import gzip as gzip_module
from collections.abc import Iterable
from typing import TYPE_CHECKING

import urllib3

from otel_luna.sinks._base import (
    REPLY_LIMIT,
    Sink,
    SinkError,
    classify,
    classify_connection_error,
    connection_trouble,
    parse_retry_after,
    server_reason,
)

if TYPE_CHECKING:
    from otel_luna.settings._settings import Settings


class HttpPoster:
    """POSTs bodies to one URL; maps failures to a classified, redacted :class:`SinkError`."""

    def __init__(
        self,
        url: str,
        headers: dict[str, str],
        *,
        timeout: float,
        gzip: bool,
        secrets: Iterable[str] = (),
    ) -> None:
        self._url = url
        self._headers = {"Content-Type": "text/plain; charset=utf-8", **headers}
        if gzip:
            self._headers["Content-Encoding"] = "gzip"
        self._gzip = gzip
        self._timeout = timeout
        self._secrets = tuple(secrets)
        self._pool = self._new_pool()

    def _new_pool(self) -> urllib3.PoolManager:
        return urllib3.PoolManager(
            num_pools=1, maxsize=1, retries=False, timeout=urllib3.Timeout(total=self._timeout)
        )

    def post(self, body: bytes, where: str) -> urllib3.BaseHTTPResponse:
        payload = gzip_module.compress(body, compresslevel=5) if self._gzip else body
        try:
            response = self._pool.request(
                "POST", self._url, body=payload, headers=self._headers, preload_content=True
            )
        except urllib3.exceptions.HTTPError as error:
            raise SinkError(
                f"{where}: {type(error).__name__}: {error}",
                failure=classify_connection_error(error),
                secrets=self._secrets,
                trouble=connection_trouble(error),
            ) from None
        if response.status >= 300:
            reason = server_reason(response.data[:REPLY_LIMIT])
            raise SinkError(
                f"{where}: HTTP {response.status}: {reason}",
                failure=classify(response.status, reason),
                status=response.status,
                retry_after=parse_retry_after(response.headers.get("Retry-After")),
                secrets=self._secrets,
            )
        return response

    def after_fork_in_child(self) -> None:
        """A pool of the child's own; the parent's sockets are left open for the parent."""
        self._pool = self._new_pool()

    def close(self) -> None:
        self._pool.clear()


class PostingSink(Sink):
    """A sink that POSTs every body to one URL (the InfluxDB write APIs) through an
    :class:`HttpPoster`; ``where`` names the destination in error messages."""

    def __init__(self, settings: Settings, url: str, headers: dict[str, str], where: str) -> None:
        self._where = where
        self._poster = HttpPoster(
            url, headers, timeout=settings.timeout, gzip=settings.gzip, secrets=settings.secrets
        )

    def write(self, body: bytes) -> None:
        self._poster.post(body, self._where)

    def after_fork_in_child(self) -> None:
        self._poster.after_fork_in_child()

    def close(self) -> None:
        self._poster.close()
