"""Credentials out of every text that leaves the process: messages, log lines, dead letters.

:func:`redact` masks what looks like a credential wherever it appears — the userinfo of a URL
(``http://admin:PASS@host`` → ``http://***@host``), an ``Authorization`` header a server echoes,
``Basic``/``Bearer``/``Token`` credentials, ``p=``/``password=``/``token=`` query parameters —
and every value in ``secrets`` (the configured password and token, and the base64 of
``user:password`` that basic authentication sends; see :attr:`Settings.secrets`).
"""

from __future__ import annotations

import re
from collections.abc import Iterable

MASK = "***"

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
    # Longest first, so a secret that contains another is masked whole.
    for secret in sorted(filter(None, secrets), key=len, reverse=True):
        text = text.replace(secret, MASK)
    for pattern, replacement in _PATTERNS:
        text = pattern.sub(replacement, text)
    return text
