"""``otel-luna serve`` on IPv6 loopback: ``--host ::1`` and ``--host [::1]`` (and the health
host in either form) listen for gRPC, HTTP and the health endpoint, and the start lines print
addresses a client can dial (``[::1]:port``). The machine's ``lo`` has ``::1``."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest
import requests

from tests.support.servehelpers import Serve, grpc_call, server_spans, trace_request

pytestmark = pytest.mark.slow  # otel-luna serve processes

HTTP_TIMEOUT = 10.0


@pytest.mark.parametrize("host", ["::1", "[::1]"])
def test_serve_listens_on_ipv6_loopback(tmp_path: Path, host: str) -> None:
    """OTLP/HTTP, OTLP/gRPC and /readyz are answered on [::1], given with or without brackets."""
    env = {
        "OTEL_EXPORTER_LUNA_ENDPOINT": f"file://{tmp_path / 'points.lp'}",
        "OTEL_EXPORTER_LUNA_SPOOL_DIR": str(tmp_path / "spool"),
        "OTEL_EXPORTER_LUNA_SERVE_HEALTH_HOST": host,
    }
    with Serve(env, "--host", host, "--health-port", "0") as serve:
        assert serve.hosts == {"gRPC": "[::1]", "HTTP": "[::1]"}, serve.output
        assert serve.health_host == "[::1]", serve.output
        body = trace_request(server_spans(2)[0]).SerializeToString()
        answer = requests.post(
            serve.http_url + "/v1/traces",
            data=body,
            headers={"Content-Type": "application/x-protobuf"},
            timeout=HTTP_TIMEOUT,
        )
        assert answer.status_code == 200, answer.text
        code, details, _, _ = grpc_call(serve.grpc_target, body)
        assert code == grpc.StatusCode.OK, details
        ready = requests.get(serve.health_url + "/readyz", timeout=HTTP_TIMEOUT)
        assert ready.status_code == 200, ready.text
