"""What stops ``otel-luna serve`` from starting, as a :class:`~otel_luna.settings.SettingsError`
naming the setting and the path or address (one line, exit status 2 from the command): a TLS file
it cannot read, a spool directory it cannot use, a port it cannot listen on. No grpc here: the
supervisor of ``--workers`` uses it before any worker starts."""

from __future__ import annotations

import errno
import functools
import logging
import os
import resource
import socket
import ssl
import stat
from collections.abc import Callable
from typing import TypeVar

from otel_luna.serve._settings import ServeSettings, env_name
from otel_luna.settings import SettingsError

_T = TypeVar("_T")

#: The exit status of a start-up error: a usage error, as ``otel-luna`` gives for one.
EXIT_USAGE = 2
_logger = logging.getLogger(__name__)
#: File descriptors serve keeps for other things than its clients' connections: the spool's
#: files, the connections to the destination, grpc's own, pipes, the interpreter's.
FD_RESERVE = 128
#: Connections of the health endpoint at once (:mod:`otel_luna.serve._health`).
HEALTH_CONNECTIONS = 32


def raise_open_file_limit() -> None:
    """Raise the soft limit of open files to the hard limit (as Go programs, the Collector
    among them, do at start since Go 1.19): every connection takes a file descriptor, and
    systemd's default soft limit is 1024. A line on the log only when it cannot."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == hard:
        return
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    except (OSError, ValueError) as error:
        _logger.warning(
            "otel-luna serve: cannot raise the open-file limit (RLIMIT_NOFILE) from %d to %d: "
            "%s; connections are capped to fit in %d",
            soft,
            hard,
            error,
            soft,
        )


#: Most gRPC connections whatever the open-file limit: grpc keeps ~17 KB per connection, so a
#: hard limit of 524,288 (systemd's) would otherwise allow gigabytes of idle connections.
GRPC_CONNECTIONS_MAX = 10_000


def grpc_connection_limit(http_connections: int) -> int:
    """Most gRPC connections at once: what the open-file limit leaves after the OTLP/HTTP
    connections (``serve_max_connections``), the health endpoint's and :data:`FD_RESERVE`
    (at least 16, at most :data:`GRPC_CONNECTIONS_MAX`). gRPC clients send all their calls over
    one connection each."""
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if soft == resource.RLIM_INFINITY:
        soft = 2**31 - 1
    left = soft - http_connections - HEALTH_CONNECTIONS - FD_RESERVE
    return int(min(GRPC_CONNECTIONS_MAX, max(16, left)))


def check_tls_files(settings: ServeSettings) -> None:
    """The TLS certificate chain and key can be read and belong together; else a
    :class:`SettingsError` naming the setting and the file."""
    cert, key = settings.serve_tls_cert, settings.serve_tls_key
    if not (cert and key):
        return
    for name, path in (("serve_tls_cert", cert), ("serve_tls_key", key)):
        named(name, path, functools.partial(_read_one_byte, path))
    try:
        ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(cert, key)
    except (ssl.SSLError, OSError) as error:
        why = f"{getattr(error, 'reason', None) or error.strerror or error}"
        try:
            ssl.create_default_context().load_verify_locations(cafile=cert)
        except (ssl.SSLError, OSError):
            raise SettingsError(
                env_name("serve_tls_cert"), f"{cert} holds no PEM certificate ({why})"
            ) from None
        raise SettingsError(
            env_name("serve_tls_key"), f"{key} holds no PEM private key for {cert} ({why})"
        ) from None


def _read_one_byte(path: str) -> None:
    """Open ``path`` without blocking (a FIFO would wait for a writer) and read a byte of it:
    an :class:`OSError` unless it is a regular file that can be read."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(errno.EINVAL, "not a regular file", path)
        os.read(fd, 1)
    finally:
        os.close(fd)


def host_port(host: str, port: int) -> str:
    """``host:port`` as an address to dial or bind: an IPv6 address in brackets."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def named(
    name: str,
    path: str | None,
    run: Callable[[], _T],
    errors: type[OSError] | tuple[type[OSError], ...] = OSError,
) -> _T:
    """``run()``; ``errors`` from it as a :class:`SettingsError` naming the setting ``name``
    and the path (:func:`path_error`)."""
    try:
        return run()
    except errors as error:
        raise path_error(name, path, error) from None


def path_error(name: str, path: str | None, error: OSError) -> SettingsError:
    """``error`` as a :class:`SettingsError` naming the setting ``name`` and the file or
    directory the system named (else ``path``)."""
    where = error.filename or path  # the file or directory inside, if it was one
    return SettingsError(env_name(name), f"{where}: {error.strerror or error}")


def listening(
    name: str,
    host: str,
    port: int,
    reuse_port: bool,
    start: Callable[[], _T],
    host_setting: str = "serve_host",
) -> _T:
    """``start()`` of a front end listening on ``host``:``port``; when it cannot listen, a
    :class:`SettingsError` naming the setting at fault: ``host_setting`` for an address that
    does not resolve or is not this machine's, else the port's ``name``. A plain socket bound
    the same way is tried first: it says why (grpcio says only that it could not bind, after a
    log line of its own)."""
    problem = bind_problem(name, host, port, reuse_port, host_setting)
    try:
        if problem is None:
            return start()
    except (OSError, RuntimeError) as error:
        if isinstance(error, RuntimeError) and "bind" not in str(error):
            raise
        problem = bind_problem(name, host, port, reuse_port, host_setting) or (name, str(error))
    assert problem is not None
    setting, why = problem
    raise SettingsError(env_name(setting), f"cannot listen on {host_port(host, port)}: {why}")


def bind_problem(
    name: str, host: str, port: int, reuse_port: bool, host_setting: str = "serve_host"
) -> tuple[str, str] | None:
    """Why a socket cannot listen on ``host``:``port``: the setting at fault (the port's
    ``name`` when the port is taken or not allowed, else ``host_setting``) and the system's
    words; None when it can."""
    try:
        infos = socket.getaddrinfo(
            host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
    except (OSError, UnicodeError) as error:
        return host_setting, str(getattr(error, "strerror", None) or error)
    family, kind, proto, _, address = infos[0]
    try:
        with socket.socket(family, kind, proto) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if reuse_port:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.bind(address)
            sock.listen(1)
    except OSError as error:
        at_fault = name if error.errno in (errno.EADDRINUSE, errno.EACCES) else host_setting
        return at_fault, error.strerror or str(error)
    return None
