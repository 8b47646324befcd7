"""Whatever keeps ``otel-luna serve`` from starting is one line on stderr naming the setting and
the path or address, and exit status 2 — never a traceback (docs/serve.md)."""

from __future__ import annotations

import os
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.servehelpers import SERVE_START_TIMEOUT, VENV_BIN

pytestmark = pytest.mark.slow  # an otel-luna serve process per test


def serve_fails(tmp_path: Path, *args: str, **env: str) -> str:
    """Run ``otel-luna serve`` that must not start; its one line on stderr."""
    done = subprocess.run(
        [str(VENV_BIN / "otel-luna"), "serve", "--grpc-port", "0", "--http-port", "0", *args],
        env={
            **os.environ,
            "OTEL_EXPORTER_LUNA_ENDPOINT": f"file://{tmp_path / 'points.lp'}",
            "OTEL_EXPORTER_LUNA_SPOOL_DIR": str(tmp_path / "spool"),
            **env,
        },
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=SERVE_START_TIMEOUT,
    )
    assert done.returncode == 2, (done.returncode, done.stdout, done.stderr)
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr
    assert "Traceback" not in done.stderr
    assert "OTLP/" not in done.stdout  # it never said it listens
    return lines[0]


@pytest.fixture
def taken_port() -> Iterator[int]:
    """A port of 127.0.0.1 another socket listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


def test_spool_dir_that_is_a_file_is_one_line(tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    spool.write_text("not a directory")
    line = serve_fails(tmp_path)
    assert line.startswith("otel-luna serve: OTEL_EXPORTER_LUNA_SPOOL_DIR: ")
    assert str(spool) in line and "not a directory" in line.lower()


def test_spool_dir_that_cannot_be_created_is_one_line(tmp_path: Path) -> None:
    # Under /proc nothing can be created, by root neither (the tests may run as root, for whom
    # a mode 0500 directory is writable).
    line = serve_fails(tmp_path, OTEL_EXPORTER_LUNA_SPOOL_DIR="/proc/otel-luna-spool")
    assert line.startswith("otel-luna serve: OTEL_EXPORTER_LUNA_SPOOL_DIR: /proc/otel-luna-spool")


@pytest.mark.parametrize("which", ["cert", "key"])
def test_missing_tls_file_is_one_line(
    tmp_path: Path, certificate: tuple[Path, Path], which: str
) -> None:
    cert, key = certificate
    missing = tmp_path / f"missing-{which}.pem"
    given = {"cert": missing, "key": key} if which == "cert" else {"cert": cert, "key": missing}
    line = serve_fails(tmp_path, "--tls-cert", str(given["cert"]), "--tls-key", str(given["key"]))
    setting = f"OTEL_EXPORTER_LUNA_SERVE_TLS_{which.upper()}"
    assert line == f"otel-luna serve: {setting}: {missing}: No such file or directory"


def test_unreadable_tls_file_is_one_line(tmp_path: Path, certificate: tuple[Path, Path]) -> None:
    cert, _ = certificate
    folder = tmp_path / "key.pem"
    folder.mkdir()  # cannot be read, by root neither
    line = serve_fails(tmp_path, "--tls-cert", str(cert), "--tls-key", str(folder))
    assert line.startswith(f"otel-luna serve: OTEL_EXPORTER_LUNA_SERVE_TLS_KEY: {folder}: ")


@pytest.mark.parametrize("which", ["cert", "key"])
def test_tls_file_that_is_no_pem_is_one_line(
    tmp_path: Path, certificate: tuple[Path, Path], which: str
) -> None:
    cert, key = certificate
    junk = tmp_path / "junk.pem"
    junk.write_text("not PEM\n")
    given = {"cert": junk, "key": key} if which == "cert" else {"cert": cert, "key": junk}
    line = serve_fails(tmp_path, "--tls-cert", str(given["cert"]), "--tls-key", str(given["key"]))
    assert line.startswith(f"otel-luna serve: OTEL_EXPORTER_LUNA_SERVE_TLS_{which.upper()}: ")
    assert str(junk) in line


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_port_in_use_is_one_line(tmp_path: Path, taken_port: int, protocol: str) -> None:
    line = serve_fails(tmp_path, f"--{protocol}-port", str(taken_port))
    setting = f"OTEL_EXPORTER_LUNA_SERVE_{protocol.upper()}_PORT"
    assert line == (
        f"otel-luna serve: {setting}: cannot listen on 127.0.0.1:{taken_port}: "
        "Address already in use"
    )


def test_address_not_of_this_machine_is_one_line(tmp_path: Path) -> None:
    line = serve_fails(tmp_path, "--host", "192.0.2.1")  # TEST-NET-1: nobody's
    assert line == (
        "otel-luna serve: OTEL_EXPORTER_LUNA_SERVE_HOST: cannot listen on 192.0.2.1:0: "
        "Cannot assign requested address"
    )


def test_with_workers_a_port_in_use_is_one_line(tmp_path: Path, taken_port: int) -> None:
    line = serve_fails(tmp_path, "--workers", "2", "--http-port", str(taken_port))
    assert line.startswith("otel-luna serve: OTEL_EXPORTER_LUNA_SERVE_HTTP_PORT: ")


def test_with_workers_a_spool_dir_that_is_a_file_is_one_line(tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    spool.write_text("not a directory")
    line = serve_fails(tmp_path, "--workers", "3")
    assert line.startswith(f"otel-luna serve: OTEL_EXPORTER_LUNA_SPOOL_DIR: {spool}")


def test_file_destination_that_cannot_be_created_is_one_line(tmp_path: Path) -> None:
    line = serve_fails(
        tmp_path, OTEL_EXPORTER_LUNA_ENDPOINT="file:///proc/otel-luna-points/points.lp"
    )
    assert line.startswith("otel-luna serve: OTEL_EXPORTER_LUNA_ENDPOINT: /proc/otel-luna-points")


@pytest.mark.parametrize("which", ["cert", "key"])
def test_tls_file_that_is_a_fifo_is_one_line_not_a_hang(
    tmp_path: Path, certificate: tuple[Path, Path], which: str
) -> None:
    """A FIFO (no writer: a blocking open would wait for ever) as a TLS file is one line."""
    cert, key = certificate
    fifo = tmp_path / f"{which}.fifo"
    os.mkfifo(fifo)
    given = {"cert": fifo, "key": key} if which == "cert" else {"cert": cert, "key": fifo}
    line = serve_fails(tmp_path, "--tls-cert", str(given["cert"]), "--tls-key", str(given["key"]))
    setting = f"OTEL_EXPORTER_LUNA_SERVE_TLS_{which.upper()}"
    assert line == f"otel-luna serve: {setting}: {fifo}: not a regular file"


@pytest.mark.parametrize("given", ["256.1.1.1", "[256.1.1.1]"])
def test_a_bad_health_host_names_the_health_host(tmp_path: Path, given: str) -> None:
    """An address that is no address, as the health host, is reported under that setting."""
    line = serve_fails_with_health_host(tmp_path, given)
    assert line.startswith(
        "otel-luna serve: OTEL_EXPORTER_LUNA_SERVE_HEALTH_HOST: cannot listen on 256.1.1.1:0: "
    )


def test_a_health_host_not_of_this_machine_names_the_health_host(tmp_path: Path) -> None:
    line = serve_fails_with_health_host(tmp_path, "192.0.2.1")
    assert line == (
        "otel-luna serve: OTEL_EXPORTER_LUNA_SERVE_HEALTH_HOST: cannot listen on 192.0.2.1:0: "
        "Cannot assign requested address"
    )


def serve_fails_with_health_host(tmp_path: Path, host: str) -> str:
    return serve_fails(tmp_path, "--health-port", "0", OTEL_EXPORTER_LUNA_SERVE_HEALTH_HOST=host)


@pytest.mark.parametrize("host", ["::1", "[::1]"])
def test_an_ipv6_address_not_of_this_machine_is_one_line(tmp_path: Path, host: str) -> None:
    """No second line from grpc's own log: the address is tried with a plain socket first."""
    line = serve_fails(tmp_path, "--host", host.replace("::1", "2001:db8::1"))
    assert line == (
        "otel-luna serve: OTEL_EXPORTER_LUNA_SERVE_HOST: cannot listen on [2001:db8::1]:0: "
        "Cannot assign requested address"
    )
