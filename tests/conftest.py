"""Session-wide fixtures: real InfluxDB 1.x (plain, auth-enabled, small max body), InfluxDB 2.x
and VictoriaMetrics servers on 127.0.0.1.

Servers start on first use, once per test session, each on free ports in its own temporary
directory, and are stopped (by the PID started here) when the session ends. A missing binary or
a server that does not start fails the test loudly; nothing is skipped.

Every test is put in its layers here (:func:`pytest_collection_modifyitems`), for
``pytest -m unit`` and the like; the markers are registered in pyproject.toml.
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from tests.support.exporterapp import App
from tests.support.httpstub import HttpStub
from tests.support.limits import FULL_DISK_BYTES, SMALL_BODY_BYTES
from tests.support.servers import (
    InfluxDB1,
    InfluxDB2,
    ServerError,
    VictoriaMetrics,
    start_influxdb1,
    start_influxdb2,
    start_victoria_metrics,
)

_Server = TypeVar("_Server", InfluxDB1, InfluxDB2, VictoriaMetrics)

#: The layers (markers registered in pyproject.toml) a test is in because of a fixture it uses.
FIXTURE_LAYERS = {
    "influxdb1": "influxdb",
    "influxdb1_auth": "influxdb",
    "influxdb1_small_body": "influxdb",
    "influxdb1_database": "influxdb",
    "influxdb2": "influxdb",
    "influxdb2_bucket": "influxdb",
    "victoria_metrics": "influxdb",
    "own_influxdb1": "influxdb",
    "full_disk": "root",
    "certificate": "slow",  # runs openssl
}

#: Every layer but ``unit``: a test in none of them is a unit test.
LAYERS = ("influxdb", "node", "root", "e2e", "slow")

_TESTS = Path(__file__).resolve().parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Assign the layers in one place: from the fixtures a test uses, from ``tests/e2e/``, and
    from the ``pytestmark`` of its module (or a mark of its own); ``unit`` for the rest."""
    for item in items:
        names = getattr(item, "fixturenames", ())
        layers = {FIXTURE_LAYERS[name] for name in names if name in FIXTURE_LAYERS}
        if _TESTS / "e2e" in item.path.parents:
            layers.add("e2e")
        for layer in sorted(layers):
            item.add_marker(layer)
        if not any(item.get_closest_marker(layer) for layer in LAYERS):
            item.add_marker("unit")


def _start_or_fail(what: str, start: Callable[[Path], _Server], root: Path) -> _Server:
    """Start a server or fail the requesting tests loudly, with the server's log tail."""
    try:
        return start(root)
    except ServerError as exc:
        message = f"{what} test server unavailable: {exc}"
    pytest.fail(message, pytrace=False)


@contextlib.contextmanager
def _running(what: str, start: Callable[[Path], _Server], root: Path) -> Iterator[_Server]:
    """A started server (or the requesting tests failed loudly), stopped afterwards."""
    server = _start_or_fail(what, start, root)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def influxdb1(tmp_path_factory: pytest.TempPathFactory) -> Iterator[InfluxDB1]:
    """A real InfluxDB 1.x (influxd) for the whole session; see ``servers.InfluxDB1``."""
    with _running("InfluxDB 1.x", start_influxdb1, tmp_path_factory.mktemp("influxdb1")) as server:
        yield server


@pytest.fixture(scope="session")
def influxdb1_auth(tmp_path_factory: pytest.TempPathFactory) -> Iterator[InfluxDB1]:
    """A real InfluxDB 1.x with authentication enabled; ``admin`` holds its admin user."""
    with _running(
        "InfluxDB 1.x (auth)",
        lambda root: start_influxdb1(root, auth=True),
        tmp_path_factory.mktemp("influxdb1_auth"),
    ) as server:
        yield server


@pytest.fixture(scope="session")
def influxdb1_small_body(tmp_path_factory: pytest.TempPathFactory) -> Iterator[InfluxDB1]:
    """A real InfluxDB 1.x that answers 413 to request bodies over 4096 bytes."""
    with _running(
        "InfluxDB 1.x (max-body-size)",
        lambda root: start_influxdb1(root, max_body_size=SMALL_BODY_BYTES),
        tmp_path_factory.mktemp("influxdb1_small_body"),
    ) as server:
        yield server


@pytest.fixture
def influxdb1_database(influxdb1: InfluxDB1) -> Iterator[str]:
    """The name of a new, empty InfluxDB 1.x database for one test (dropped afterwards)."""
    name = influxdb1.fresh_database()
    yield name
    influxdb1.drop_database(name)


@pytest.fixture(scope="session")
def influxdb2(tmp_path_factory: pytest.TempPathFactory) -> Iterator[InfluxDB2]:
    """A real InfluxDB 2.x (built from its Go module) for the whole session, onboarded; see
    ``servers.InfluxDB2``."""
    with _running("InfluxDB 2.x", start_influxdb2, tmp_path_factory.mktemp("influxdb2")) as server:
        yield server


@pytest.fixture
def influxdb2_bucket(influxdb2: InfluxDB2) -> Iterator[str]:
    """The name of a new, empty bucket of the InfluxDB 2.x for one test (deleted afterwards)."""
    name = influxdb2.fresh_bucket()
    yield name
    influxdb2.delete_bucket(name)


@pytest.fixture(scope="session")
def victoria_metrics(tmp_path_factory: pytest.TempPathFactory) -> Iterator[VictoriaMetrics]:
    """A real VictoriaMetrics for the whole session; see ``servers.VictoriaMetrics``."""
    with _running(
        "VictoriaMetrics", start_victoria_metrics, tmp_path_factory.mktemp("victoria_metrics")
    ) as server:
        yield server


@pytest.fixture(autouse=True)
def _own_state_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test (and the apps it starts) spools and dead-letters under its own directory."""
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))


@pytest.fixture(scope="session")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 and its key (PEM files)."""
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    assert shutil.which("openssl"), "openssl is needed to make a test certificate"
    subprocess.run(
        [
            *("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"),
            *("-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"),
            *("-keyout", str(key), "-out", str(cert)),
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


@pytest.fixture
def full_disk(tmp_path: Path) -> Iterator[Path]:
    """A fresh tmpfs of FULL_DISK_BYTES (a spool directory that fills up), unmounted afterwards.
    Mounting needs root, as here and in CI: a mount that fails fails the test, never skips."""
    mount_point = tmp_path / "tmpfs"
    mount_point.mkdir()
    command = [
        "mount",
        "-t",
        "tmpfs",
        "-o",
        f"size={FULL_DISK_BYTES},mode=0700",
        "tmpfs",
        str(mount_point),
    ]
    mounted = subprocess.run(command, capture_output=True, text=True, check=False)
    if mounted.returncode != 0:
        pytest.fail(
            f"cannot mount a tmpfs on {mount_point} (this test needs root): "
            f"{mounted.stderr.strip()}",
            pytrace=False,
        )
    try:
        yield mount_point
    finally:
        if subprocess.run(["umount", str(mount_point)], check=False).returncode != 0:
            subprocess.run(["umount", "--lazy", str(mount_point)], check=True)


@pytest.fixture
def http_stub() -> Iterator[Callable[..., HttpStub]]:
    """Starts hand-written HTTP servers (``httpstub.HttpStub(handler, ...)``) for one test;
    stopped after it."""
    stubs: list[HttpStub] = []

    def start(handler: type[Any], **options: Any) -> HttpStub:
        stubs.append(HttpStub(handler, **options))
        return stubs[-1]

    yield start
    for stub in stubs:
        stub.stop()


@pytest.fixture
def app_factory(tmp_path: Path) -> Iterator[Callable[..., App]]:
    """Makes in-process exporting apps (``exporterapp.App``) for one test; shut down after."""
    apps: list[App] = []

    def make(**settings: Any) -> App:
        apps.append(App(tmp_path, **settings))
        return apps[-1]

    yield make
    for app in apps:
        app.close()
