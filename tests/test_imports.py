"""The package's imports, read from the source (every ``import``, function-level and
``TYPE_CHECKING`` ones included), follow the layout of docs/architecture.md:

* layers, bottom up: ``schema`` → ``mapping``, ``encoding`` (independent of each other) →
  ``profiles`` → ``sinks`` → ``delivery`` → ``_lifecycle`` → ``ingest`` → the exporters
  (``otel_luna/__init__``, ``_exporter``, ``_helpers``, ``watchdog``, ``testing``) → ``_cli``;
  the utilities ``outcomes``, ``redact``, ``settings``, ``selfmetrics``, ``_attributes`` and
  ``_files`` may be imported from any layer and import only each other. No import goes up;
* no cycle between packages (add-ons included);
* the core never imports an add-on (``serve``, ``report``, ``demo``, ``examples``), except
  ``_cli`` inside the function that runs the command;
* an add-on imports from the core (and from another add-on) only names in a public
  package's ``__all__`` — never a private module such as ``otel_luna.sinks._file``;
* the core imports no third-party module but OpenTelemetry's API and SDK, urllib3 and tomli
  (``pip install otel-luna`` brings nothing else).

:data:`KNOWN_VIOLATIONS` lists those still open (each with the area that mends it); any other
fails, and a mended one must be taken off the list.
"""

from __future__ import annotations

import ast
import importlib
import re
import sys
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "otel_luna"

#: Violations still open on this branch, by the area that mends them (issue 19). The lead
#: empties this after merging; test_no_known_violation_is_mended_already says which are gone.
KNOWN_VIOLATIONS: set[str] = set()

#: Where each top-level part of the core sits: (area, layer). Areas of one layer must not
#: import each other; utilities (layer 0) may be imported by every layer.
AREAS: dict[str, tuple[str, int]] = {
    "outcomes": ("outcomes", 0),
    "redact": ("redact", 0),
    "settings": ("settings", 0),
    "selfmetrics": ("selfmetrics", 0),
    "_attributes": ("attributes", 0),
    "_files": ("files", 0),
    "_fork": ("fork", 0),
    "_compiled": ("compiled", 0),
    "_native": ("compiled", 0),  # the extension built from native/ (setup.py)
    "schema": ("schema", 1),
    "mapping": ("mapping", 2),
    "encoding": ("encoding", 2),
    "profiles": ("profiles", 3),
    "sinks": ("sinks", 4),
    "delivery": ("delivery", 5),
    "_lifecycle": ("lifecycle", 6),
    "ingest": ("ingest", 7),
    "": ("exporters", 8),  # otel_luna/__init__.py
    "_exporter": ("exporters", 8),
    "_helpers": ("exporters", 8),
    "watchdog": ("exporters", 8),
    "testing": ("exporters", 8),
    "_cli": ("cli", 9),
    "__main__": ("cli", 9),
}
UTILITY_LAYER = 0
NATIVE_MODULE = "otel_luna._native"
ADD_ONS = ("serve", "report", "demo", "examples")
#: Third-party modules the core may import (the core's dependencies in pyproject.toml).
CORE_THIRD_PARTY = ("opentelemetry", "urllib3", "tomli")
NOT_CORE_THIRD_PARTY = ("opentelemetry.proto",)


@dataclass(frozen=True)
class Import:
    importer: str  # dotted module name
    target: str  # the module imported (a submodule when ``from package import submodule``)
    names: tuple[str, ...]  # names taken from ``target`` (empty: the module itself)
    in_function: bool
    line: int


def module_name(path: Path) -> str:
    parts = ["otel_luna", *path.relative_to(PACKAGE).with_suffix("").parts]
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def is_module(dotted: str) -> bool:
    """Whether ``dotted`` (under otel_luna) is a module or package of the source tree (or the
    compiled one, built from ``native/``)."""
    if dotted == NATIVE_MODULE:
        return True
    relative = Path(*dotted.split(".")[1:]) if "." in dotted else Path()
    return (PACKAGE / relative).with_suffix(".py").is_file() or (
        PACKAGE / relative / "__init__.py"
    ).is_file()


def read_imports() -> list[Import]:
    """Every import statement of every module of the package."""
    found: list[Import] = []
    for path in sorted(PACKAGE.rglob("*.py")):
        importer = module_name(path)
        is_package = path.name == "__init__.py"
        tree = ast.parse(path.read_text(), str(path))
        functions = [
            node
            for node in ast.walk(tree)
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
        ]
        nested = {
            id(inner)
            for function in functions
            for inner in ast.walk(function)
            if inner is not function
        }
        for node in ast.walk(tree):
            in_function = id(node) in nested
            if isinstance(node, ast.Import):
                for alias in node.names:
                    found.append(Import(importer, alias.name, (), in_function, node.lineno))
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = importer.split(".")
                    anchor = anchor[: len(anchor) - node.level + (1 if is_package else 0)]
                    base = ".".join([*anchor, *([base] if base else [])])
                names = []
                for alias in node.names:
                    if base.startswith("otel_luna") and is_module(f"{base}.{alias.name}"):
                        submodule = f"{base}.{alias.name}"
                        found.append(Import(importer, submodule, (), in_function, node.lineno))
                    else:
                        names.append(alias.name)
                if names:
                    found.append(Import(importer, base, tuple(names), in_function, node.lineno))
    return found


def top(dotted: str) -> str:
    """The top-level part of the package ``dotted`` belongs to (``""`` for otel_luna)."""
    parts = dotted.split(".")
    return parts[1] if len(parts) > 1 else ""


def area(dotted: str) -> str:
    part = top(dotted)
    if part in ADD_ONS:
        return part
    return AREAS[part][0]


def is_private(dotted: str) -> bool:
    return any(part.startswith("_") for part in dotted.split(".")[1:])


def violations() -> set[str]:
    found: set[str] = set()
    imports = read_imports()
    graph: dict[str, set[str]] = defaultdict(set)
    for each in imports:
        if not each.target.startswith("otel_luna"):
            if top(each.importer) not in ADD_ONS:
                found |= third_party(each)
            continue
        source, target = area(each.importer), area(each.target)
        if source != target:
            graph[source].add(target)
        importer_top, target_top = top(each.importer), top(each.target)
        if importer_top in ADD_ONS:
            found |= addon_import(each)
        elif target_top in ADD_ONS:
            if not (importer_top == "_cli" and each.in_function):
                found.add(f"{each.importer} -> {each.target}: core imports an add-on")
        elif source != target:
            source_layer, target_layer = AREAS[importer_top][1], AREAS[target_top][1]
            if target_layer > source_layer or (
                source_layer == UTILITY_LAYER and target_layer != UTILITY_LAYER
            ):
                found.add(f"{each.importer} -> {each.target}: layer up")
            elif target_layer == source_layer != UTILITY_LAYER:
                found.add(f"{each.importer} -> {each.target}: same layer")
    for source, targets in graph.items():
        for target in targets:
            if reaches(graph, target, source):
                found.add(f"cycle: {source} -> {target}")
    return found


def reaches(graph: dict[str, set[str]], start: str, goal: str) -> bool:
    seen, todo = {start}, [start]
    while todo:
        for step in graph.get(todo.pop(), ()):
            if step == goal:
                return True
            if step not in seen:
                seen.add(step)
                todo.append(step)
    return False


def addon_import(each: Import) -> set[str]:
    """An add-on's import of ``otel_luna``: only public modules, only names in ``__all__``."""
    own = ".".join(each.importer.split(".")[:2])
    if each.target == own or each.target.startswith(own + "."):
        return set()
    if is_private(each.target):
        return {f"{each.importer} -> {each.target}: private module"}
    module = importlib.import_module(each.target)
    public = getattr(module, "__all__", None)
    return {
        f"{each.importer} -> {each.target}.{name}: not in __all__"
        for name in each.names
        if (name not in public if public is not None else name.startswith("_"))
    }


def third_party(each: Import) -> set[str]:
    """A core module's import of a module outside otel_luna: the standard library or a core
    dependency only."""
    root = each.target.split(".")[0]
    if root in sys.stdlib_module_names or root == "__future__":
        return set()
    allowed = root in CORE_THIRD_PARTY and not any(
        each.target == other or each.target.startswith(other + ".")
        for other in NOT_CORE_THIRD_PARTY
    )
    return set() if allowed else {f"{each.importer} -> {each.target}: not a core dependency"}


def test_every_part_of_the_package_has_a_layer() -> None:
    """Each top-level module and package is placed in a layer or is an add-on."""
    parts = {top(module_name(path)) for path in PACKAGE.rglob("*.py")}
    assert sorted(parts - set(AREAS) - set(ADD_ONS)) == []


def test_no_new_import_violation() -> None:
    """No circle, no import from a lower layer up, no add-on imported by the core, no private
    name of the core used by an add-on, no third-party module outside the core's
    dependencies — beyond :data:`KNOWN_VIOLATIONS`."""
    assert sorted(violations() - KNOWN_VIOLATIONS) == []


def test_no_known_violation_is_mended_already() -> None:
    """Each of :data:`KNOWN_VIOLATIONS` is still there: a mended one comes off the list."""
    assert sorted(KNOWN_VIOLATIONS - violations()) == []


def test_the_rules_see_function_level_imports() -> None:
    """An import inside a function counts (and is told apart from a module-level one)."""
    found = [
        each
        for each in read_imports()
        if each.importer == "otel_luna._cli" and each.target.startswith("otel_luna.serve")
    ]
    assert found and all(each.in_function for each in found)


def test_the_rules_catch_what_they_forbid() -> None:
    """Planted imports: an add-on taking a private module or a name outside ``__all__``, and a
    core module importing grpc, are each one violation; public names and OpenTelemetry pass."""

    def planted(importer: str, target: str, *names: str) -> Import:
        return Import(importer, target, names, in_function=False, line=1)

    assert addon_import(planted("otel_luna.serve._x", "otel_luna.sinks._file", "file_path")) == {
        "otel_luna.serve._x -> otel_luna.sinks._file: private module"
    }
    assert addon_import(planted("otel_luna.report._x", "otel_luna.sinks", "file_path")) == set()
    assert addon_import(planted("otel_luna.report._x", "otel_luna.ingest", "ERROR_LOG")) == {
        "otel_luna.report._x -> otel_luna.ingest.ERROR_LOG: not in __all__"
    }
    assert addon_import(planted("otel_luna.serve._x", "otel_luna.serve._y", "z")) == set()
    assert third_party(planted("otel_luna.sinks._http", "grpc")) == {
        "otel_luna.sinks._http -> grpc: not a core dependency"
    }
    assert third_party(planted("otel_luna._exporter", "opentelemetry.proto.trace")) != set()
    assert third_party(planted("otel_luna._exporter", "opentelemetry.sdk.trace")) == set()


_DOTTED = re.compile(r"\botel_luna(?:\.[A-Za-z_]\w*)+")


def hidden_reaches(path: Path) -> set[str]:
    """What an add-on module reaches of the core's private parts without an import statement:
    a private module named in a string other than a docstring (``importlib.import_module``,
    ``__import__``, a mock's target), ``getattr(x, "_name")``, or ``module._name`` on a core
    module it imported."""
    importer = module_name(path)
    own = ".".join(importer.split(".")[:2])
    tree = ast.parse(path.read_text(), str(path))
    modules: dict[str, str] = {}  # local name -> core module it is bound to
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("otel_luna"):
                    modules[alias.asname or alias.name.split(".")[0]] = (
                        alias.name if alias.asname else "otel_luna"
                    )
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("otel_luna"):
            for alias in node.names:
                dotted = f"{node.module}.{alias.name}"
                if is_module(dotted):
                    modules[alias.asname or alias.name] = dotted
    docstrings = {
        id(node.body[0].value)
        for node in ast.walk(tree)
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
        and node.body
        and isinstance(node.body[0], ast.Expr)
        and isinstance(node.body[0].value, ast.Constant)
    }
    found: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in docstrings:
            continue
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            for dotted in _DOTTED.findall(node.value):
                if dotted != own and not dotted.startswith(own + ".") and is_private(dotted):
                    found.add(f"{importer} -> {dotted}: private module named in a string")
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id == "getattr"
            and len(node.args) >= 2
            and isinstance(node.args[1], ast.Constant)
            and isinstance(node.args[1].value, str)
            and node.args[1].value.startswith("_")
            and not node.args[1].value.startswith("__")
        ):
            found.add(f"{importer}:{node.lineno}: getattr of private {node.args[1].value!r}")
        elif (
            isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Name)
            and node.value.id in modules
            and node.attr.startswith("_")
            and not node.attr.startswith("__")
        ):
            module = modules[node.value.id]
            if module != own and not module.startswith(own + "."):
                found.add(f"{importer} -> {module}.{node.attr}: private name by attribute")
    return found


def test_no_add_on_reaches_a_private_part_without_an_import() -> None:
    """An add-on reaches the core only through public names: not through a private module
    named in a string, ``getattr`` of a private name, or an attribute of an imported module."""
    found: set[str] = set()
    for path in sorted(PACKAGE.rglob("*.py")):
        if top(module_name(path)) in ADD_ONS:
            found |= hidden_reaches(path)
    assert sorted(found) == []


def test_the_hidden_reaches_are_caught(tmp_path: Path) -> None:
    """The check above sees each way around an import statement (a module written for it)."""
    probe = PACKAGE / "serve" / "_probe_for_test_imports.py"
    probe.write_text(
        "import importlib\n"
        "import otel_luna.sinks\n"
        "from otel_luna import delivery\n"
        "importlib.import_module('otel_luna.sinks._file')\n"
        "__import__('otel_luna.delivery._spool')\n"
        "getattr(otel_luna.sinks, '_http')\n"
        "delivery._writer\n"
    )
    try:
        found = hidden_reaches(probe)
    finally:
        probe.unlink()
    assert len(found) == 4, found
