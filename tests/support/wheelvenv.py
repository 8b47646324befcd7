"""A fresh virtual environment that installs otel-luna as a user does: from its wheel, with pip.

:func:`fresh_venv` builds the wheel of this checkout (only what a wheel is made of is copied to
a temporary directory first, so the checkout gets no ``build/``), creates a venv and returns the
environment in which ``pip install otel-luna`` resolves to that wheel, every other package pinned
by ``constraints.txt`` (pip's cache makes the installs quick). Used by ``test_quickstart.py`` and
``test_wheel_demo.py``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent.parent
#: What the wheel is built from.
SOURCES = ("pyproject.toml", "README.md", "otel_luna")
#: Seconds pip may take for one install (the first one, with a cold cache, downloads).
PIP_TIMEOUT = 600


@dataclass(frozen=True)
class Venv:
    """A venv in :attr:`path`; :attr:`env` has its ``bin`` first on ``PATH`` and pip pointed at
    the wheel (``PIP_FIND_LINKS``) and at the pins (``PIP_CONSTRAINT``)."""

    path: Path
    wheel: Path
    env: dict[str, str]

    @property
    def bin(self) -> Path:
        return self.path / "bin"


def build_wheel(out: Path) -> Path:
    """The wheel of this checkout, built in ``out``."""
    source = out / "source"
    source.mkdir(parents=True)
    for name in SOURCES:
        if (ROOT / name).is_dir():
            skip = shutil.ignore_patterns("__pycache__")
            shutil.copytree(ROOT / name, source / name, ignore=skip)
        else:
            shutil.copy2(ROOT / name, source / name)
    wheels = out / "wheels"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--quiet",
            "--no-deps",
            "-w",
            str(wheels),
            str(source),
        ],
        check=True,
        timeout=PIP_TIMEOUT,
    )
    (wheel,) = wheels.glob("otel_luna-*.whl")
    return wheel


def clean_env() -> dict[str, str]:
    """The test's environment without OTEL_* settings, virtual environment or PYTHONPATH."""
    drop = ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")
    return {k: v for k, v in os.environ.items() if not k.startswith("OTEL_") and k not in drop}


def fresh_venv(tmp: Path) -> Venv:
    """A new venv under ``tmp`` with nothing but pip, and the wheel to install."""
    wheel = build_wheel(tmp / "build")
    path = tmp / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(path)], check=True, timeout=120)
    constraints = tmp / "constraints.txt"
    # The pins, and otel-luna at the version of the wheel just built (found by PIP_FIND_LINKS).
    version = wheel.name.split("-")[1]
    constraints.write_text((ROOT / "constraints.txt").read_text() + f"otel-luna=={version}\n")
    env = clean_env()
    env["PATH"] = f"{path / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    env["VIRTUAL_ENV"] = str(path)
    env["PIP_FIND_LINKS"] = f"{env.get('PIP_FIND_LINKS', '')} {wheel.parent}".strip()
    env["PIP_CONSTRAINT"] = str(constraints)
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    return Venv(path, wheel, env)
