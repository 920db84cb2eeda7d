"""The house: which room of `runtime/` may import which, no import circles, small modules.

Inside `serve/`, each API dialect is a package of its own; the two share serve/'s service and
replies and never import each other. Inside `engine/`, rooms by job too (`decoding/`,
`devices/`, `media/`) over its top (the native side, the run-time defaults), their arrows one way.

Every import counts, those inside functions and under TYPE_CHECKING too: a lazy import is
still an arrow between rooms.
"""

from __future__ import annotations

import ast
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# A room may import itself and the rooms listed; the front door (runtime's top level:
# cli, options, modes) imports everything, and nothing below imports it.
ALLOWED = {
    "runtime.file": set(),
    "runtime.sources": {"runtime.file"},
    "runtime.engine": {"runtime.sources", "runtime.file"},
    "runtime.chat": {"runtime.engine", "runtime.sources", "runtime.file"},
    "runtime.serve": {"runtime.chat", "runtime.engine", "runtime.sources", "runtime.file"},
    "runtime.rpc": {"runtime.engine", "runtime.sources", "runtime.file"},
}
FRONT = "runtime"
DIALECTS = ("runtime.serve.openai", "runtime.serve.ollama")
# engine/'s rooms: each may import engine's top (backend, settings) and the rooms listed; the
# top imports none of them.
ENGINE = "runtime.engine"
ENGINE_ROOMS = {
    "runtime.engine.decoding": set(),
    "runtime.engine.devices": {"runtime.engine.decoding"},
    "runtime.engine.media": {"runtime.engine.devices", "runtime.engine.decoding"},
}
ENGINE_TOP = ["__init__.py", "backend.py", "settings.py"]
MAX_LINES = 400


def modules(root: Path) -> dict[str, Path]:
    """Dotted module name -> file, for runtime/ and packager/ under `root`."""
    found = {}
    for top in ("runtime", "packager"):
        for path in sorted((root / top).rglob("*.py")):
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    return found


def imports(path: Path, name: str, known: set[str]) -> set[str]:
    """The project modules that the module `name` at `path` imports."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(up + ([base] if base else []))
            # `from runtime.engine.decoding import model` imports runtime.engine.decoding.model
            targets = [
                f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names
            ]
        else:
            continue
        for target in targets:
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != name:
                out.add(target)
    return out


def room(module: str) -> str:
    """`runtime.engine.devices.cpu` -> `runtime.engine`; the front door's modules -> `runtime`."""
    if not module.startswith("runtime"):
        return module.split(".")[0]
    parts = module.split(".")
    candidate = ".".join(parts[:2])
    return candidate if candidate in ALLOWED else FRONT


def dialect(module: str) -> str | None:
    """`runtime.serve.ollama.routes` -> `runtime.serve.ollama`; None outside the dialects."""
    return next((d for d in DIALECTS if module == d or module.startswith(d + ".")), None)


def engine_room(module: str) -> str | None:
    """`runtime.engine.devices.gpu` -> `runtime.engine.devices`; engine's top -> `runtime.engine`;
    None outside engine/."""
    if module != ENGINE and not module.startswith(ENGINE + "."):
        return None
    candidate = ".".join(module.split(".")[:3])
    return candidate if candidate in ENGINE_ROOMS else ENGINE


def graph(root: Path) -> dict[str, set[str]]:
    found = modules(root)
    return {name: imports(path, name, set(found)) for name, path in found.items()}


def wrong_arrows(root: Path) -> list[str]:
    """Every import that points up the table, from runtime/ into packager/, from one API
    dialect into the other, or against the arrows of engine/'s rooms."""
    wrong = []
    for name, targets in sorted(graph(root).items()):
        here = room(name)
        for target in sorted(targets):
            there = room(target)
            mine, theirs = dialect(name), dialect(target)
            if mine and theirs and mine != theirs:
                wrong.append(f"{name} imports {target}: {mine} may not import {theirs}")
                continue
            inner, other = engine_room(name), engine_room(target)
            if inner and other and other not in (inner, ENGINE, *ENGINE_ROOMS.get(inner, ())):
                wrong.append(f"{name} imports {target}: {inner} may not import {other}")
                continue
            if there == here or here == "packager":
                continue  # the build tool may import the runtime
            if there == "packager":
                wrong.append(f"{name} imports {target}: runtime/ never imports packager/")
            elif here == FRONT:
                continue
            elif there == FRONT or there not in ALLOWED[here]:
                wrong.append(f"{name} imports {target}: {here} may not import {there}")
    return wrong


def circles(root: Path) -> list[list[str]]:
    """Strongly connected groups of more than one module (Tarjan's algorithm)."""
    edges = graph(root)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def test_imports_point_down_the_table() -> None:
    assert wrong_arrows(ROOT) == []


def test_no_import_circles() -> None:
    assert circles(ROOT) == []


def test_runtime_top_holds_the_front_door_and_the_packages_only() -> None:
    top = sorted(p.name for p in (ROOT / "runtime").iterdir() if p.name != "__pycache__")
    packages = sorted(r.split(".")[1] for r in ALLOWED)
    assert top == sorted(
        [
            "__init__.py",
            "__main__.py",
            "cli.py",
            "modes.py",
            "options.py",
            "system_info.py",
            *packages,
        ]
    )
    for package in packages:
        doc = ast.get_docstring(ast.parse((ROOT / "runtime" / package / "__init__.py").read_text()))
        assert doc and "import" in doc.lower(), (
            f"runtime/{package}/__init__.py says what it may import"
        )


def test_serve_keeps_each_dialect_in_its_package() -> None:
    serve = ROOT / "runtime" / "serve"
    flat = sorted(p.name for p in serve.glob("*.py") if p.name.startswith(("openai", "ollama")))
    assert flat == [], "a dialect's modules live in serve/openai/ or serve/ollama/"
    for package in DIALECTS:
        init = ROOT / Path(*package.split(".")) / "__init__.py"
        doc = " ".join((ast.get_docstring(ast.parse(init.read_text())) or "").split())
        other = next(d for d in DIALECTS if d != package)
        assert f"never `{other}`" in doc, f"{init.relative_to(ROOT)} says it never imports {other}"


def test_engine_keeps_its_modules_in_rooms() -> None:
    engine = ROOT / "runtime" / "engine"
    rooms = sorted(r.rpartition(".")[2] for r in ENGINE_ROOMS)
    top = sorted(p.name for p in engine.iterdir() if p.name != "__pycache__")
    assert top == sorted([*ENGINE_TOP, *rooms]), "engine/'s modules live in its rooms"
    for name in rooms:
        doc = ast.get_docstring(ast.parse((engine / name / "__init__.py").read_text()))
        assert doc and "import" in doc.lower(), (
            f"runtime/engine/{name}/__init__.py says what it may import"
        )


def test_no_module_is_past_400_lines() -> None:
    long = {
        str(p.relative_to(ROOT)): n
        for p in modules(ROOT).values()
        if (n := len(p.read_text().splitlines())) > MAX_LINES
    }
    assert long == {}


@pytest.mark.parametrize(
    ("module", "line", "expected"),
    [
        ("runtime/engine/decoding/grammar.py", "from runtime.serve import app", "runtime.serve"),
        (
            "runtime/file/jsonfile.py",
            "from runtime.sources.source import ModelSource",
            "runtime.sources",
        ),
        ("runtime/chat/stops.py", "import packager.build", "never imports packager"),
        ("runtime/sources/argsfile.py", "from runtime import modes", "may not import runtime"),
        (
            "runtime/serve/ollama/models.py",
            "from runtime.serve.openai import models",
            "runtime.serve.ollama may not import runtime.serve.openai",
        ),
        (
            "runtime/serve/openai/routes.py",
            "from runtime.serve.ollama.facts import VERSION",
            "runtime.serve.openai may not import runtime.serve.ollama",
        ),
        (
            "runtime/engine/decoding/model.py",
            "from runtime.engine.devices import gpu",
            "runtime.engine.decoding may not import runtime.engine.devices",
        ),
        (
            "runtime/engine/devices/gpu.py",
            "from runtime.engine.media.vision import Vision",
            "runtime.engine.devices may not import runtime.engine.media",
        ),
        (
            "runtime/engine/settings.py",
            "from runtime.engine.decoding import pace",
            "runtime.engine may not import runtime.engine.decoding",
        ),
    ],
)
def test_a_wrong_import_is_caught(tmp_path: Path, module: str, line: str, expected: str) -> None:
    for top in ("runtime", "packager"):
        shutil.copytree(ROOT / top, tmp_path / top, ignore=shutil.ignore_patterns("__pycache__"))
    target = tmp_path / module
    target.write_text(target.read_text() + f"\n\ndef _wrong() -> None:\n    {line}\n")
    wrong = wrong_arrows(tmp_path)
    assert len(wrong) == 1 and expected in wrong[0], wrong


def test_a_circle_is_caught(tmp_path: Path) -> None:
    for top in ("runtime", "packager"):
        shutil.copytree(ROOT / top, tmp_path / top, ignore=shutil.ignore_patterns("__pycache__"))
    stops = tmp_path / "runtime" / "chat" / "stops.py"
    stops.write_text(stops.read_text() + "\nfrom runtime.chat import conversation\n")
    assert ["runtime.chat.conversation", "runtime.chat.stops"] in circles(tmp_path)
