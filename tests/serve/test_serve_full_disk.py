"""``otel-luna serve`` on its first deployment: the database does not exist yet and the spool's
filesystem is small. serve holds what it took (never dead-lettered), refuses what the disk cannot
take with backpressure instead of answering OK for it, and once the database exists every
request it acknowledged — and every refused one the client sent again — is in InfluxDB once."""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

import grpc

from tests.support.servehelpers import (
    Serve,
    grpc_call,
    serve_env,
    server_spans,
    stored_ids,
    trace_request,
)
from tests.support.servers import InfluxDB1, unique_name

REQUESTS = 40
SPANS_PER_REQUEST = 100
RESEND_TIMEOUT = 90.0


def test_serve_refuses_what_a_full_disk_cannot_hold_and_loses_nothing(
    influxdb1: InfluxDB1, full_disk: Path, tmp_path: Path
) -> None:
    database = unique_name("late")  # created only after the disk is full
    dead_letters = tmp_path / "dead-letter.jsonl"
    env = serve_env(
        influxdb1.url,
        database,
        OTEL_EXPORTER_LUNA_SPOOL_DIR=str(full_disk),
        OTEL_EXPORTER_LUNA_DEAD_LETTER=str(dead_letters),
    )
    batches = [server_spans(SPANS_PER_REQUEST) for _ in range(REQUESTS)]
    bodies = [(trace_request(spans).SerializeToString(), ids) for spans, ids in batches]
    acknowledged: list[str] = []
    refused: list[tuple[bytes, list[str]]] = []
    try:
        with Serve(env) as serve:
            for body, ids in bodies:
                code, details, _, _ = grpc_call(serve.grpc_target, body)
                if code is grpc.StatusCode.OK:
                    acknowledged += ids
                else:
                    assert code is grpc.StatusCode.RESOURCE_EXHAUSTED, details
                    refused.append((body, ids))
            assert refused, "the tmpfs never filled: make the requests larger"
            assert acknowledged, "nothing was taken at all"

            influxdb1.create_database(database)  # the first deployment is complete
            deadline = time.monotonic() + RESEND_TIMEOUT
            while refused and time.monotonic() < deadline:  # the client retries
                body, ids = refused[0]
                code, _, _, _ = grpc_call(serve.grpc_target, body)
                if code is grpc.StatusCode.OK:
                    acknowledged += ids
                    refused.pop(0)
                else:
                    time.sleep(0.2)
            assert not refused, f"{len(refused)} requests still refused after the database came"
        stored = Counter(stored_ids(influxdb1, database))
        assert stored == Counter(acknowledged)
        assert len(stored) == REQUESTS * SPANS_PER_REQUEST
        assert not dead_letters.exists() or dead_letters.stat().st_size == 0
    finally:
        if database in influxdb1.databases():
            influxdb1.drop_database(database)
