"""A fresh virtual environment that installs otel-luna as a user does: from its wheel, with pip.

:func:`fresh_venv` builds the wheel of this checkout (only what a wheel is made of is copied to
a temporary directory first, so the checkout gets no ``build/``), creates a venv and returns the
environment in which ``pip install otel-luna`` resolves to that wheel, every other package pinned
by ``constraints.txt`` (pip's cache makes the installs quick). Used by ``test_quickstart.py``,
``test_wheel_core.py``, ``test_wheel_demo.py`` and ``test_wheel_native.py``, which also builds
the sdist (:func:`build_sdist`) and wheels from it (:func:`unpack_sdist`, :func:`build_wheel`).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

ROOT = Path(__file__).resolve().parent.parent.parent
#: What the wheel and the sdist are built from: setup.py builds the optional compiled
#: ``otel_luna._native`` from ``native/``, which MANIFEST.in puts in the sdist.
SOURCES = ("pyproject.toml", "setup.py", "MANIFEST.in", "README.md", "otel_luna", "native")
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


def copy_sources(dest: Path) -> Path:
    """A copy in ``dest`` of :data:`SOURCES`, without bytecode or an extension built in place
    (``otel_luna/_native*.so`` of an editable install): what is compiled comes from the build."""
    dest.mkdir(parents=True)
    skip = shutil.ignore_patterns("__pycache__", "*.so", "*.pyd")
    for name in SOURCES:
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, dest / name, ignore=skip)
        else:
            shutil.copy2(ROOT / name, dest / name)
    return dest


def build_wheel(
    out: Path, source: Path | None = None, env: Mapping[str, str] | None = None
) -> Path:
    """The wheel of ``source`` (by default a copy of this checkout), built in ``out`` by
    ``pip wheel`` (``env``: its environment, by default the test's)."""
    if source is None:
        source = copy_sources(out / "source")
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
        env=None if env is None else dict(env),
    )
    (wheel,) = wheels.glob("otel_luna-*.whl")
    return wheel


def build_sdist(out: Path) -> Path:
    """The sdist of this checkout, built in ``out`` as ``python -m build --sdist`` builds it:
    the build backend of pyproject.toml's ``[build-system]``, its ``requires`` (the pinned
    setuptools) installed by pip into a directory of their own, called in a copy of the sources
    by an interpreter that sees nothing else (``-S``: no site-packages)."""
    source = copy_sources(out / "source")
    system = tomllib.loads((ROOT / "pyproject.toml").read_text())["build-system"]
    backend = out / "backend"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--target", str(backend)]
        + system["requires"],
        check=True,
        timeout=PIP_TIMEOUT,
    )
    sdists = out / "sdist"
    program = "import importlib, sys; importlib.import_module(sys.argv[1]).build_sdist(sys.argv[2])"
    env = {**clean_env(), "PYTHONPATH": str(backend)}
    subprocess.run(
        [sys.executable, "-S", "-c", program, system["build-backend"], str(sdists)],
        cwd=source,
        env=env,
        check=True,
        timeout=120,
    )
    (sdist,) = sdists.glob("otel_luna-*.tar.gz")
    return sdist


def unpack_sdist(sdist: Path, dest: Path) -> Path:
    """The source tree of ``sdist``, unpacked as pip unpacks it to build the wheel, in
    ``dest/tree`` (``dest`` new). A tree per build: pip builds in place, and setuptools takes an
    extension left in ``build/`` by another build for up to date. Named ``tree``: pip keeps in
    its cache the wheel it builds from a path whose last part looks like name-version (the
    ``.tar.gz``, or the tree as unpacked), and installs that wheel without building when it
    finds the path again by name (``PIP_FIND_LINKS``): a later run with the same ``--basetemp``
    would test the wheel of older sources."""
    with tarfile.open(sdist) as archive:
        if hasattr(tarfile, "data_filter"):
            archive.extractall(dest, filter="data")
        else:  # pragma: no cover - Python without the extraction filters
            archive.extractall(dest)  # our own sdist
    (top,) = dest.iterdir()
    return top.rename(dest / "tree")


def clean_env() -> dict[str, str]:
    """The test's environment without OTEL_* settings, virtual environment or PYTHONPATH."""
    drop = ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")
    return {k: v for k, v in os.environ.items() if not k.startswith("OTEL_") and k not in drop}


def fresh_venv(tmp: Path, wheel: Path | None = None) -> Venv:
    """A new venv under ``tmp`` with nothing but pip, and the wheel to install: ``wheel`` (alone
    in its directory) or, by default, the wheel of this checkout built now."""
    if wheel is None:
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
