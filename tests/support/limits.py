"""Sizes the session fixtures (``tests/conftest.py``) give their servers and filesystems."""

from __future__ import annotations

#: ``max-body-size`` of the ``influxdb1_small_body`` server.
SMALL_BODY_BYTES = 4096

#: Size of the small filesystem the full-disk tests spool to.
FULL_DISK_BYTES = 256 * 1024
