"""InfluxDB 2.x ``/api/v2/write`` through ``influxdb-client``: org, bucket, token, gzip.

The body is already line protocol: influxdb-client only transports it (its ``Point`` is several
times slower than our encoder, see ``benchmarks/encoder.py``).
"""

from __future__ import annotations

from typing import Any

from influxdb_client.client.influxdb_client import InfluxDBClient
from influxdb_client.client.write_api import SYNCHRONOUS
from influxdb_client.domain.write_precision import WritePrecision
from influxdb_client.rest import ApiException
from urllib3.exceptions import HTTPError

from otel_luna.settings import Settings
from otel_luna.sinks import (
    Failure,
    SinkError,
    classify,
    classify_connection_error,
    parse_retry_after,
    server_reason,
)


class InfluxV2Sink:
    """Writes with ``WriteApi.write(bucket, org, record=bytes)`` in synchronous mode."""

    def __init__(self, settings: Settings) -> None:
        self._bucket = settings.bucket
        self._org = settings.org or ""
        self._where = f"{settings.endpoint}/api/v2/write?bucket={settings.bucket}"
        self._settings = settings
        self._secrets = settings.secrets
        self._connect()

    def _connect(self) -> None:
        settings = self._settings
        self._client = InfluxDBClient(
            url=settings.endpoint,
            token=settings.token or "",
            org=self._org,
            timeout=int(settings.timeout * 1000),
            enable_gzip=settings.gzip,
            retries=False,
        )
        self._write_api = self._client.write_api(write_options=SYNCHRONOUS)

    def after_fork_in_child(self) -> None:
        """A client (and connection pool) of the child's own; the parent's is left alone."""
        self._connect()

    def write(self, body: bytes) -> None:
        try:
            self._write_api.write(
                bucket=self._bucket,
                org=self._org,
                record=body,
                write_precision=WritePrecision.NS,  # type: ignore[arg-type] # a str enum member
            )
        except ApiException as error:
            status = int(error.status or 0)
            reason = server_reason(error.body or error.reason or "")
            raise SinkError(
                f"{self._where}: HTTP {status}: {reason}",
                failure=classify(status, reason) if status else Failure.RETRY,
                status=status,
                retry_after=parse_retry_after(_header(error, "Retry-After")),
                secrets=self._secrets,
            ) from None
        except HTTPError as error:
            raise SinkError(
                f"{self._where}: {type(error).__name__}: {error}",
                failure=classify_connection_error(error),
                secrets=self._secrets,
            ) from None

    def close(self) -> None:
        self._write_api.close()  # type: ignore[no-untyped-call] # influxdb-client is untyped here
        self._client.close()  # type: ignore[no-untyped-call]


def _header(error: ApiException, name: str) -> str | None:
    headers: Any = error.headers
    value = headers.get(name) if headers is not None else None
    return None if value is None else str(value)
