"""The optional compiled ``otel_luna._native`` in what pip installs: the wheel has the built
extension and none of its C sources; the sdist has the sources (``native/``, Ryu with its
licence) and builds the same wheel; where the compiler cannot run, the install still succeeds
and otel-luna runs on the pure-Python code.

The wheel of the checkout and the sdist are built once for the module (``pip wheel`` and the
pinned build backend, as ``python -m build`` calls it); every wheel built from the sdist is built
from a tree of its own (:func:`~tests.support.wheelvenv.unpack_sdist`)."""

from __future__ import annotations

import json
import os
import subprocess
import sysconfig
import tarfile
import textwrap
import zipfile
from pathlib import Path

import pytest

from tests.support.wheelvenv import (
    ROOT,
    build_sdist,
    build_wheel,
    fresh_venv,
    unpack_sdist,
)

pytestmark = pytest.mark.slow  # pip builds (and installs) in child processes

#: The extension's file in a wheel for this interpreter.
NATIVE_FILE = "otel_luna/_native" + sysconfig.get_config_var("EXT_SUFFIX")
#: What a compiler that cannot compile looks like to setuptools.
NO_COMPILER = {"CC": "/bin/false"}

#: Run by the venv's python: one SERVER span exported with otel_luna.testing's exporter; prints
#: where otel_luna and its extension come from and the lines written, as JSON.
EXPORT_A_SPAN = textwrap.dedent(
    """
    import importlib.util, json

    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.trace import SpanKind

    import otel_luna
    from otel_luna import _compiled
    from otel_luna.testing import in_memory_exporter

    exporter, sink = in_memory_exporter()
    provider = TracerProvider(
        resource=Resource.create({"service.name": "svc"}), shutdown_on_exit=False
    )
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    attributes = {"http.method": "GET", "http.route": "/r", "http.status_code": 200}
    with provider.get_tracer("t").start_as_current_span(
        "GET /r", kind=SpanKind.SERVER, attributes=attributes
    ):
        pass
    provider.shutdown()
    print(json.dumps({
        "file": otel_luna.__file__,
        "native": repr(_compiled.NATIVE),
        "found": importlib.util.find_spec("otel_luna._native") is not None,
        "lines": sink.lines,
    }))
    """
)


def wheel_names(wheel: Path) -> set[str]:
    """The files of ``wheel``, its ``.dist-info`` left out."""
    with zipfile.ZipFile(wheel) as archive:
        return {name for name in archive.namelist() if ".dist-info/" not in name}


@pytest.fixture(scope="module")
def tree_wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel of this checkout (a copy of its sources, built by ``pip wheel``)."""
    return build_wheel(tmp_path_factory.mktemp("tree"))


@pytest.fixture(scope="module")
def sdist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The sdist of this checkout."""
    return build_sdist(tmp_path_factory.mktemp("sdist"))


def test_the_wheel_has_the_extension_and_no_c_source(tree_wheel: Path) -> None:
    """The wheel built from the source tree holds ``otel_luna/_native*.so``, built for this
    interpreter (a platform tag, not ``none-any``), and no C source or header: neither
    ``native/`` nor a ``.c``/``.h`` inside the package."""
    names = wheel_names(tree_wheel)
    assert NATIVE_FILE in names
    assert [name for name in names if name.startswith("otel_luna/_native.")] == [NATIVE_FILE]
    assert not [name for name in names if name.endswith((".c", ".h")) or "native/" in name]
    assert "otel_luna/py.typed" in names
    assert not tree_wheel.name.endswith("-none-any.whl"), tree_wheel.name


def test_the_sdist_has_the_c_sources(sdist: Path) -> None:
    """The sdist holds every file of ``native/`` (``_native.c``, its headers, the vendored Ryu
    with its Boost licence) and ``setup.py``, which builds them; no compiled file."""
    top = sdist.name.removesuffix(".tar.gz")
    with tarfile.open(sdist) as archive:
        files = {member.name for member in archive.getmembers() if member.isfile()}
    native = {
        path.relative_to(ROOT).as_posix()
        for path in (ROOT / "native").rglob("*")
        if path.is_file() and "__pycache__" not in path.parts
    }
    assert {
        "native/_native.c",
        "native/line.h",
        "native/encode_point.h",
        "native/sdk_spans.h",
        "native/ryu/d2s.c",
        "native/ryu/ryu.h",
        "native/ryu/LICENSE-Boost",
    } <= native
    shipped = {name.removeprefix(top + "/") for name in files}
    assert native <= shipped, sorted(native - shipped)
    assert {"setup.py", "MANIFEST.in", "pyproject.toml", "README.md", "PKG-INFO"} <= shipped
    assert not [name for name in shipped if name.endswith((".so", ".pyd", ".o"))]


def test_a_wheel_built_from_the_sdist_has_the_extension(
    sdist: Path, tree_wheel: Path, tmp_path: Path
) -> None:
    """The sdist's wheel is the source tree's: the same files, the extension among them."""
    tree = unpack_sdist(sdist, tmp_path / "unpacked")
    wheel = build_wheel(tmp_path, source=tree)
    assert NATIVE_FILE in wheel_names(wheel)
    assert wheel_names(wheel) == wheel_names(tree_wheel)


def test_without_a_compiler_the_install_runs_on_pure_python(
    sdist: Path, tree_wheel: Path, tmp_path: Path
) -> None:
    """With ``CC=/bin/false`` the wheel built from the sdist is the same without the extension
    (setup.py's ``optional=True``); installed in a fresh venv with ``pip install otel-luna``,
    ``otel_luna._compiled.NATIVE`` is None there and the exporter writes a span's line."""
    tree = unpack_sdist(sdist, tmp_path / "unpacked")
    wheel = build_wheel(tmp_path / "build", source=tree, env={**os.environ, **NO_COMPILER})
    assert wheel_names(wheel) == wheel_names(tree_wheel) - {NATIVE_FILE}

    venv = fresh_venv(tmp_path, wheel=wheel)
    env = {**venv.env, **NO_COMPILER}
    assert "OTEL_LUNA_PURE_PYTHON" not in env  # pure Python because nothing was compiled
    installed = subprocess.run(
        ["pip", "install", "--quiet", "otel-luna"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert installed.returncode == 0, installed.stdout + installed.stderr
    done = subprocess.run(
        [str(venv.bin / "python"), "-c", EXPORT_A_SPAN],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    shown = json.loads(done.stdout)
    assert shown["file"].startswith(str(venv.path)), shown  # the installed copy
    assert (shown["native"], shown["found"]) == ("None", False)
    (line,) = shown["lines"]
    assert line.startswith("requests,route=GET:/r,service=svc,status_code=200 "), line
    assert "execution_time=" in line
