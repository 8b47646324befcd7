'use strict';
// A Node.js OTLP client for tests/serve/test_serve.py: @opentelemetry/sdk-node with
// @opentelemetry/exporter-trace-otlp-grpc (or -proto for OTLP/HTTP), nothing written by otel-luna.
//
//   node app.js PROTOCOL URL SPANS_JSON
//
// PROTOCOL is grpc (URL http://host:port) or http/protobuf (URL http://host:port/v1/traces).
// OTEL_EXPORTER_OTLP_COMPRESSION=gzip makes either exporter compress.
// SPANS_JSON is a JSON array with one object per SERVER span to record:
//   {"name": "POST /x", "attributes": {...}, "error": false, "duration_ms": 3.5}
// SPANS_JSON may also be @PATH, a file holding that array (argv strings are limited to 128 KiB).
// Span i starts at a distinct nanosecond (so no two points share a timestamp), unless its spec
// has "start_ns" (a decimal string: that start, e.g. the same for every span) or the environment
// has OTEL_LUNA_TEST_CLOCK=sdk (the SDK's own clock, as a real service). The resource's
// service.name comes from OTEL_SERVICE_NAME. After the spans end, the SDK is shut down (which
// flushes the batch processor); the program prints "exported N spans" and exits 0, or exits 1
// when an export failed.

const { NodeSDK } = require('@opentelemetry/sdk-node');
const grpcExporter = require('@opentelemetry/exporter-trace-otlp-grpc');
const protoExporter = require('@opentelemetry/exporter-trace-otlp-proto');
const api = require('@opentelemetry/api');

// Wraps the real exporter to count what it reported, so a failed export fails the program
// instead of being logged and forgotten by the batch processor.
class CountingExporter {
  constructor(inner) {
    this.inner = inner;
    this.exported = 0;
    this.failures = [];
  }

  export(spans, resultCallback) {
    this.inner.export(spans, (result) => {
      if (result.code === 0) {
        this.exported += spans.length;
      } else {
        this.failures.push(String(result.error));
      }
      resultCallback(result);
    });
  }

  shutdown() {
    return this.inner.shutdown();
  }

  forceFlush() {
    return this.inner.forceFlush ? this.inner.forceFlush() : Promise.resolve();
  }
}

function hrTime(totalNs) {
  return [Number(totalNs / 1000000000n), Number(totalNs % 1000000000n)];
}

async function main() {
  const [protocol, url, specJson] = process.argv.slice(2);
  const exporters = { grpc: grpcExporter, 'http/protobuf': protoExporter };
  if (!exporters[protocol] || !url || !specJson) {
    console.error('usage: node app.js grpc|http/protobuf URL SPANS_JSON');
    process.exit(2);
  }
  const spans = JSON.parse(
    specJson.startsWith('@') ? require('fs').readFileSync(specJson.slice(1), 'utf8') : specJson,
  );
  const sdkClock = process.env.OTEL_LUNA_TEST_CLOCK === 'sdk';
  const exporter = new CountingExporter(new exporters[protocol].OTLPTraceExporter({ url }));
  const sdk = new NodeSDK({ traceExporter: exporter, instrumentations: [] });
  sdk.start();

  const tracer = api.trace.getTracer('otel-luna-node-test', '1.0.0');
  const baseNs = BigInt(Date.now() - 60000) * 1000000n;
  spans.forEach((spec, index) => {
    const startNs = spec.start_ns ? BigInt(spec.start_ns) : baseNs + BigInt(index) * 1000n;
    const durationNs = BigInt(Math.round((spec.duration_ms ?? 2) * 1e6));
    const options = { kind: api.SpanKind.SERVER, attributes: spec.attributes };
    if (!sdkClock) {
      options.startTime = hrTime(startNs);
    }
    const span = tracer.startSpan(spec.name, options);
    if (spec.error) {
      span.setStatus({ code: api.SpanStatusCode.ERROR, message: 'failed' });
    }
    span.end(sdkClock ? undefined : hrTime(startNs + durationNs));
  });

  await sdk.shutdown();
  if (exporter.failures.length || exporter.exported !== spans.length) {
    console.error(
      `export failed: exported ${exporter.exported} of ${spans.length}: ${exporter.failures}`,
    );
    process.exit(1);
  }
  console.log(`exported ${exporter.exported} spans`);
}

main().catch((error) => {
  console.error(error);
  process.exit(1);
});
