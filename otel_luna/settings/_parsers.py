"""Parsers of setting values: each takes what a source gives (a string from the environment, a
TOML value, a keyword argument) and returns the value, or raises ``ValueError`` saying what is
wrong (the loader adds the setting's name and what it accepts). :func:`number` also returns
its ``accepts`` text."""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

from otel_luna.redact import MASK, redact

_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})


def parse_bool(value: Any) -> bool:
    """``true``/``false``, ``1``/``0``, ``yes``/``no``, ``on``/``off`` (any case)."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    text = str(value).strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise ValueError("expected true or false")


def number(
    kind: type[int] | type[float], low: float, high: float, unit: str = ""
) -> tuple[Callable[[Any], Any], str]:
    """A parser of ``kind`` numbers from ``low`` to ``high``, and its ``accepts`` text: the
    ``parse`` and ``accepts`` of a :class:`Setting`."""

    def show(bound: float) -> str:
        return str(int(bound)) if kind is int else f"{bound:g}"

    def parse(value: Any) -> Any:
        if isinstance(value, bool):
            raise ValueError("expected a number")
        try:
            parsed = kind(value)
        except (TypeError, ValueError):
            raise ValueError("not an integer" if kind is int else "not a number") from None
        if not low <= parsed <= high:  # NaN fails too
            raise ValueError("out of range")
        return parsed

    noun = "seconds" if kind is float else "an integer"
    return parse, f"{noun} from {show(low)} to {show(high)}" + (f" ({unit})" if unit else "")


def parse_api_version(value: Any) -> str:
    """``1``, ``2`` or ``auto``."""
    text = str(value).strip().lower()
    if text not in ("1", "2", "auto"):
        raise ValueError("expected 1, 2 or auto")
    return text


#: One label of a host name (letters, digits, ``-`` inside, ``_`` as Docker names have).
_HOST_LABEL = re.compile(r"(?!-)[A-Za-z0-9_-]{1,63}(?<!-)\Z")
#: What no endpoint may hold (``urlsplit`` silently drops tabs and newlines, so they are looked
#: for before it), and what only a file path may.
_CONTROL_CHARACTER = re.compile(r"[\x00-\x1f\x7f]")
_WHITESPACE = re.compile(r"\s")
_QUERY_OR_FRAGMENT = re.compile(r"[?#].*", re.S)
_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://")


def _valid_host(host: str, bracketed: bool) -> bool:
    """An IP address (IPv6 only in brackets), or a DNS name whose last label is not a number."""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        if bracketed:
            return False
    else:
        return bracketed == (address.version == 6)
    name = host[:-1] if host.endswith(".") else host
    if not name.isascii():
        try:
            name = name.encode("idna").decode("ascii")
        except UnicodeError:
            return False
    labels = name.split(".")
    return (
        len(name) <= 253
        and all(_HOST_LABEL.match(label) for label in labels)
        and not labels[-1].isdigit()  # 999.1.1.1 is no address and no name either
    )


def parse_endpoint(value: Any) -> str:
    """``console``, a ``file:`` URL or an http(s) URL with a host and no credentials."""
    text = str(value).strip()
    if text == "console":
        return text
    if _CONTROL_CHARACTER.search(text):
        raise ValueError("the endpoint holds a control character")
    if _WHITESPACE.search(text) and not text.lower().startswith("file:"):
        raise ValueError("an http(s) endpoint holds no spaces")
    try:
        parts = urlsplit(text)
    except ValueError:  # e.g. a bracketed host that is no IPv6 address
        raise ValueError("not a valid URL") from None
    if parts.scheme == "file":
        if "@" in parts.netloc:
            raise ValueError("a file:// endpoint takes no user or password, only a path")
        if "?" in text or "#" in text:
            raise ValueError("write ? and # in a file path as %3F and %23")
        if not (parts.netloc + parts.path):
            raise ValueError("a file:// endpoint needs a path, e.g. file:///var/lib/luna.lp")
        return text
    if parts.scheme in ("http", "https"):
        if "@" in parts.netloc:
            raise ValueError("put credentials in the username/password or token settings")
        if "?" in text or "#" in text:
            raise ValueError(
                "no query string or fragment (credentials go in the username/password or "
                "token settings; a path prefix such as http://host/influx is allowed)"
            )
        host = parts.hostname
        if not host:
            raise ValueError("an http(s) endpoint needs a host, e.g. http://127.0.0.1:8086")
        if not _valid_host(host, parts.netloc.startswith("[")):
            raise ValueError("the host is not a valid host name or IP address")
        try:
            port = parts.port
        except ValueError:
            port = 0
        if port == 0:
            raise ValueError("the port must be a number from 1 to 65535")
        return text.rstrip("/")
    raise ValueError("not a supported kind of endpoint")


def shown_endpoint(value: Any) -> str:
    """An endpoint as an error message may show it: everything up to its last ``@`` (userinfo,
    whatever characters the password holds, however mistyped the scheme), its query and its
    fragment masked."""
    text = str(value)
    at = text.rfind("@")
    if at != -1:
        scheme = _SCHEME.match(text)
        text = (scheme.group(0) if scheme else "") + MASK + text[at:]
    return redact(_QUERY_OR_FRAGMENT.sub(lambda found: found.group(0)[0] + MASK, text))


def parse_schema(value: Any) -> str:
    """``luna`` or ``watchdog``."""
    text = str(value).strip().lower()
    if text not in ("luna", "watchdog"):
        raise ValueError("expected luna or watchdog")
    return text


def parse_port(value: Any) -> int:
    """A TCP port, ``0`` meaning any free one."""
    if isinstance(value, bool):
        raise ValueError("expected a port number")
    number = int(value)
    if not 0 <= number <= 65535:
        raise ValueError("expected a port from 0 to 65535")
    return number


def parse_spool_kind(value: Any) -> str:
    """``disk`` or ``memory``."""
    text = str(value).strip().lower()
    if text not in ("disk", "memory"):
        raise ValueError("expected disk or memory")
    return text


#: The values of setting ``usages``: where ``record_usages`` puts the usages of a request.
USAGES_PER_REQUEST = "request"
USAGES_PER_INTERVAL = "interval"


def parse_usages_mode(value: Any) -> str:
    """``request`` or ``interval``."""
    text = str(value).strip().lower()
    if text not in (USAGES_PER_REQUEST, USAGES_PER_INTERVAL):
        raise ValueError("expected request or interval")
    return text


def default_state_dir(name: str) -> str:
    """``$XDG_STATE_HOME/otel-luna/<name>``, else ``~/.local/state/otel-luna/<name>``."""
    state = os.environ.get("XDG_STATE_HOME") or os.path.join(
        os.path.expanduser("~"), ".local", "state"
    )
    return os.path.join(state, "otel-luna", name)


def parse_text(value: Any) -> str:
    """A string (or an integer, as TOML may give a name), not empty."""
    if not isinstance(value, (str, int)) or isinstance(value, bool):
        raise ValueError("expected a string")
    text = str(value)
    if not text:
        raise ValueError("must not be empty")
    return text


def parse_address(value: Any) -> str:
    """A host name or an IP address to listen on; an IPv6 address with or without brackets
    (``::1``, ``[::1]``), kept without them."""
    text = parse_text(value).strip()
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1]
    if not text or any(char in text for char in "[]/ ") or not text.isprintable():
        raise ValueError("expected a host name or an IP address (IPv6 with or without [ ])")
    return text


def parse_header_text(value: Any) -> str:
    """Text sent in an HTTP header as it is (a token): no control characters, which no header
    may carry. Said without the value, which is a secret."""
    text = parse_text(value)
    if "\n" in text or "\r" in text:
        raise ValueError(
            "contains a line break, which no HTTP header may carry (often the trailing newline "
            "of the file the secret was read from): remove it"
        )
    if any(ord(char) < 0x20 or ord(char) == 0x7F for char in text):
        raise ValueError("contains a control character, which no HTTP header may carry")
    return text
