"""A real OpenTelemetry Collector for the tests: ``otelcol-luna``, built from ``tests/collector/``.

``scripts/build-collector`` builds the binary once into a cache directory (``./scripts/test``
runs it before pytest) and prints its path; :func:`collector_binary` asks it again, which costs
nothing while the sources are unchanged. A missing Go or a failed build fails the tests loudly.

:class:`Collector` runs the binary on a configuration of ``collector-config/`` made local:
:func:`localize` rewrites the addresses the file documents (its receivers, the replicas of
``otel-luna serve``, InfluxDB) into the free ports of the test, and the Collector gets a
``health_check`` endpoint (readiness) and its own metrics on a Prometheus endpoint, both on
127.0.0.1, so a test can say what the Collector did (sent, failed, retried spans).
"""

from __future__ import annotations

import copy
import functools
import re
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from tests.support.servers import HOST, ServerProcess, built_binary, free_port, http_request

REPO = Path(__file__).resolve().parent.parent.parent
CONFIG_DIR = REPO / "collector-config"
BUILD_SCRIPT = REPO / "scripts" / "build-collector"
#: Where the gateways of ``collector-config/`` keep their persistent queue (``file_storage``);
#: :func:`localize` moves it into the test's directory.
QUEUE_DIRECTORY = "/var/lib/otelcol/gateway-queue"
#: A Collector with one gateway or agent pipeline is ready in well under a second here.
START_TIMEOUT = 60.0


@functools.cache
def collector_binary() -> str:
    """The path of ``otelcol-luna`` (built now if the cache has no binary of these sources)."""
    return built_binary(BUILD_SCRIPT, "Go 1.26 and the Go module proxy")


def validate(
    config: Path, env: Mapping[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """``otelcol-luna validate --config=FILE``: what the real Collector says of a file."""
    return subprocess.run(
        [collector_binary(), "validate", f"--config={config}"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env=dict(env) if env is not None else None,
        stdin=subprocess.DEVNULL,
    )


def load_config(name: str) -> dict[str, Any]:
    """The parsed YAML of ``collector-config/NAME``."""
    document = yaml.safe_load((CONFIG_DIR / name).read_text())
    assert isinstance(document, dict), f"{name}: not a mapping"
    return document


def localize(document: Any, addresses: Mapping[str, str]) -> Any:
    """A copy of ``document`` with every string value's documented addresses replaced:
    ``addresses`` maps each (``"0.0.0.0:14317"``, ``"127.0.0.1:4317"``, ...) to the test's."""
    if not addresses:
        return copy.deepcopy(document)
    keys = sorted(addresses, key=len, reverse=True)
    pattern = re.compile("|".join(re.escape(key) for key in keys))
    if isinstance(document, dict):
        return {key: localize(value, addresses) for key, value in document.items()}
    if isinstance(document, list):
        return [localize(value, addresses) for value in document]
    if isinstance(document, str):
        return pattern.sub(lambda match: addresses[match[0]], document)
    return document


def _prometheus_samples(text: str) -> dict[str, float]:
    """``name{labels}`` → value of a Prometheus text exposition (comments skipped)."""
    samples: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        key, _, value = line.rpartition(" ")
        try:
            samples[key] = float(value)
        except ValueError:
            continue
    return samples


class Collector:
    """``otelcol-luna`` running ``config`` (a parsed, localized configuration) in ``root``.

    The configuration gets, besides what it holds: the ``health_check`` extension on a free
    port of 127.0.0.1 (probed for readiness) and the Collector's own metrics, ``detailed``, on
    a Prometheus endpoint on another (:meth:`metrics`). Stopped by its PID (SIGTERM; SIGKILL
    after 10 s).
    """

    def __init__(
        self,
        config: Mapping[str, Any],
        root: Path,
        *,
        name: str = "otelcol",
        env: Mapping[str, str] | None = None,
    ) -> None:
        root.mkdir(parents=True, exist_ok=True)
        self.health_port = free_port()
        self.metrics_port = free_port()
        document = copy.deepcopy(dict(config))
        extensions = document.setdefault("extensions", None) or {}
        extensions["health_check"] = {"endpoint": f"{HOST}:{self.health_port}"}
        document["extensions"] = extensions
        service = document.setdefault("service", {})
        service["extensions"] = sorted(set(service.get("extensions") or []) | {"health_check"})
        telemetry = service.setdefault("telemetry", {})
        telemetry["metrics"] = {
            "level": "detailed",
            "readers": [
                {"pull": {"exporter": {"prometheus": {"host": HOST, "port": self.metrics_port}}}}
            ],
        }
        self.config = document
        self.config_path = root / f"{name}.yaml"
        self.config_path.write_text(yaml.safe_dump(document, sort_keys=False))
        self.process = ServerProcess(
            name,
            [collector_binary(), f"--config={self.config_path}"],
            root,
            env=dict(env) if env is not None else None,
        )
        self.startup_seconds = self.process.wait_ready(self._healthy, timeout=START_TIMEOUT)

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def log(self) -> str:
        """What the Collector logged so far."""
        return self.process.log_path.read_text(errors="replace")

    def _healthy(self) -> bool:
        status, _, _ = http_request("GET", f"http://{HOST}:{self.health_port}/", timeout=1.0)
        return status == 200

    def metrics(self) -> dict[str, float]:
        """The Collector's own metrics now: ``name{labels}`` → value."""
        _, _, body = http_request("GET", f"http://{HOST}:{self.metrics_port}/metrics")
        return _prometheus_samples(body.decode())

    def total(self, name: str, **labels: str) -> float:
        """The sum of metric ``name`` over the series whose labels include ``labels``."""
        wanted = [f'{key}="{value}"' for key, value in labels.items()]
        return sum(
            value
            for key, value in self.metrics().items()
            if key.split("{", 1)[0] == name and all(label in key for label in wanted)
        )

    def stop(self) -> None:
        self.process.stop()

    def __enter__(self) -> Collector:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
