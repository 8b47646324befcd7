"""The OpenTelemetry Collector configurations in ``collector-config/`` fit the real receiver.

The real Collector (``tests/collector``, built by ``scripts/build-collector``) loads every file
(``validate``) and starts on it without a deprecation warning; ``test_collector_chain.py`` runs
them end to end. Here, besides: every component a pipeline names is defined, every exporter
aimed at ``otel-luna serve`` uses the ports and paths it really serves, and a live ``Server``
answers the calls the Collector's ``otlp_grpc`` and ``otlp_http`` exporters make (gzip, as they
send by default) and refuses a full spool the way those exporters retry.
"""

from __future__ import annotations

import gzip
import re
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import grpc
import pytest
import yaml
from google.rpc import error_details_pb2, status_pb2
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.resource.v1.resource_pb2 import Resource
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span

from otel_luna.serve import ServeSettings
from otel_luna.serve import _main as serve
from otel_luna.serve._protocol import METRICS_PATH, METRICS_SERVICE, TRACE_SERVICE, TRACES_PATH
from tests.support.otelcol import QUEUE_DIRECTORY, Collector, localize, validate
from tests.support.servers import HOST, free_port

CONFIG_DIR = Path(__file__).resolve().parent.parent.parent / "collector-config"
CONFIGS = sorted(CONFIG_DIR.glob("*.yaml"))
SECTIONS = ("receivers", "processors", "exporters", "connectors", "extensions")
#: Exporter types that send OTLP to the bridge (the part of a component id before "/"), by their
#: current names; the Collector (v0.161.0) still accepts the old ones as deprecated aliases.
ALIASES = {"otlp": "otlp_grpc", "otlphttp": "otlp_http", "loadbalancing": "load_balancing"}
BRIDGE_EXPORTERS = ("otlp_grpc", "otlp_http", "load_balancing")
LOOPBACK = ("127.0.0.1", "localhost", "::1")
RPC_TIMEOUT = 10.0


def _load(path: Path) -> dict[str, Any]:
    document = yaml.safe_load(path.read_text())
    assert isinstance(document, dict), f"{path.name}: not a mapping"
    return document


def _kind(component_id: str) -> str:
    """The component type of an id, an old alias mapped to its current name."""
    kind = component_id.split("/", 1)[0]
    return ALIASES.get(kind, kind)


def _host_port(endpoint: str) -> tuple[str, int]:
    """``host:port`` or ``scheme://host:port/...`` → (host, port)."""
    parts = urlsplit(endpoint if "://" in endpoint else f"//{endpoint}")
    assert parts.hostname and parts.port, f"endpoint {endpoint!r} needs a host and a port"
    return parts.hostname, parts.port


def _bridge_exporters(document: dict[str, Any]) -> dict[str, dict[str, Any]]:
    exporters = document.get("exporters") or {}
    return {
        name: config or {} for name, config in exporters.items() if _kind(name) in BRIDGE_EXPORTERS
    }


def _documented_replica_ports(path: Path) -> set[int]:
    """gRPC ports of extra replicas the file's comments start (``--grpc-port N``)."""
    return {int(port) for port in re.findall(r"--grpc-port\s+(\d+)", path.read_text())}


@pytest.fixture(params=CONFIGS, ids=lambda path: path.name)
def config(request: pytest.FixtureRequest) -> tuple[Path, dict[str, Any]]:
    return request.param, _load(request.param)


def test_the_three_documented_configurations_exist() -> None:
    """agent, gateway with loadbalancing, and gateway plus the influxdb exporter are there."""
    names = {path.name for path in CONFIGS}
    assert {
        "agent.yaml",
        "gateway-loadbalancing.yaml",
        "gateway-loadbalancing-influxdb.yaml",
    } <= names


def test_every_file_is_loaded_by_the_real_collector(config: tuple[Path, dict[str, Any]]) -> None:
    """``otelcol-luna validate`` accepts the file as it is shipped (an unknown key, a wrong
    type or a component the distribution lacks would fail it)."""
    path, _ = config
    result = validate(path, env={"INFLUXDB_SPANS_TOKEN": "token"})
    assert result.returncode == 0, result.stdout + result.stderr


def test_validate_refuses_a_misspelled_setting(tmp_path: Path) -> None:
    """The check above can fail: the Collector refuses a key its component does not have."""
    broken = tmp_path / "broken.yaml"
    text = (CONFIG_DIR / "agent.yaml").read_text().replace("send_batch_size:", "batch_size:")
    broken.write_text(text)
    result = validate(broken)
    assert result.returncode != 0
    assert "batch_size" in result.stdout + result.stderr


def test_every_file_starts_without_a_deprecation_warning(
    config: tuple[Path, dict[str, Any]], tmp_path: Path
) -> None:
    """Started for real (receivers on free ports of 127.0.0.1, nothing behind it), the
    Collector logs no deprecated alias and no unset variable for the file."""
    _, document = config
    addresses = {
        endpoint: f"{HOST}:{free_port()}"
        for endpoint in ("0.0.0.0:14317", "0.0.0.0:14318", "127.0.0.1:14317", "127.0.0.1:14318")
    }
    addresses[QUEUE_DIRECTORY] = str(tmp_path / "gateway-queue")
    with Collector(
        localize(document, addresses), tmp_path, env={"INFLUXDB_SPANS_TOKEN": "token"}
    ) as collector:
        log = collector.log
    assert "deprecated" not in log.lower(), log
    assert "unset environment variable" not in log, log


def test_every_yaml_parses_and_has_the_collector_sections(
    config: tuple[Path, dict[str, Any]],
) -> None:
    """Each file is YAML with receivers, processors, exporters and service.pipelines."""
    path, document = config
    for section in ("receivers", "processors", "exporters"):
        assert document.get(section), f"{path.name}: no {section}"
    pipelines = (document.get("service") or {}).get("pipelines")
    assert pipelines, f"{path.name}: no service.pipelines"


def test_every_component_a_pipeline_names_is_defined(config: tuple[Path, dict[str, Any]]) -> None:
    """Pipelines name only receivers, processors and exporters the file defines."""
    path, document = config
    service = document["service"]
    for pipeline_name, pipeline in service["pipelines"].items():
        assert _kind(pipeline_name) in ("traces", "metrics", "logs"), pipeline_name
        assert pipeline.get("receivers"), f"{path.name}: {pipeline_name} has no receiver"
        assert pipeline.get("exporters"), f"{path.name}: {pipeline_name} has no exporter"
        for section in ("receivers", "processors", "exporters"):
            for component in pipeline.get(section) or []:
                assert component in (document.get(section) or {}), (
                    f"{path.name}: pipeline {pipeline_name} names {section[:-1]} "
                    f"{component!r}, which is not defined"
                )
    for extension in service.get("extensions") or []:
        assert extension in (document.get("extensions") or {}), extension


def test_every_config_starts_with_a_comment_saying_when_to_use_it(
    config: tuple[Path, dict[str, Any]],
) -> None:
    """The file opens with a comment block that has a 'When to use it' paragraph."""
    path, _ = config
    lines = path.read_text().splitlines()
    header = []
    for line in lines:
        if not line.startswith("#"):
            break
        header.append(line)
    text = "\n".join(header)
    assert "When to use it" in text, f"{path.name}: no 'When to use it' in the top comment"
    assert "Checked against OpenTelemetry Collector" in text, path.name


def test_bridge_exporters_use_the_grpc_port_serve_really_serves(
    config: tuple[Path, dict[str, Any]],
) -> None:
    """otlp and loadbalancing targets use serve's default gRPC port or a documented replica's."""
    path, document = config
    default = ServeSettings().serve_grpc_port
    allowed = {default} | _documented_replica_ports(path)
    exporters = _bridge_exporters(document)
    assert exporters, f"{path.name}: no exporter sends to otel-luna serve"
    for name, exporter in exporters.items():
        if _kind(name) == "otlp_grpc":
            host, port = _host_port(exporter["endpoint"])
            assert port == default, f"{path.name}: {name} sends to port {port}, not {default}"
            if host in LOOPBACK:
                assert exporter["tls"]["insecure"] is True, f"{path.name}: {name} needs TLS off"
        elif _kind(name) == "load_balancing":
            template = exporter["protocol"]["otlp"]
            assert "endpoint" not in template, f"{path.name}: {name} sets protocol.otlp.endpoint"
            assert template["tls"]["insecure"] is True, path.name
            resolver = exporter["resolver"]
            hostnames = resolver["static"]["hostnames"]
            assert len(hostnames) >= 2, f"{path.name}: {name} balances over one replica"
            ports = [_host_port(hostname)[1] for hostname in hostnames]
            assert default in ports, f"{path.name}: {name} has no replica on {default}"
            assert set(ports) <= allowed, (
                f"{path.name}: {name} sends to ports {sorted(set(ports) - allowed)} that no "
                f"replica serves (default {default}; replicas started with --grpc-port "
                f"{sorted(allowed - {default})})"
            )
            if "dns" in resolver:
                assert int(resolver["dns"].get("port", default)) == default, path.name


def test_loadbalancing_routes_traces_by_trace_id_and_metrics_by_service(
    config: tuple[Path, dict[str, Any]],
) -> None:
    """Traces are balanced by traceID (luna.* merge), metrics by service (delta state)."""
    path, document = config
    exporters = document["exporters"]
    for pipeline_name, pipeline in document["service"]["pipelines"].items():
        for name in pipeline["exporters"]:
            if _kind(name) != "load_balancing":
                continue
            key = (exporters[name] or {}).get("routing_key", "traceID")
            expected = "traceID" if _kind(pipeline_name) == "traces" else "service"
            assert key == expected, f"{path.name}: {pipeline_name} routes {name} by {key}"


def test_http_exporters_use_the_port_and_paths_the_receiver_serves(
    config: tuple[Path, dict[str, Any]],
) -> None:
    """otlphttp exporters post to serve's default HTTP port at TRACES_PATH / METRICS_PATH."""
    path, document = config
    default = ServeSettings().serve_http_port
    paths = {"traces_endpoint": TRACES_PATH, "metrics_endpoint": METRICS_PATH}
    for name, exporter in _bridge_exporters(document).items():
        if _kind(name) != "otlp_http":
            continue
        if "endpoint" in exporter:  # the exporter appends /v1/traces and /v1/metrics
            assert _host_port(exporter["endpoint"])[1] == default, path.name
            assert urlsplit(exporter["endpoint"]).path in ("", "/"), path.name
            assert (TRACES_PATH, METRICS_PATH) == ("/v1/traces", "/v1/metrics")
        for key, served in paths.items():
            if key in exporter:
                parts = urlsplit(exporter[key])
                assert parts.port == default, f"{path.name}: {name}.{key} port {parts.port}"
                assert parts.path == served, f"{path.name}: {name}.{key} path {parts.path}"


def test_http_configs_exist_for_the_http_paths() -> None:
    """At least one configuration uses OTLP/HTTP, so the path check above checks something."""
    kinds = {_kind(name) for path in CONFIGS for name in _bridge_exporters(_load(path))}
    assert "otlp_http" in kinds


def test_collector_receivers_do_not_take_the_bridge_ports_on_the_same_host(
    config: tuple[Path, dict[str, Any]],
) -> None:
    """A Collector that sends to a bridge on 127.0.0.1 listens on other ports than serve's."""
    path, document = config
    bridge_ports = {ServeSettings().serve_grpc_port, ServeSettings().serve_http_port}
    bridge_ports |= _documented_replica_ports(path)
    bridge_ports |= {int(p) for p in re.findall(r"--http-port\s+(\d+)", path.read_text())}
    for name, receiver in document["receivers"].items():
        for protocol in ((receiver or {}).get("protocols") or {}).values():
            endpoint = (protocol or {}).get("endpoint")
            if endpoint:
                port = _host_port(endpoint)[1]
                assert port not in bridge_ports, f"{path.name}: {name} listens on {port}"


def test_every_exporter_queues_and_retries(config: tuple[Path, dict[str, Any]]) -> None:
    """Exporters to the bridge keep a sending_queue and retry_on_failure, both enabled."""
    path, document = config
    for name, exporter in _bridge_exporters(document).items():
        for setting in ("sending_queue", "retry_on_failure"):
            assert exporter.get(setting, {}).get("enabled") is True, f"{path.name}: {name}"


# -- a live receiver ------------------------------------------------------------------------


def _server(tmp_path: Path, **settings: Any) -> serve.Server:
    return serve.Server(
        ServeSettings.load(
            {},
            endpoint=f"file://{tmp_path}/out.lp",
            serve_grpc_port=0,
            serve_http_port=0,
            spool="memory",
            spool_dir=str(tmp_path / "spool"),
            dead_letter=str(tmp_path / "dead-letter.jsonl"),
            **settings,
        )
    )


@pytest.fixture
def server(tmp_path: Path) -> Iterator[serve.Server]:
    running = _server(tmp_path)
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture
def full_server(tmp_path: Path) -> Iterator[serve.Server]:
    """A server whose spool is past its high-water mark (1 byte allowed, one request in it that
    is never flushed: an empty spool admits any request)."""
    running = _server(tmp_path, spool_max_bytes=1, flush_interval=3600, batch_size=10**6)
    running.receiver.accept_traces(_trace_request())
    try:
        yield running
    finally:
        running.stop()


def _method(module: Any, service: str) -> str:
    """The gRPC method path a generated client stub (the Collector's among them) calls."""
    descriptor = module.DESCRIPTOR.services_by_name[service]
    return f"/{descriptor.full_name}/{descriptor.methods_by_name['Export'].name}"


def _trace_request(route: str = "/collector-config") -> trace_service_pb2.ExportTraceServiceRequest:
    def attribute(key: str, value: Any) -> KeyValue:
        if isinstance(value, int):
            return KeyValue(key=key, value=AnyValue(int_value=value))
        return KeyValue(key=key, value=AnyValue(string_value=value))

    span = Span(
        trace_id=bytes(range(1, 17)),
        span_id=bytes(range(1, 9)),
        name=f"GET {route}",
        kind=Span.SPAN_KIND_SERVER,
        start_time_unix_nano=1_700_000_000_000_000_000,
        end_time_unix_nano=1_700_000_000_020_000_000,
        attributes=[
            attribute("http.request.method", "GET"),
            attribute("http.route", route),
            attribute("http.response.status_code", 200),
        ],
    )
    resource = Resource(attributes=[attribute("service.name", "collector-config-test")])
    return trace_service_pb2.ExportTraceServiceRequest(
        resource_spans=[ResourceSpans(resource=resource, scope_spans=[ScopeSpans(spans=[span])])]
    )


def _grpc_export(
    port: int, method: str, body: bytes
) -> tuple[grpc.StatusCode, bytes | None, dict[str, Any]]:
    """A raw unary call, gzip-compressed like the Collector's otlp exporter sends by default."""
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        call = channel.unary_unary(method, request_serializer=None, response_deserializer=None)
        try:
            response = call(body, timeout=RPC_TIMEOUT, compression=grpc.Compression.Gzip)
        except grpc.RpcError as error:
            trailing = dict(error.trailing_metadata() or ())  # type: ignore[attr-defined]
            return error.code(), None, trailing  # type: ignore[attr-defined]
        return grpc.StatusCode.OK, response, {}


def _http_post(port: int, path: str, body: bytes) -> tuple[int, dict[str, str], bytes]:
    """POST gzip-compressed protobuf, as the Collector's otlphttp exporter does by default."""
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}",
        data=gzip.compress(body),
        method="POST",
        headers={"Content-Type": "application/x-protobuf", "Content-Encoding": "gzip"},
    )
    try:
        with urllib.request.urlopen(request, timeout=RPC_TIMEOUT) as response:
            return response.status, dict(response.headers.items()), response.read()
    except urllib.error.HTTPError as error:
        with error:
            return error.code, dict(error.headers.items()), error.read()


def test_the_otlp_exporters_grpc_methods_are_the_ones_serve_registers() -> None:
    """The Export methods generated stubs call are serve's TRACE_SERVICE/METRICS_SERVICE."""
    assert _method(trace_service_pb2, "TraceService") == (
        "/opentelemetry.proto.collector.trace.v1.TraceService/Export"
    )
    assert _method(trace_service_pb2, "TraceService") == f"/{TRACE_SERVICE}/Export"
    assert _method(metrics_service_pb2, "MetricsService") == f"/{METRICS_SERVICE}/Export"


def test_grpc_trace_export_as_the_collector_sends_it_answers_ok(
    server: serve.Server, tmp_path: Path
) -> None:
    """A gzip TraceService/Export call answers OK, fully accepted, and the point is written."""
    method = _method(trace_service_pb2, "TraceService")
    code, response, _ = _grpc_export(server.grpc_port, method, _trace_request().SerializeToString())
    assert code == grpc.StatusCode.OK
    assert response is not None
    answer = trace_service_pb2.ExportTraceServiceResponse.FromString(response)
    assert answer.partial_success.rejected_spans == 0
    server.stop()
    written = (tmp_path / "out.lp").read_text()
    assert written.startswith("requests,"), written
    assert "route=GET:/collector-config" in written, written


def test_grpc_metrics_export_as_the_collector_sends_it_answers_ok(server: serve.Server) -> None:
    """A gzip MetricsService/Export call (the agent's metrics pipeline) answers OK."""
    method = _method(metrics_service_pb2, "MetricsService")
    body = metrics_service_pb2.ExportMetricsServiceRequest().SerializeToString()
    code, response, _ = _grpc_export(server.grpc_port, method, body)
    assert code == grpc.StatusCode.OK
    assert response is not None


def test_http_posts_to_the_receivers_paths_answer_ok(server: serve.Server) -> None:
    """gzip protobuf POSTs to TRACES_PATH and METRICS_PATH answer 200 with an OTLP response."""
    status, headers, body = _http_post(
        server.http_port, TRACES_PATH, _trace_request("/over-http").SerializeToString()
    )
    assert status == 200, body
    assert headers["Content-Type"] == "application/x-protobuf"
    answer = trace_service_pb2.ExportTraceServiceResponse.FromString(body)
    assert answer.partial_success.rejected_spans == 0
    metrics = metrics_service_pb2.ExportMetricsServiceRequest().SerializeToString()
    status, _, body = _http_post(server.http_port, METRICS_PATH, metrics)
    assert status == 200, body


def test_full_spool_answers_resource_exhausted_with_retry_info(full_server: serve.Server) -> None:
    """gRPC refusal carries google.rpc.RetryInfo: the otlp exporter retries only then."""
    method = _method(trace_service_pb2, "TraceService")
    code, _, trailing = _grpc_export(
        full_server.grpc_port, method, _trace_request().SerializeToString()
    )
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
    details = status_pb2.Status.FromString(trailing["grpc-status-details-bin"])
    assert details.code == grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]
    infos = []
    for detail in details.details:
        info = error_details_pb2.RetryInfo()
        if detail.Unpack(info):
            infos.append(info)
    assert infos, "no RetryInfo: the Collector's otlp exporter would drop the batch"
    assert infos[0].retry_delay.seconds >= 1


def test_full_spool_answers_503_with_retry_after_over_http(full_server: serve.Server) -> None:
    """HTTP refusal is 503 with Retry-After in seconds: the otlphttp exporter waits and retries."""
    status, headers, body = _http_post(
        full_server.http_port, TRACES_PATH, _trace_request().SerializeToString()
    )
    assert status == 503
    assert int(headers["Retry-After"]) >= 1
    assert status_pb2.Status.FromString(body).message
