"""``pip install otel-luna`` is the core: no receiver, report or demo dependencies, and an add-on
command whose extra is missing says which extra to install, in one line, exit 2.

The fast tests block the extras' modules with a meta-path finder in a subprocess; the slow one
installs the wheel of this checkout in a fresh venv, as a user does, and runs the README's
in-app quick start in it (against a file, so no database is needed)."""

from __future__ import annotations

import importlib
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import otel_luna.serve
from otel_luna import _cli as cli
from tests.e2e.test_quickstart import run_quick_start
from tests.support.wheelvenv import ROOT, fresh_venv


def every_extra_module() -> list[str]:
    """The modules of every add-on's extra (each add-on's ``_command.EXTRA_MODULES``)."""
    return sorted(
        {
            module
            for package in cli.ADDONS.values()
            for module in importlib.import_module(package + "._command").EXTRA_MODULES
        }
    )


#: What ``otel-luna serve`` says when grpc, aiohttp or protobuf is not installed.
SERVE_LINE = "otel-luna serve needs the serve extra: pip install 'otel-luna[serve]'"
DEMO_LINE = "otel-luna demo needs the demo extra: pip install 'otel-luna[demo]'"
PNG_LINE = "otel-luna report --png needs the report extra: pip install 'otel-luna[report]'"
#: Distributions only the extras bring (names as ``pip list`` prints them, lower case).
EXTRAS_ONLY = (
    "aiohttp",
    "grpcio",
    "protobuf",
    "opentelemetry-proto",
    "googleapis-common-protos",
    "backports-zstd",
    "backports.zstd",
    "matplotlib",
    "opentelemetry-distro",
)

#: ``python -c`` program: where otel_luna is imported from, and its compiled extension.
SHOW_NATIVE = (
    "import otel_luna, otel_luna._compiled as c; print(otel_luna.__file__); print(c.NATIVE)"
)

#: ``python -c`` program: block the modules named in argv[1] (comma-separated), as if they were
#: not installed, then run ``otel-luna`` with the rest of argv.
BLOCKED_RUN = textwrap.dedent(
    """
    import importlib.abc, sys

    blocked = sys.argv[1].split(",")

    class Absent(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if any(name == each or name.startswith(each + ".") for each in blocked):
                raise ModuleNotFoundError(f"No module named {name!r}", name=name)
            return None

    sys.meta_path.insert(0, Absent())
    from otel_luna._cli import main

    raise SystemExit(main(sys.argv[2:]))
    """
)


def run_blocked(blocked: str, *argv: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", BLOCKED_RUN, blocked, *argv],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize(
    ("blocked", "argv", "line"),
    [
        ("grpc", ["serve"], SERVE_LINE),
        ("aiohttp", ["serve", "--grpc-port", "0", "--http-port", "0"], SERVE_LINE),
        ("google", ["serve"], SERVE_LINE),
        ("opentelemetry.proto", ["serve", "--workers", "2"], SERVE_LINE),
        ("opentelemetry.distro", ["demo"], DEMO_LINE),
        ("aiohttp", ["demo", "--requests", "1"], DEMO_LINE),
        ("matplotlib", ["report", "luna", "--file", "points.lp", "--png", "a.png"], PNG_LINE),
    ],
)
def test_a_command_without_its_extra_names_it_in_one_line(
    blocked: str, argv: list[str], line: str, tmp_path: Path
) -> None:
    """serve, demo and report --png with a module of their extra missing print one line naming
    the extra on standard error, nothing on standard output, and exit 2."""
    done = run_blocked(blocked, *argv, cwd=tmp_path)
    assert (done.returncode, done.stdout, done.stderr) == (2, "", line + "\n")


def test_the_core_commands_and_a_text_report_need_no_extra(tmp_path: Path) -> None:
    """With every extra's modules missing, status, spool and report without --png still run."""
    every = ",".join(every_extra_module())
    (tmp_path / "points.lp").write_text("requests,service=s,route=GET:/ execution_time=1 1\n")
    spool = tmp_path / "spool"
    spool.mkdir()
    for argv in (
        ["status", str(spool)],
        ["spool", "list", "--spool-dir", str(spool)],
        ["report", "luna", "--file", "points.lp"],
    ):
        done = run_blocked(every, *argv, cwd=tmp_path)
        assert done.returncode == 0, (argv, done.stdout + done.stderr)
        assert "extra" not in done.stderr


def test_importing_the_core_loads_no_module_of_an_extra() -> None:
    """Every core package imported (and the exporters built) loads none of the extras'
    modules: grpc, aiohttp, protobuf, matplotlib, ... stay out of an app's process."""
    program = textwrap.dedent(
        """
        import sys
        import otel_luna, otel_luna.delivery, otel_luna.encoding, otel_luna.ingest
        import otel_luna.mapping, otel_luna.profiles, otel_luna.schema, otel_luna.selfmetrics
        import otel_luna.settings, otel_luna.sinks, otel_luna.testing, otel_luna.watchdog
        from otel_luna._cli import build_parser

        build_parser()
        exporter, sink = otel_luna.testing.in_memory_exporter()
        exporter.shutdown()
        print("\\n".join(sorted(sys.modules)))
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", program], capture_output=True, text=True, timeout=60, check=True
    )
    # backports.zstd: urllib3 imports it when it is there (for zstd responses)
    extras = [module for module in every_extra_module() if module != "backports.zstd"]
    loaded = [name for name in done.stdout.split() if cli._needs(name, extras)]
    assert loaded == []


def test_an_extra_installed_in_part_is_named_too(monkeypatch: pytest.MonkeyPatch) -> None:
    """A ModuleNotFoundError of one of the extra's modules while the command runs (a submodule
    gone) is the same one line, exit 2."""
    monkeypatch.setattr(cli, "_missing", lambda modules: None)

    def serve(args: object) -> int:
        raise ModuleNotFoundError("No module named 'grpc._cython'", name="grpc._cython")

    monkeypatch.setattr(otel_luna.serve, "run_command", serve)
    assert cli.main(["serve"]) == cli.EXIT_USAGE


def test_another_import_error_is_not_taken_for_a_missing_extra(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An ImportError of a module outside the extra is a bug: it propagates, no extra named."""

    def serve(args: object) -> int:
        raise ModuleNotFoundError("No module named 'otel_luna.gone'", name="otel_luna.gone")

    monkeypatch.setattr(otel_luna.serve, "run_command", serve)
    with pytest.raises(ModuleNotFoundError, match=r"otel_luna\.gone"):
        cli.main(["serve"])


def test_the_core_wheel_installs_no_extra_and_runs_the_quick_start(tmp_path: Path) -> None:
    """The wheel installed with plain ``pip install otel-luna`` in a fresh venv brings no
    aiohttp, grpcio, protobuf or matplotlib; ``otel-luna serve`` (and ``python -m otel_luna
    serve``) print the one line and exit 2; the README's in-app quick start then writes the
    LUNA series (to a file), the wheel's compiled ``otel_luna._native`` loaded."""
    venv = fresh_venv(tmp_path)
    installed = subprocess.run(
        ["pip", "install", "--quiet", "otel-luna"],
        cwd=tmp_path,
        env=venv.env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert installed.returncode == 0, installed.stdout + installed.stderr
    listed = subprocess.run(
        ["pip", "list", "--format=freeze"], env=venv.env, capture_output=True, text=True, check=True
    ).stdout
    names = {line.split("==")[0].lower() for line in listed.splitlines()}
    assert "otel-luna" in names and "opentelemetry-sdk" in names
    assert not names & set(EXTRAS_ONLY), listed

    for command in (["otel-luna", "serve"], ["python", "-m", "otel_luna", "serve"]):
        done = subprocess.run(
            [str(venv.bin / command[0]), *command[1:]],
            cwd=tmp_path,
            env=venv.env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert (done.returncode, done.stdout, done.stderr) == (2, "", SERVE_LINE + "\n")

    points = tmp_path / "quickstart.lp"
    stderr = run_quick_start(venv, tmp_path / "work", points.as_uri(), "unused")
    assert "Traceback" not in stderr and "not found in entry point" not in stderr, stderr
    lines = points.read_text().splitlines()
    measurements = {line.split(",", 1)[0] for line in lines}
    assert measurements == {"requests", "errors", "usages_statistic", "licensing"}, lines
    assert sum(line.startswith("requests,") for line in lines) == 4
    where, native = subprocess.run(
        [str(venv.bin / "python"), "-c", SHOW_NATIVE],
        cwd=tmp_path,
        env=venv.env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines()
    assert str(ROOT) not in where  # the installed copy, not this checkout's
    # ... with the compiled common cases the wheel was built with (tests/e2e/test_wheel_native.py)
    assert native.startswith("<module 'otel_luna._native' from ") and str(venv.path) in native
