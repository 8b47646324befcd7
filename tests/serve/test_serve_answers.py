"""Every OTLP request to ``otel-luna serve`` gets an answer: malformed OTLP/JSON is a 400 (never
a dropped connection the client would retry for ever), and values dropped from written points
are named in ``partial_success`` with 0 rejected (the OTLP way to warn)."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator

import pytest
import requests
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from tests.support.servehelpers import Serve

pytestmark = pytest.mark.slow  # one otel-luna serve process for the module

T0 = 1_700_000_000_123_456_789
GOOD_SPAN = {
    "traceId": "0af7651916cd43dd8448eb211c80319c",
    "spanId": "b7ad6b7169203331",
    "name": "GET /x",
    "kind": 2,
    "startTimeUnixNano": str(T0),
    "endTimeUnixNano": str(T0 + 1000),
    "attributes": [{"key": "http.route", "value": {"stringValue": "/x"}}],
}


@pytest.fixture(scope="module")
def serve(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Serve]:
    """One serve for the module, writing to a file (nothing to wait for at its stop)."""
    out = tmp_path_factory.mktemp("serve-answers")
    env = {
        "OTEL_EXPORTER_LUNA_ENDPOINT": f"file://{out / 'points.lp'}",
        "XDG_STATE_HOME": str(out / "state"),
    }
    with Serve(env) as running:
        yield running
    assert "Traceback" not in running.output


def body_with(bad: object) -> str:
    """A request whose second span carries ``bad`` (JSON text spliced in as an attribute value
    or as the whole span), beside a good span."""
    return (
        '{"resourceSpans":[{"scopeSpans":[{"spans":['
        + json.dumps(GOOD_SPAN)
        + ',{"traceId":"0af7651916cd43dd8448eb211c80319c","spanId":"00f067aa0ba902b7",'
        + '"kind":2,"attributes":[{"key":"x","value":'
        + str(bad)
        + "}]}]}]}]}"
    )


@pytest.mark.parametrize(
    "bad",
    [
        '{"stringValue":"caf\\udce9"}',  # what JSON.stringify makes of a lone surrogate
        '{"intValue":"99999999999999999999999"}',
        '{"intValue":"1.5"}',
        '{"doubleValue":"abc"}',
        "[1,2]",
    ],
)
def test_a_malformed_json_span_is_left_out_and_the_good_one_accepted(
    serve: Serve, bad: str
) -> None:
    answer = requests.post(
        f"{serve.http_url}/v1/traces",
        data=body_with(bad).encode(),
        headers={"Content-Type": "application/json"},
        timeout=10,
    )
    assert answer.status_code == 200, answer.text
    partial = json.loads(answer.content)["partialSuccess"]
    assert partial["rejectedSpans"] == "1"
    assert "malformed_span=1" in partial["errorMessage"]
    assert "spans[1]" in partial["errorMessage"]


@pytest.mark.parametrize(
    "body",
    [
        '{"resourceSpans":[{"scopeSpans":[{"spans":[{"startTimeUnixNano":"-1"}]}]}]}',
        "[1,2]",
        "null",
        "[" * 5000 + "]" * 5000,
    ],
)
def test_malformed_json_is_an_answer_not_a_dropped_connection(serve: Serve, body: str) -> None:
    answer = requests.post(
        f"{serve.http_url}/v1/traces",
        data=body.encode(),
        headers={"Content-Type": "application/json"},
        timeout=10,
    )
    assert answer.status_code == 400, answer.text
    assert json.loads(answer.content)["message"].startswith("malformed")
    good = requests.post(
        f"{serve.http_url}/v1/traces",
        data=json.dumps({"resourceSpans": [{"scopeSpans": [{"spans": [GOOD_SPAN]}]}]}),
        headers={"Content-Type": "application/json"},
        timeout=10,
    )
    assert good.status_code == 200  # and it goes on serving


def test_dropped_values_are_a_warning_in_partial_success(serve: Serve) -> None:
    request = ExportTraceServiceRequest()
    span = (
        request.resource_spans.add()
        .scope_spans.add()
        .spans.add(
            trace_id=b"\x01" * 16,
            span_id=b"\x02" * 8,
            kind=Span.SPAN_KIND_SERVER,
            start_time_unix_nano=T0,
            end_time_unix_nano=T0 + 1000,
        )
    )
    span.attributes.add(key="http.route", value=AnyValue(string_value="/x"))
    span.attributes.add(key="luna.field.route", value=AnyValue(string_value="shadow"))
    span.attributes.add(key="luna.field.ratio_seconds", value=AnyValue(double_value=math.nan))
    answer = requests.post(
        f"{serve.http_url}/v1/traces",
        data=request.SerializeToString(),
        headers={"Content-Type": "application/x-protobuf"},
        timeout=10,
    )
    assert answer.status_code == 200
    partial = ExportTraceServiceResponse.FromString(answer.content).partial_success
    assert partial.rejected_spans == 0
    assert "attribute_shadows_schema=1" in partial.error_message
    assert "nonfinite_field=1" in partial.error_message


def test_a_lone_surrogate_quoted_in_the_parse_error_is_still_an_answer(serve: Serve) -> None:
    for path in ("/v1/traces", "/v1/metrics"):
        answer = requests.post(
            f"{serve.http_url}{path}",
            data=b'{"resourceSpans":"\\udc00","resourceMetrics":"\\udc00"}',
            headers={"Content-Type": "application/json"},
            timeout=10,
        )
        assert answer.status_code == 400, answer.text


def test_a_non_ascii_authorization_header_is_a_401(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    out = tmp_path_factory.mktemp("serve-token")
    env = {
        "OTEL_EXPORTER_LUNA_ENDPOINT": f"file://{out / 'points.lp'}",
        "OTEL_EXPORTER_LUNA_SERVE_TOKEN": "s3cr3t",
        "XDG_STATE_HOME": str(out / "state"),
    }
    with Serve(env) as serve:
        for header in (b"Bearer \xe9", b"Bearer s3cr3t\xff"):
            answer = requests.post(
                f"{serve.http_url}/v1/traces",
                data=b"",
                headers={"Content-Type": "application/x-protobuf", "Authorization": header},
                timeout=10,
            )
            assert answer.status_code == 401
