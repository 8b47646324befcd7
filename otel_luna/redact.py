"""Credentials out of every text that leaves the process: messages, log lines, dead letters.

:func:`redact` masks what looks like a credential wherever it appears — the userinfo of a URL
(``http://admin:PASS@host`` → ``http://***@host``), an ``Authorization`` header a server echoes,
``Basic``/``Bearer``/``Token`` credentials, ``p=``/``password=``/``token=`` query parameters —
and every value in ``secrets`` (the configured password and token, and the base64 of
``user:password`` that basic authentication sends, see :attr:`Settings.secrets`), also as a
server may echo it: any of its characters other than ASCII letters and digits percent-encoded
(``S3cr3t-P%40ss``, either case of hex, ``+`` for a space), JSON-escaped (``S3cr3t-P\\u0040ss``,
``\\/``), or as an HTML character reference — each character on its own, so a reply escaping
only some of them is masked too.
"""

from __future__ import annotations

import functools
import re
from base64 import b64encode, urlsafe_b64encode
from collections.abc import Iterable

__all__ = ["MASK", "basic_credentials", "credential_forms", "printable", "redact"]

MASK = "***"

_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def printable(text: str, *, lines: bool = False) -> str:
    """``text`` with every control character (terminal escapes, bidirectional overrides) shown
    as ``\\xNN`` or ``\\uNNNN``: for what is read from disk or a database and then printed
    or logged (``otel-luna status``, ``spool``, ``report``). With ``lines``, newlines are kept
    (a text of several lines)."""
    return _CONTROL.sub(
        lambda found: found.group() if lines and found.group() == "\n" else _escaped(found.group()),
        text,
    )


def _escaped(char: str) -> str:
    return ascii(char)[1:-1]


_PATTERNS = (
    # scheme://user:password@host — up to the last "@" before the path
    (re.compile(r"(?P<keep>\b[A-Za-z][A-Za-z0-9+.-]*://)[^/\s?#]*@"), rf"\g<keep>{MASK}@"),
    # an echoed header: Authorization: <anything up to the end of the value>
    (
        re.compile(
            r"(?P<keep>\b(?:proxy-)?authorization[\"']?\s*[:=]\s*[\"']?)[^\"'\r\n,;}]+", re.I
        ),
        rf"\g<keep>{MASK}",
    ),
    # credentials after an authentication scheme, wherever they appear
    (re.compile(r"(?P<keep>\b(?:Basic|Bearer|Token)\s+)[A-Za-z0-9._~+/-]+=*"), rf"\g<keep>{MASK}"),
    # credentials in a query string (InfluxDB 1.x accepts u=&p=)
    (
        re.compile(r"(?P<keep>[?&](?:p|password|token|access_token)=)[^&\s\"'#]+", re.I),
        rf"\g<keep>{MASK}",
    ),
)


def redact(text: str, secrets: Iterable[str] = ()) -> str:
    """``text`` with credentials and every non-empty value of ``secrets`` replaced by ``***``."""
    secrets_pattern = _secrets_pattern(frozenset(filter(None, secrets)))
    if secrets_pattern is not None:
        text = secrets_pattern.sub(MASK, text)
    for pattern, replacement in _PATTERNS:
        text = pattern.sub(replacement, text)
    return text


def _hex(number: int, width: int) -> str:
    """``number`` in hexadecimal, matching either case."""
    return "".join(f"[{d}{d.upper()}]" if d.isalpha() else d for d in f"{number:0{width}x}")


def _character(char: str) -> str:
    """A pattern for ``char`` as it is or as an echo may encode it."""
    if char.isascii() and char.isalnum():
        return char
    forms = [re.escape(char), "\\\\" + re.escape(char)]  # as is; JSON's \" \\ \/
    forms.append("".join(f"%{_hex(byte, 2)}" for byte in char.encode("utf-8", "surrogatepass")))
    units = char.encode("utf-16-be", "surrogatepass")
    codes = [int.from_bytes(units[i : i + 2], "big") for i in range(0, len(units), 2)]
    forms.append("".join(f"\\\\u{_hex(code, 4)}" for code in codes))
    forms += [f"&#0*{ord(char)};", f"&#[xX]0*{_hex(ord(char), 1)};"]
    if char == " ":
        forms.append("\\+")
    return "(?:" + "|".join(forms) + ")"


@functools.lru_cache(maxsize=64)
def _secrets_pattern(secrets: frozenset[str]) -> re.Pattern[str] | None:
    """One pattern for all ``secrets`` in every form :func:`_character` allows; longest first,
    so a secret that contains another is masked whole."""
    if not secrets:
        return None
    ordered = sorted(secrets, key=lambda secret: (-len(secret), secret))
    # Case-insensitively: an echo may change the case (masking a little more is harmless).
    pattern = "|".join("".join(map(_character, secret)) for secret in ordered)
    return re.compile(pattern, re.IGNORECASE)


def basic_credentials(username: str, password: str) -> list[str]:
    """The base64 of ``username:password`` as basic authentication sends it, and as an echo may
    show it: without its ``=`` padding, and in the URL-safe alphabet."""
    pair = f"{username}:{password}".encode()
    forms = [b64encode(pair).decode(), urlsafe_b64encode(pair).decode()]
    forms += [form.rstrip("=") for form in forms]
    return list(dict.fromkeys(forms))


def credential_forms(
    username: str | None, passwords: Iterable[str], tokens: Iterable[str]
) -> tuple[str, ...]:
    """Every form of these credentials for :func:`redact` to mask: each password and token as
    it is and base64-encoded on its own without padding (a server may echo a secret so), and
    each password's :func:`basic_credentials` with ``username``. Blank values are left out."""
    passwords = [password for password in passwords if password.strip()]
    values = [*passwords, *(token for token in tokens if token.strip())]
    values += [
        b64encode(value.encode(errors="surrogatepass")).decode().rstrip("=") for value in values
    ]
    if username:
        for password in passwords:
            values += basic_credentials(username, password)
    return tuple(dict.fromkeys(value for value in values if value.strip()))
