"""The package's layers import one way (issue 8): no cycle between files or subpackages, and no
import from a lower layer into a higher one -- counting imports inside functions and under
TYPE_CHECKING, since a lazy import is still a dependency. Parsed with `ast`, nothing imported.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "fiddler_nb"
# bottom to top: a module may import its own layer and the layers before it
LAYERS = ("runtime", "measure", "api", "tune", "benchmarks", "notebook", "cli", "__init__")


def module_name(path: Path, root: Path = PACKAGE) -> str:
    rel = path.relative_to(root.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def layer_of(module: str) -> str:
    parts = module.split(".")
    return "__init__" if len(parts) == 1 else parts[1]


def imports_of(path: Path, root: Path = PACKAGE) -> set[str]:
    """Every fiddler_nb module `path` imports, anywhere in the file."""
    name = module_name(path, root)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.split(".")[0] == root.name)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != root.name:
                continue
            for alias in node.names:  # `from . import x` may name a module
                sub = f"{target}.{alias.name}"
                found.add(sub if _is_module(sub, root) else target)
    found.discard(name)
    return {m for m in found if _is_module(m, root)}


def _is_module(name: str, root: Path) -> bool:
    rel = Path(*name.split(".")[1:]) if "." in name else Path()
    base = root / rel
    return base.with_suffix(".py").is_file() or (base / "__init__.py").is_file()


def import_graph(root: Path = PACKAGE) -> dict[str, set[str]]:
    return {module_name(p, root): imports_of(p, root) for p in sorted(root.rglob("*.py"))}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle as a chain [a, b, ..., a], or None."""
    state: dict[str, int] = {}  # 1 on the stack, 2 done
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    bad = []
    for src, targets in graph.items():
        for dst in targets:
            if LAYERS.index(layer_of(dst)) > LAYERS.index(layer_of(src)):
                bad.append(f"{src} ({layer_of(src)}) imports {dst} ({layer_of(dst)})")
    return sorted(bad)


def layer_graph(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for src, targets in graph.items():
        out.setdefault(layer_of(src), set()).update(
            layer_of(d) for d in targets if layer_of(d) != layer_of(src))
    return out


def test_every_module_belongs_to_a_layer():
    unknown = sorted(m for m in import_graph() if layer_of(m) not in LAYERS)
    assert not unknown, f"modules outside the known layers {LAYERS}: {unknown}"


def test_no_cycle_between_modules():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_no_cycle_between_layers():
    cycle = find_cycle(layer_graph(import_graph()))
    assert cycle is None, "cycle between layers: " + " -> ".join(cycle)


def test_no_upward_import():
    bad = upward_imports(import_graph())
    assert not bad, "a lower layer imports a higher one:\n" + "\n".join(bad)


def test_the_checker_catches_a_deliberate_upward_import_and_cycle(tmp_path):
    """The rules fail on a planted violation (a lazy import under TYPE_CHECKING included)."""
    root = tmp_path / "fiddler_nb"
    for sub in ("runtime", "notebook"):
        (root / sub).mkdir(parents=True)
        (root / sub / "__init__.py").write_text("")
    (root / "__init__.py").write_text("")
    (root / "runtime" / "engine.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from ..notebook import plots\n")
    (root / "runtime" / "a.py").write_text("def f():\n    from .b import x\n")
    (root / "runtime" / "b.py").write_text("from fiddler_nb.runtime.a import f\n")
    (root / "notebook" / "plots.py").write_text("from ..runtime import engine\n")
    graph = import_graph(root)
    assert upward_imports(graph) == [
        "fiddler_nb.runtime.engine (runtime) imports fiddler_nb.notebook.plots (notebook)"]
    assert find_cycle(graph) in (["fiddler_nb.runtime.a", "fiddler_nb.runtime.b", "fiddler_nb.runtime.a"],
                                 ["fiddler_nb.notebook.plots", "fiddler_nb.runtime.engine",
                                  "fiddler_nb.notebook.plots"])
    assert find_cycle(layer_graph(graph)) is not None


@pytest.mark.parametrize("layer", [l for l in LAYERS if l not in ("api", "tune", "__init__")])
def test_each_layer_says_what_it_may_import(layer):
    doc = ast.get_docstring(ast.parse((PACKAGE / layer / "__init__.py").read_text())) or ""
    assert "May import" in doc, f"fiddler_nb/{layer}/__init__.py should say what it may import"


# ---- runtime's parts (issue 14) ----------------------------------------------------------------
# runtime/ is split into subpackages; the plain modules at its own level are the shared base.
# Each part's __init__.py docstring has a line "May import: base, model, ..." naming the parts
# it may import; the checker reads those lines, so the docstring and the rule cannot drift.
RUNTIME = "fiddler_nb.runtime"
BASE = "base"
MAX_PLAIN_RUNTIME_MODULES = 6  # issue 14: at most six plain modules left at runtime's level


def part_of(module: str, root: Path = PACKAGE) -> str | None:
    """'model', 'formats', ... for a module inside a runtime part, 'base' for runtime's own
    plain modules, None outside the runtime (or for runtime/__init__ itself)."""
    parts = module.split(".")
    if module == RUNTIME or parts[:2] != RUNTIME.split("."):
        return None
    is_package = (root / Path(*parts[1:]) / "__init__.py").is_file()
    return BASE if len(parts) == 3 and not is_package else parts[2]


def allowed_parts(root: Path = PACKAGE) -> dict[str, set[str]]:
    """part -> the parts its docstring's 'May import:' line names (base may import only base)."""
    out = {BASE: set()}
    for init in sorted((root / "runtime").glob("*/__init__.py")):
        doc = ast.get_docstring(ast.parse(init.read_text())) or ""
        lines = [l for l in doc.splitlines() if l.strip().startswith("May import:")]
        names = lines[0].split(":", 1)[1] if lines else ""
        out[init.parent.name] = {n.strip(" .") for n in names.split(",") if n.strip(" .")}
    return out


def part_violations(graph: dict[str, set[str]], allowed: dict[str, set[str]],
                    root: Path = PACKAGE) -> list[str]:
    bad = []
    for src, targets in graph.items():
        src_part = part_of(src, root)
        if src_part is None:
            continue
        for dst in targets:
            dst_part = part_of(dst, root)
            if dst_part is None or dst_part == src_part:
                continue
            if dst_part not in allowed.get(src_part, set()):
                bad.append(f"{src} ({src_part}) imports {dst} ({dst_part}); {src_part} may "
                           f"import: {', '.join(sorted(allowed.get(src_part, ()))) or 'nothing'}")
    return sorted(bad)


def part_graph(graph: dict[str, set[str]], root: Path = PACKAGE) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for src, targets in graph.items():
        if (p := part_of(src, root)) is not None:
            out.setdefault(p, set()).update(
                q for d in targets if (q := part_of(d, root)) is not None and q != p)
    return out


def test_runtime_has_few_plain_modules():
    plain = sorted(p.name for p in (PACKAGE / "runtime").glob("*.py") if p.name != "__init__.py")
    assert len(plain) <= MAX_PLAIN_RUNTIME_MODULES, f"runtime/ has {len(plain)} plain modules: {plain}"


def test_every_runtime_part_says_what_it_may_import():
    allowed = allowed_parts()
    for part, names in allowed.items():
        unknown = names - set(allowed)
        assert not unknown, f"runtime/{part}/__init__.py names unknown parts {sorted(unknown)}"
    missing = [p for p, names in allowed.items() if p != BASE and not names]
    assert not missing, f"runtime parts without a 'May import:' line: {missing}"


def test_runtime_parts_import_only_what_their_docstrings_allow():
    bad = part_violations(import_graph(), allowed_parts())
    assert not bad, "a runtime part imports one its docstring does not allow:\n" + "\n".join(bad)


def test_no_cycle_between_runtime_parts():
    cycle = find_cycle(part_graph(import_graph()))
    assert cycle is None, "cycle between runtime parts: " + " -> ".join(cycle)


def test_the_part_checker_catches_a_planted_violation(tmp_path):
    """A lazy import from a lower part into a higher one fails with its chain."""
    root = tmp_path / "fiddler_nb"
    (root / "runtime" / "model").mkdir(parents=True)
    (root / "runtime" / "engine").mkdir(parents=True)
    (root / "__init__.py").write_text("")
    (root / "runtime" / "__init__.py").write_text('"""May import: nothing."""\n')
    (root / "runtime" / "errors.py").write_text("")
    (root / "runtime" / "model" / "__init__.py").write_text('"""Model.\n\nMay import: base.\n"""\n')
    (root / "runtime" / "engine" / "__init__.py").write_text(
        '"""Engine.\n\nMay import: base, model.\n"""\n')
    (root / "runtime" / "model" / "config.py").write_text(
        "from ..errors import x\ndef f():\n    from ..engine.factory import g\n")
    (root / "runtime" / "engine" / "factory.py").write_text("from ..model.config import f\n")
    graph = import_graph(root)
    bad = part_violations(graph, allowed_parts(root), root)
    cycle = find_cycle(part_graph(graph, root))
    assert bad == ["fiddler_nb.runtime.model.config (model) imports "
                   "fiddler_nb.runtime.engine.factory (engine); model may import: base"]
    assert cycle in (["engine", "model", "engine"], ["model", "engine", "model"])
