"""What a gateway Collector (``gateway-loadbalancing.yaml``) holds when it stops: lost with an
in-memory queue, kept with a ``file_storage`` one.

The scene: two ``otel-luna serve`` replicas whose database does not exist yet, their small
spools filled to the mark straight away, so they answer ``RESOURCE_EXHAUSTED`` + ``RetryInfo``
to everything the gateway sends. 500 spans go to the gateway (which answers OK), the gateway is
stopped while it retries them, started again, the database is created: which spans arrive?

- An in-memory ``sending_queue`` (the file's queues without ``storage``, as every Collector
  configuration has by default, and ours had) loses every span it
  holds even on a graceful stop (SIGTERM, exit 0): the Collector logs ``Exporting failed.
  Dropping data.`` ``interrupted due to shutdown`` with ``dropped_items``, which add up to the
  spans lost.
- What works, and what ``collector-config/gateway-loadbalancing.yaml`` now holds (with the
  real Collector v0.161.0): the ``load_balancing`` exporter's own
  ``sending_queue`` on ``file_storage``, the per-replica exporter under ``protocol.otlp``
  without queue and retry (so a refusal comes back to that persistent queue, whose retry honours
  ``RetryInfo``), and the batching done by that queue (``sending_queue.batch``) instead of the
  ``batch`` processor, whose batches live in memory: then an OK from the gateway means "in the
  file", and every span arrives exactly once after SIGTERM or SIGKILL of the gateway and a
  restart on the same directory. (The Collector still logs ``Dropping data`` with
  ``dropped_items`` on SIGTERM: the persistent queue keeps the items all the same.)
- ``storage`` on the queue under ``protocol.otlp`` does not work: every replica's exporter has
  the same component id, so they share one storage file and all but the first fail to start.
"""

from __future__ import annotations

import copy
import re
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import grpc
import pytest

from tests.e2e.test_collector_chain import (
    all_stored,
    gateway,
    grpc_endpoint,
    python_send,
    replicas,
    what_the_collector_did,
)
from tests.support.otelcol import Collector, load_config
from tests.support.servehelpers import grpc_call, server_spans, stored_ids, trace_request
from tests.support.servers import HOST, InfluxDB1, free_port
from tests.support.waiting import wait_until

CONFIG = "gateway-loadbalancing.yaml"
#: Spans sent to the gateway while both replicas refuse.
SENT = 500
#: Spans per request when filling a replica's spool up to its mark.
FILL_BATCH = 20
#: A small spool: about 19 requests of FILL_BATCH spans reach its mark (90 %).
REPLICA_ENV = {
    "OTEL_EXPORTER_LUNA_SPOOL_MAX_BYTES": str(64 * 1024),
    "OTEL_EXPORTER_LUNA_SPOOL_RETRY_INTERVAL": "0.5",
}
#: The gateway retries within a second of receiving; this is a deadline, not a wait.
REFUSED_TIMEOUT = 30.0
DROPPED_ITEMS = re.compile(r'"dropped_items": (\d+)')


# --------------------------------------------------------------------------- configurations


def in_memory(document: dict[str, Any]) -> dict[str, Any]:
    """``document`` with every queue in memory: no ``storage``, no ``file_storage``."""
    doc = copy.deepcopy(document)
    for exporter in doc["exporters"].values():
        levels = [exporter, exporter.get("protocol", {}).get("otlp", {})]
        for level in levels:
            queue = level.get("sending_queue")
            if isinstance(queue, dict):
                queue.pop("storage", None)
    extensions = doc.get("extensions") or {}
    for name in [name for name in extensions if name.split("/")[0] == "file_storage"]:
        del extensions[name]
    service = doc["service"]
    kept = [name for name in service.get("extensions") or [] if name in extensions]
    service["extensions"] = kept
    return doc


def assert_persistent(document: dict[str, Any]) -> None:
    """The shipped file has what makes its queue survive a stop: the ``load_balancing``
    exporters' own queue on ``file_storage`` and batching, the per-replica exporters without
    queue and retry, no ``batch`` processor."""
    assert "file_storage" in document["service"]["extensions"]
    for name, exporter in document["exporters"].items():
        if name.split("/")[0] == "load_balancing":
            assert exporter["sending_queue"]["storage"] == "file_storage", name
            assert "batch" in exporter["sending_queue"], name
            otlp = exporter["protocol"]["otlp"]
            assert otlp["sending_queue"] == {"enabled": False}, name
            assert otlp["retry_on_failure"] == {"enabled": False}, name
    for pipeline in document["service"]["pipelines"].values():
        assert "batch" not in pipeline["processors"]


# --------------------------------------------------------------------------- helpers


def fill_spool(target: str) -> list[str]:
    """Send requests straight to a replica until it refuses (its spool at the mark, its
    database missing): from then on it refuses everything. The request ids it took."""
    taken: list[str] = []
    for _ in range(100):
        spans, ids = server_spans(FILL_BATCH, route="/filler", service="persist-filler")
        code, details, _, _ = grpc_call(target, trace_request(spans).SerializeToString())
        if code is grpc.StatusCode.RESOURCE_EXHAUSTED:
            assert taken, f"{target} refused the first request: {details}"
            return taken
        assert code is grpc.StatusCode.OK, f"{target}: {code} {details}"
        taken += ids
    raise AssertionError(f"{target} never refused; its spool took {len(taken)} spans")


def refused_by_every_replica(gateway: Collector, targets: Sequence[str]) -> bool:
    """The gateway logged a RESOURCE_EXHAUSTED answer of each replica."""
    lines = [line for line in gateway.log.splitlines() if "ResourceExhausted" in line]
    return all(any(f'"endpoint": "{target}"' in line for line in lines) for target in targets)


def dropped_items(log: str) -> int:
    """The sum of ``dropped_items`` the Collector logged."""
    return sum(int(count) for count in DROPPED_ITEMS.findall(log))


def stop_by_signal(gateway: Collector, how: str) -> float:
    """SIGTERM (asserting the Collector exited by itself, status 0) or SIGKILL; the seconds."""
    started = time.monotonic()
    if how == "SIGTERM":
        gateway.stop()  # SIGTERM, SIGKILL after 10 s
        code = gateway.process.popen.returncode
        assert code == 0, f"the gateway did not stop by itself on SIGTERM (exit {code})"
    else:
        gateway.process.popen.kill()
        gateway.process.popen.wait(timeout=10)
    return time.monotonic() - started


# --------------------------------------------------------------------------- tests


def test_an_in_memory_gateway_queue_drops_what_it_holds_on_a_graceful_stop(
    influxdb1: InfluxDB1, tmp_path: Path
) -> None:
    """The gap: the file's queues in memory (as shipped, without ``storage``). 500 spans the
    gateway answered OK for, refused by both replicas, are dropped by a SIGTERM (exit 0): the
    Collector logs ``dropped_items`` adding up to 500, and none of them ever arrives."""
    database = f"persist_{uuid.uuid4().hex[:8]}"  # not created yet: writes are 404
    spans, ids = server_spans(SENT, route="/in-memory", service="persist-memory")
    try:
        with replicas(influxdb1, database, **REPLICA_ENV) as bridge:
            filler = [i for target in bridge.targets for i in fill_spool(target)]
            document = in_memory(load_config(CONFIG))
            with gateway(tmp_path, document, bridge.targets) as gw:
                python_send(grpc_endpoint(gw), spans)
                wait_until(
                    lambda: refused_by_every_replica(gw, bridge.targets),
                    bool,
                    REFUSED_TIMEOUT,
                    "both replicas refusing the gateway",
                )
                seconds = stop_by_signal(gw, "SIGTERM")
            log = gw.log
            assert "interrupted due to shutdown" in log
            dropped = dropped_items(log)
            assert dropped == SENT, f"logged dropped_items {dropped} of {SENT} sent"
            influxdb1.create_database(database)
            wait_until(
                lambda: stored_ids(influxdb1, database),
                lambda got: set(filler) <= set(got),
                120,
                "the replicas' own spools delivered",
            )
        # Every replica stopped (SIGTERM drained its spool): nothing anywhere holds the spans.
        stored = stored_ids(influxdb1, database)
        assert not set(ids) & set(stored), "a span the gateway dropped arrived after all"
        assert len(stored) == len(set(stored)) == len(filler)
        print(
            f"in memory, SIGTERM ({seconds:.2f} s): sent {SENT}, dropped_items {dropped}, "
            f"stored 0 of them ({len(filler)} filler spans stored)"
        )
    finally:
        influxdb1.drop_database(database)


@pytest.mark.parametrize(
    ("how", "when"),
    [
        pytest.param("SIGTERM", "retrying", id="sigterm-while-retrying"),
        pytest.param("SIGKILL", "retrying", id="sigkill-while-retrying"),
        pytest.param("SIGKILL", "answered", id="sigkill-right-after-the-ok"),
    ],
)
def test_a_persistent_gateway_queue_delivers_everything_after_a_restart(
    influxdb1: InfluxDB1, tmp_path: Path, how: str, when: str
) -> None:
    """The shipped configuration (:func:`assert_persistent`). 500 spans the gateway answered OK for,
    refused by both replicas, survive a stop of the gateway (SIGTERM while it retries them;
    SIGKILL while it retries them, or as soon as its OK came back), and a gateway started again
    on the same directory delivers them once the database exists: each request id once."""
    database = f"persist_{uuid.uuid4().hex[:8]}"  # not created yet: writes are 404
    spans, ids = server_spans(SENT, route="/persistent", service="persist-file")
    document = load_config(CONFIG)
    assert_persistent(document)
    try:
        with replicas(influxdb1, database, **REPLICA_ENV) as bridge:
            filler = [i for target in bridge.targets for i in fill_spool(target)]
            with gateway(tmp_path, document, bridge.targets) as first:
                python_send(grpc_endpoint(first), spans)
                if when == "retrying":
                    # every span taken from the queue into a batch, and both replicas refusing
                    wait_until(
                        lambda: (
                            refused_by_every_replica(first, bridge.targets)
                            and first.total(
                                "otelcol_exporter_queue_batch_send_size_sum",
                                exporter="load_balancing",
                            )
                            >= SENT
                        ),
                        bool,
                        REFUSED_TIMEOUT,
                        "the gateway retrying every span",
                    )
                seconds = stop_by_signal(first, how)
            first_log = first.log
            dropped = dropped_items(first_log)
            if how == "SIGTERM":
                # the Collector says it drops them; the persistent queue keeps them all the same
                assert "interrupted due to shutdown" in first_log
                assert dropped == SENT, f"logged dropped_items {dropped} of {SENT} sent"
            with gateway(tmp_path, document, bridge.targets, name="restarted") as second:
                if when == "retrying":
                    assert "Moved items for dispatching back to queue" in second.log
                influxdb1.create_database(database)
                all_stored(influxdb1, database, filler + ids, second)
                assert second.total("otelcol_receiver_accepted_spans") == 0
                wait_until(
                    lambda: second.total("otelcol_exporter_sent_spans", exporter="load_balancing"),
                    lambda sent: sent >= SENT,
                    30,
                    "the restarted gateway counting what it delivered",
                )
                print(
                    f"file_storage, {how} {when} ({seconds:.2f} s): sent {SENT}, dropped_items "
                    f"logged {dropped}, stored {SENT} after the restart\n"
                    f"{what_the_collector_did(second)}"
                )
    finally:
        influxdb1.drop_database(database)


def test_a_file_storage_under_protocol_otlp_starts_one_replica_exporter_only(
    tmp_path: Path,
) -> None:
    """``storage`` on the queue of ``protocol.otlp`` (the per-replica exporters) does not work:
    they all have the component id ``otlp_grpc``, hence one storage file, and the second one
    times out on its lock: the gateway runs without an exporter for that replica and retries
    ``couldn't find the exporter for the endpoint`` for every batch with a trace routed there."""
    targets = [f"{HOST}:{free_port()}", f"{HOST}:{free_port()}"]  # nothing listens
    document = load_config(CONFIG)
    otlp = document["exporters"]["load_balancing"]["protocol"]["otlp"]
    otlp["sending_queue"] = {"enabled": True, "storage": "file_storage"}
    spans, _ = server_spans(100, route="/per-replica", service="persist-per-replica")
    with gateway(tmp_path, document, targets) as gw:
        failed = [
            line
            for line in gw.log.splitlines()
            if "failed to start new exporter for endpoint" in line and '"error": "timeout"' in line
        ]
        assert len(failed) == 1, gw.log[-4000:]
        (missing,) = [target for target in targets if f'"endpoint": "{target}"' in failed[0]]
        files = sorted(path.name for path in (tmp_path / "gateway-queue").iterdir())
        assert "exporter_otlp_grpc__traces" in files, files
        python_send(grpc_endpoint(gw), spans)
        wait_until(
            lambda: gw.log,
            lambda log: f'couldn\'t find the exporter for the endpoint \\"{missing}\\"' in log,
            REFUSED_TIMEOUT,
            "the gateway failing to route to the replica without an exporter",
        )
