"""Shared HTTP plumbing for the InfluxDB sinks: one pooled urllib3 connection pool."""

from __future__ import annotations

import gzip as gzip_module

import urllib3

from otel_luna.sinks import SinkError, parse_retry_after

_RETRYABLE_STATUS = frozenset({408, 429, 500, 502, 503, 504})


class HttpPoster:
    """POSTs bodies to one URL; maps failures to :class:`SinkError` without leaking secrets."""

    def __init__(self, url: str, headers: dict[str, str], *, timeout: float, gzip: bool) -> None:
        self._url = url
        self._headers = {"Content-Type": "text/plain; charset=utf-8", **headers}
        if gzip:
            self._headers["Content-Encoding"] = "gzip"
        self._gzip = gzip
        self._pool = urllib3.PoolManager(
            num_pools=1, maxsize=1, retries=False, timeout=urllib3.Timeout(total=timeout)
        )

    def post(self, body: bytes, where: str) -> urllib3.BaseHTTPResponse:
        payload = gzip_module.compress(body, compresslevel=5) if self._gzip else body
        try:
            response = self._pool.request(
                "POST", self._url, body=payload, headers=self._headers, preload_content=True
            )
        except urllib3.exceptions.HTTPError as error:
            raise SinkError(f"{where}: {type(error).__name__}", retryable=True) from None
        if response.status >= 300:
            text = response.data[:500].decode(errors="replace").strip()
            raise SinkError(
                f"{where}: HTTP {response.status}: {text}",
                retryable=response.status in _RETRYABLE_STATUS or response.status >= 500,
                status=response.status,
                retry_after=parse_retry_after(response.headers.get("Retry-After")),
            )
        return response

    def close(self) -> None:
        self._pool.clear()
