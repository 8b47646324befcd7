"""The configurations of ``collector-config/`` run for real: a real OpenTelemetry Collector
(``tests/collector``, built by ``scripts/build-collector``) in front of real ``otel-luna serve``
replicas writing to a real InfluxDB 1.x.

The chain users deploy: Python and Node.js senders → ``agent.yaml`` → ``gateway-loadbalancing
.yaml`` → two ``serve`` replicas → InfluxDB. Every request id arrives exactly once, also when a
replica is killed (SIGKILL) mid-load and restarted, and when a replica's spool is full: the
Collector retries what serve refused or never answered, and serve's point times make the
retried copies idempotent. Each test records what the Collector did (its own metrics and log)
in its assertion messages.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
from influxdb_client import InfluxDBClient
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExportResult

from tests.support.otelcol import QUEUE_DIRECTORY, Collector, load_config, localize
from tests.support.servehelpers import Serve, run_node_app, serve_env, server_spans, stored_ids
from tests.support.servers import HOST, InfluxDB1, InfluxDB2, free_port
from tests.support.waiting import wait_until

#: How long the chain may take to bring every point into InfluxDB (Collector batches of 1 s,
#: retries from 1 s up, serve's flush interval of 0.2 s).
DELIVERY_TIMEOUT = 120.0
#: Spans per Export call of the Python sender (the SDK's BatchSpanProcessor sends 512).
BATCH = 100


class Replicas:
    """Two ``otel-luna serve`` on ports fixed in advance (the gateway's static resolver names
    them), writing to one database; a replica can be killed and started again on its ports."""

    def __init__(self, env: dict[str, str]) -> None:
        self.env = env
        self.ports = [(free_port(), free_port()) for _ in range(2)]
        self.running: list[Serve | None] = [None, None]
        for index in range(2):
            self.start(index)

    def start(self, index: int, **env: str) -> Serve:
        grpc_port, http_port = self.ports[index]
        replica = Serve(
            {**self.env, **env}, "--grpc-port", str(grpc_port), "--http-port", str(http_port)
        )
        self.running[index] = replica
        return replica

    def kill(self, index: int) -> None:
        replica = self.running[index]
        assert replica is not None
        replica.kill()  # SIGKILL: no drain, no shutdown flush
        self.running[index] = None

    @property
    def targets(self) -> list[str]:
        return [f"{HOST}:{grpc_port}" for grpc_port, _ in self.ports]

    def stop(self) -> None:
        for replica in self.running:
            if replica is not None:
                replica.stop()


@contextlib.contextmanager
def replicas(influx: InfluxDB1, database: str, **env: str) -> Iterator[Replicas]:
    """Two replicas writing to ``database`` of an InfluxDB 1.x."""
    with replicas_with(serve_env(influx.url, database, **env)) as running:
        yield running


@contextlib.contextmanager
def replicas_with(env: dict[str, str]) -> Iterator[Replicas]:
    running = Replicas(env)
    try:
        yield running
    finally:
        running.stop()


def gateway(
    root: Path,
    config: str | Mapping[str, Any],
    targets: Sequence[str],
    addresses: Mapping[str, str] | None = None,
    env: Mapping[str, str] | None = None,
    name: str = "gateway",
) -> Collector:
    """A gateway Collector running ``collector-config/CONFIG`` (or a parsed configuration) with
    its replicas at ``targets``, its receivers on free ports, its persistent queue in
    ``root/gateway-queue`` (so a gateway started again on ``root`` finds it) and other
    documented ``addresses`` replaced."""
    ports = {
        "0.0.0.0:14317": f"{HOST}:{free_port()}",
        "0.0.0.0:14318": f"{HOST}:{free_port()}",
        "127.0.0.1:4317": targets[0],
        "127.0.0.1:5317": targets[1],
        QUEUE_DIRECTORY: str(root / "gateway-queue"),
        **(addresses or {}),
    }
    document = load_config(config) if isinstance(config, str) else config
    return Collector(localize(document, ports), root / name, name=name, env=env)


def grpc_endpoint(collector: Collector) -> str:
    """``host:port`` of the Collector's OTLP/gRPC receiver."""
    endpoint = collector.config["receivers"]["otlp"]["protocols"]["grpc"]["endpoint"]
    assert isinstance(endpoint, str)
    return endpoint


def agent(root: Path, gateway_target: str) -> Collector:
    """An agent Collector (``agent.yaml``) exporting to ``gateway_target``."""
    ports = {
        "127.0.0.1:14317": f"{HOST}:{free_port()}",
        "127.0.0.1:14318": f"{HOST}:{free_port()}",
        "127.0.0.1:4317": gateway_target,
    }
    return Collector(localize(load_config("agent.yaml"), ports), root / "agent", name="agent")


def python_send(target: str, spans: Sequence[ReadableSpan], pause: float = 0.0) -> None:
    """Send ``spans`` with the SDK's own OTLP/gRPC exporter, ``BATCH`` per Export call."""
    exporter = OTLPSpanExporter(endpoint=f"http://{target}", insecure=True, timeout=30)
    try:
        for start in range(0, len(spans), BATCH):
            result = exporter.export(spans[start : start + BATCH])
            assert result is SpanExportResult.SUCCESS, f"export of batch {start} failed"
            time.sleep(pause)
    finally:
        exporter.shutdown()


def node_spans(count: int, route: str = "/node") -> tuple[list[dict[str, Any]], list[str]]:
    """Specs for ``tests/node/app.js``: ``count`` SERVER spans with their own request ids."""
    ids = [uuid.uuid4().hex for _ in range(count)]
    specs = [
        {
            "name": f"GET {route}",
            "attributes": {
                "http.request.method": "GET",
                "http.route": route,
                "http.response.status_code": 200,
                "luna.request_id": request_id,
            },
        }
        for request_id in ids
    ]
    return specs, ids


def what_the_collector_did(*collectors: Collector) -> str:
    """The Collectors' own counts of spans received, sent, failed, and retries they logged."""
    lines = []
    for collector in collectors:
        counts = {
            name: collector.total(name)
            for name in (
                "otelcol_receiver_accepted_spans",
                "otelcol_exporter_sent_spans",
                "otelcol_exporter_send_failed_spans",
            )
        }
        retries = collector.log.count("Will retry the request after interval")
        lines.append(f"{collector.process.name}: {counts}, retries logged: {retries}")
    return "\n".join(lines)


def all_stored(
    influx: InfluxDB1, database: str, ids: Sequence[str], *collectors: Collector
) -> None:
    """Wait until every id is in ``requests``, then assert each is there exactly once."""
    expected = set(ids)
    try:
        wait_until(
            lambda: stored_ids(influx, database),
            lambda stored: expected <= set(stored),
            DELIVERY_TIMEOUT,
            "every request id in InfluxDB",
        )
    except AssertionError:
        missing = expected - set(stored_ids(influx, database))
        raise AssertionError(
            f"{len(missing)} of {len(expected)} ids missing\n{what_the_collector_did(*collectors)}"
        ) from None
    stored = stored_ids(influx, database)
    assert len(stored) == len(set(stored)) == len(expected), "a request stored twice, or a stranger"


def retrying_then_all_stored(
    collector: Collector, retry: str, influx: InfluxDB1, database: str, ids: Sequence[str]
) -> None:
    """Wait until ``collector`` logged ``retry`` (the refusal it is retrying), then create the
    replicas' ``database`` (it did not exist: their spools filled) and wait until every id is
    stored exactly once; the database is dropped afterwards."""
    wait_until(
        lambda: collector.log.count(retry),
        lambda count: count > 0,
        60,
        f"{collector.process.name} retrying: {retry}",
    )
    influx.create_database(database)
    try:
        all_stored(influx, database, ids, collector)
    finally:
        influx.drop_database(database)


@pytest.mark.node  # runs tests/node
def test_python_and_node_senders_through_agent_and_gateway_to_two_replicas(
    influxdb1: InfluxDB1, influxdb1_database: str, tmp_path: Path
) -> None:
    """agent.yaml → gateway-loadbalancing.yaml → 2 replicas: every request id exactly once,
    and both replicas took a share (traces are routed by trace id)."""
    python_spans, python_ids = server_spans(600, route="/python", service="chain-python")
    specs, node_ids = node_spans(300)
    with (
        replicas(influxdb1, influxdb1_database) as bridge,
        gateway(tmp_path, "gateway-loadbalancing.yaml", bridge.targets) as gw,
        agent(tmp_path, grpc_endpoint(gw)) as ag,
    ):
        python_send(grpc_endpoint(ag), python_spans)
        run_node_app(
            "grpc", f"http://{grpc_endpoint(ag)}", specs, {"OTEL_SERVICE_NAME": "chain-node"}
        )
        all_stored(influxdb1, influxdb1_database, python_ids + node_ids, ag, gw)
        for target in bridge.targets:
            # (the outcome of routing a batch to the replica's exporter queue, not of sending)
            routed = gw.total(
                "otelcol_loadbalancer_backend_outcome", endpoint=target, success="true"
            )
            assert routed > 0, (
                f"the gateway sent nothing to {target}\n{what_the_collector_did(ag, gw)}"
            )
    rows = influxdb1.select("SELECT request_id, service FROM requests", influxdb1_database)
    services = {row["service"] for row in rows}
    assert services == {"chain-python", "chain-node"}


def test_a_replica_killed_mid_load_and_restarted_loses_nothing(
    influxdb1: InfluxDB1, influxdb1_database: str, tmp_path: Path
) -> None:
    """SIGKILL one replica while the gateway sends, start it again on its ports 2 s later:
    the gateway's otlp exporter retries what the dead replica never answered, the restarted
    replica replays its spool; every id is stored exactly once."""
    spans, ids = server_spans(3000, route="/killed", service="chain-kill")
    with (
        replicas(influxdb1, influxdb1_database) as bridge,
        gateway(tmp_path, "gateway-loadbalancing.yaml", bridge.targets) as gw,
    ):
        sender = threading.Thread(
            target=python_send, args=(grpc_endpoint(gw), spans, 0.05), daemon=True
        )
        sender.start()
        time.sleep(0.5)
        bridge.kill(0)
        time.sleep(2.0)
        bridge.start(0)
        sender.join(timeout=DELIVERY_TIMEOUT)
        assert not sender.is_alive()
        all_stored(influxdb1, influxdb1_database, ids, gw)
        failed = gw.total("otelcol_exporter_send_failed_spans")
        retries = gw.log.count("Will retry the request after interval")
        assert retries > 0, f"the gateway never retried:\n{what_the_collector_did(gw)}"
        print(f"SIGKILL: {what_the_collector_did(gw)}; send_failed {failed}")


def test_a_replica_with_a_full_spool_is_retried_after_its_hint(
    influxdb1: InfluxDB1, tmp_path: Path
) -> None:
    """Replicas whose database does not exist yet hold points in a small spool until it is
    90 % full, then answer RESOURCE_EXHAUSTED + RetryInfo; the gateway's exporter retries after
    the hint, and once the database exists everything arrives, exactly once."""
    database = f"chain_full_{uuid.uuid4().hex[:8]}"  # not created yet: writes are 404
    spans, ids = server_spans(2000, route="/full", service="chain-full")
    with (
        replicas(
            influxdb1,
            database,
            OTEL_EXPORTER_LUNA_SPOOL_MAX_BYTES=str(64 * 1024),
            OTEL_EXPORTER_LUNA_SPOOL_RETRY_INTERVAL="0.5",
        ) as bridge,
        gateway(tmp_path, "gateway-loadbalancing.yaml", bridge.targets) as gw,
    ):
        python_send(grpc_endpoint(gw), spans)
        # The exporter logs "Throttle (1s), error: rpc error: code = ResourceExhausted ..."
        # and waits the RetryInfo's delay (or its own backoff, if longer) before each retry.
        retrying_then_all_stored(
            gw,
            "Throttle (1s), error: rpc error: code = ResourceExhausted",
            influxdb1,
            database,
            ids,
        )
        log = gw.log
        assert "Will retry the request after interval" in log, what_the_collector_did(gw)
        print(f"full spool: {what_the_collector_did(gw)}")


def test_the_influxdb_exporter_writes_spans_beside_the_luna_series(
    influxdb2: InfluxDB2, tmp_path: Path
) -> None:
    """gateway-loadbalancing-influxdb.yaml against one InfluxDB 2.x: the replicas write the
    LUNA series to their bucket (the v2 sink), the Collector's own `influxdb` exporter writes
    every span to `otel_spans` (measurement `spans`, tags `trace_id`, `span_id` and the
    `span_dimensions`, the attributes one JSON field); both hold every request of the spans."""
    luna_bucket = influxdb2.fresh_bucket("luna")
    spans_bucket = influxdb2.fresh_bucket("otel_spans")
    spans, ids = server_spans(500, route="/both", service="chain-both")
    env = {
        "OTEL_EXPORTER_LUNA_ENDPOINT": influxdb2.url,
        "OTEL_EXPORTER_LUNA_API_VERSION": "2",
        "OTEL_EXPORTER_LUNA_ORG": influxdb2.org,
        "OTEL_EXPORTER_LUNA_BUCKET": luna_bucket,
        "OTEL_EXPORTER_LUNA_TOKEN": influxdb2.token,
        "OTEL_EXPORTER_LUNA_FLUSH_INTERVAL": "0.2",
    }
    try:
        with (
            replicas_with(env) as bridge,
            gateway(
                tmp_path,
                "gateway-loadbalancing-influxdb.yaml",
                bridge.targets,
                {"http://127.0.0.1:8086": influxdb2.url, "otel_spans": spans_bucket},
                {"INFLUXDB_SPANS_TOKEN": influxdb2.token},
            ) as gw,
        ):
            python_send(grpc_endpoint(gw), spans)

            def in_bucket(bucket: str, measurement: str, column: str) -> set[str]:
                query = (
                    f'from(bucket: "{bucket}") |> range(start: 0)'
                    f' |> filter(fn: (r) => r._measurement == "{measurement}")'
                    f' |> keep(columns: ["{column}"]) |> distinct(column: "{column}")'
                )
                with InfluxDBClient(influxdb2.url, influxdb2.token, org=influxdb2.org) as c:
                    tables = c.query_api().query(query)
                return {str(r.get_value()) for t in tables for r in t.records}

            def request_ids() -> set[str]:
                query = (
                    f'from(bucket: "{luna_bucket}") |> range(start: 0)'
                    ' |> filter(fn: (r) => r._measurement == "requests"'
                    ' and r._field == "request_id")'
                )
                with InfluxDBClient(influxdb2.url, influxdb2.token, org=influxdb2.org) as c:
                    tables = c.query_api().query(query)
                return {str(r.get_value()) for t in tables for r in t.records}

            traces = {f"{span.context.trace_id:032x}" for span in spans}
            wait_until(request_ids, lambda got: got == set(ids), DELIVERY_TIMEOUT, "requests")
            wait_until(
                lambda: in_bucket(spans_bucket, "spans", "trace_id"),
                lambda got: got == traces,
                DELIVERY_TIMEOUT,
                "the influxdb exporter's spans",
            )
            assert in_bucket(spans_bucket, "spans", "service.name") == {"chain-both"}
            # the span's name is a field (not a tag), its attributes one JSON field
            query = (
                f'from(bucket: "{spans_bucket}") |> range(start: 0)'
                ' |> filter(fn: (r) => r._field == "span.name" or r._field == "attributes")'
            )
            with InfluxDBClient(influxdb2.url, influxdb2.token, org=influxdb2.org) as c:
                records = [r for t in c.query_api().query(query) for r in t.records]
            names = {r.get_value() for r in records if r.get_field() == "span.name"}
            assert names == {"POST /both"}
            documents = [json.loads(r.get_value()) for r in records if r.get_field() != "span.name"]
            assert {document["luna.request_id"] for document in documents} == set(ids)
    finally:
        influxdb2.delete_bucket(luna_bucket)
        influxdb2.delete_bucket(spans_bucket)


def test_the_http_agent_honours_503_and_retry_after_of_a_full_spool(
    influxdb1: InfluxDB1, tmp_path: Path
) -> None:
    """agent-http.yaml → one replica over OTLP/HTTP (protobuf, gzip): the replica's database
    does not exist yet, its small spool fills and it answers 503 + Retry-After; the
    `otlp_http` exporter waits and retries, and once the database exists every request id is
    stored exactly once."""
    database = f"chain_http_{uuid.uuid4().hex[:8]}"  # not created yet: writes are 404
    spans, ids = server_spans(1500, route="/over-http", service="chain-http")
    env = serve_env(
        influxdb1.url,
        database,
        OTEL_EXPORTER_LUNA_SPOOL_MAX_BYTES=str(64 * 1024),
        OTEL_EXPORTER_LUNA_SPOOL_RETRY_INTERVAL="0.5",
    )
    with Serve(env) as replica:
        ports = {
            "127.0.0.1:14317": f"{HOST}:{free_port()}",
            "127.0.0.1:14318": f"{HOST}:{free_port()}",
            "http://127.0.0.1:4318": replica.http_url,
        }
        document = localize(load_config("agent-http.yaml"), ports)
        with Collector(document, tmp_path / "agent", name="agent") as ag:
            python_send(grpc_endpoint(ag), spans)
            # "Throttle (1s), error: ... responded with HTTP Status Code 503, Message=the spool
            # is full; retry later" (the Status in serve's body), then a wait of >= 1 s
            retrying_then_all_stored(
                ag,
                "Throttle (1s), error: rpc error: code = Unavailable desc = error exporting "
                f"items, request to {replica.http_url}/v1/traces responded with HTTP Status "
                "Code 503, Message=the spool is full",
                influxdb1,
                database,
                ids,
            )
            print(f"over HTTP, full spool: {what_the_collector_did(ag)}")


def test_the_http_agent_with_zstd_compression_delivers(
    influxdb1: InfluxDB1, influxdb1_database: str, tmp_path: Path
) -> None:
    """agent-http.yaml with ``compression: zstd`` on its `otlp_http` exporter (serve answered
    415 and the Collector dropped every span): every request id stored exactly once."""
    spans, ids = server_spans(300, route="/zstd", service="chain-zstd")
    with Serve(serve_env(influxdb1.url, influxdb1_database)) as replica:
        ports = {
            "127.0.0.1:14317": f"{HOST}:{free_port()}",
            "127.0.0.1:14318": f"{HOST}:{free_port()}",
            "http://127.0.0.1:4318": replica.http_url,
        }
        document = localize(load_config("agent-http.yaml"), ports)
        document["exporters"]["otlp_http"]["compression"] = "zstd"
        with Collector(document, tmp_path / "agent", name="agent") as ag:
            python_send(grpc_endpoint(ag), spans)
            all_stored(influxdb1, influxdb1_database, ids, ag)
            assert "415" not in ag.log
