"""Import rules of the package (docs/architecture.md "Layout and dependency direction"), checked on the source.

Every import counts, function-local ones too, except those under ``if TYPE_CHECKING:`` (they never run):

- a name starting with ``_`` (a private function, class, constant or module) is imported only by modules of
  the package that owns it;
- there is no import loop between modules (importing ``a.b.c`` is an edge to ``a.b.c`` alone: the implicit import
  of its parent packages' ``__init__`` is not counted, importing *from* a package's ``__init__`` is);
- the readers (``anogen/data``) know nothing of configs or presets; nothing outside ``anogen/cli`` (and ``python -m
  anogen``) imports the CLI; the torch-free layers import no tensor library at module level.

The checker is written here, small and explicit, and its own tests below run it on synthetic packages so that
each rule is seen to fail.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass, field
from pathlib import Path

import pytest

PACKAGE_ROOT = Path(__file__).resolve().parent.parent / "anogen"
TENSOR_LIBRARIES = ("torch", "diffusers", "transformers", "accelerate", "peft")
# Layers that must stay importable without a tensor library (`anogen --help`, export on a CPU-only CI runner).
TORCH_FREE = ("anogen.export", "anogen.records", "anogen.masks", "anogen.data", "anogen.config")


@dataclass(frozen=True)
class Import:
    importer: str  # the module that imports
    target: str  # the module the name is read from (most specific module that exists)
    name: str | None  # the name imported from it, None for ``import x``
    line: int
    module_level: bool
    external: str | None = None  # top-level name of a non-package import (``torch``)


@dataclass
class ImportGraph:
    modules: dict[str, Path]
    imports: list[Import] = field(default_factory=list)

    def is_package(self, module: str) -> bool:
        return self.modules[module].name == "__init__.py"

    def package_of(self, module: str) -> str:
        return module if self.is_package(module) else module.rpartition(".")[0]


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _type_checking_nodes(tree: ast.AST) -> set[int]:
    skipped: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.body:
                skipped.update(id(n) for n in ast.walk(child))
    return skipped


def _module_level_nodes(tree: ast.Module) -> set[int]:
    """Imports that run when the module is imported: at top level or in top-level ``if``/``try`` blocks."""
    found: set[int] = set()
    pending: list[ast.stmt] = list(tree.body)
    while pending:
        stmt = pending.pop()
        if isinstance(stmt, (ast.Import, ast.ImportFrom)):
            found.add(id(stmt))
        elif isinstance(stmt, (ast.If, ast.Try, ast.With)):
            for block in ("body", "orelse", "finalbody", "handlers"):
                for item in getattr(stmt, block, []):
                    pending.extend(item.body if isinstance(item, ast.ExceptHandler) else [item])
    return found


def build_graph(root: Path) -> ImportGraph:
    """Every import of every module below ``root`` (a package folder), resolved to modules of that package."""
    top = root.name
    modules = {module_name(p, root): p for p in sorted(root.rglob("*.py"))}
    graph = ImportGraph(modules)
    for importer, path in modules.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        skipped = _type_checking_nodes(tree)
        top_level = _module_level_nodes(tree)
        package = graph.package_of(importer)
        for node in ast.walk(tree):
            if id(node) in skipped or not isinstance(node, (ast.Import, ast.ImportFrom)):
                continue
            level = id(node) in top_level
            if isinstance(node, ast.Import):
                for alias in node.names:
                    graph.imports.extend(_resolve(graph, importer, alias.name, None, node.lineno, level, top))
                continue
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                parts = parts[: len(parts) - (node.level - 1)]
                base = ".".join([*parts, *([node.module] if node.module else [])])
            for alias in node.names:
                graph.imports.extend(_resolve(graph, importer, base, alias.name, node.lineno, level, top))
    return graph


def _resolve(
    graph: ImportGraph, importer: str, base: str, name: str | None, line: int, level: bool, top: str
) -> list[Import]:
    if base != top and not base.startswith(top + "."):
        return [Import(importer, base, name, line, level, external=base.split(".")[0])]
    if name is not None and f"{base}.{name}" in graph.modules:
        return [Import(importer, f"{base}.{name}", None, line, level)]
    if base in graph.modules:
        return [Import(importer, base, name, line, level)]
    return []


def private_import_violations(graph: ImportGraph) -> list[str]:
    """``module:line imports _name from owner`` for each private name read from outside its package."""
    found = []
    for imp in graph.imports:
        if imp.external:
            continue
        if imp.name is not None and imp.name.startswith("_") and not imp.name.startswith("__"):
            owner = graph.package_of(imp.target)
            what = f"{imp.name} from {imp.target}"
        else:
            private_parts = [i for i, part in enumerate(imp.target.split(".")) if part.startswith("_")
                             and not part.startswith("__")]
            if not private_parts:
                continue
            owner = ".".join(imp.target.split(".")[: private_parts[0]])
            what = f"the private module {imp.target}"
        if imp.importer != owner and not imp.importer.startswith(owner + "."):
            found.append(f"{imp.importer}:{imp.line} imports {what} (private to {owner})")
    return found


def import_loops(graph: ImportGraph) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), each as sorted module names."""
    edges: dict[str, set[str]] = {m: set() for m in graph.modules}
    for imp in graph.imports:
        if not imp.external and imp.target != imp.importer:
            edges[imp.importer].add(imp.target)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    loops: list[list[str]] = []

    def visit(start: str) -> None:
        # Iterative Tarjan: the package is deep enough that recursion limits are not worth the risk.
        work = [(start, iter(sorted(edges[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(edges[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    loops.append(sorted(component))

    for module in sorted(graph.modules):
        if module not in index:
            visit(module)
    return loops


def describe_loop(graph: ImportGraph, loop: list[str]) -> str:
    members = set(loop)
    lines = [
        f"  {imp.importer}:{imp.line} -> {imp.target}"
        for imp in graph.imports
        if not imp.external and imp.importer in members and imp.target in members and imp.importer != imp.target
    ]
    return "loop between " + ", ".join(loop) + ":\n" + "\n".join(sorted(set(lines)))


def layer_violations(graph: ImportGraph, top: str = "anogen") -> list[str]:
    found = []
    for imp in graph.imports:
        importer = imp.importer
        if importer.startswith(f"{top}.data") and not imp.external and imp.target.startswith(f"{top}.config"):
            found.append(f"{importer}:{imp.line} (a reader) imports {imp.target}: the preset choice is config's")
        entry_point = importer.startswith(f"{top}.cli") or importer == f"{top}.__main__"
        if not imp.external and imp.target.startswith(f"{top}.cli") and not entry_point:
            found.append(f"{importer}:{imp.line} imports the CLI ({imp.target})")
        torch_free = any(importer == m or importer.startswith(m.replace("anogen", top, 1) + ".")
                         for m in (t.replace("anogen", top, 1) for t in TORCH_FREE))
        if torch_free and imp.external in TENSOR_LIBRARIES and imp.module_level:
            found.append(f"{importer}:{imp.line} imports {imp.external} at module level (a torch-free layer)")
    return found


# ------------------------------------------------------------------------------------------- the package


@pytest.fixture(scope="module")
def graph() -> ImportGraph:
    return build_graph(PACKAGE_ROOT)


def test_the_graph_sees_the_package(graph: ImportGraph) -> None:
    # A checker that parsed nothing would pass every rule below.
    assert len(graph.modules) > 60
    assert any(i.importer == "anogen.config" and i.target == "anogen.verify.config" for i in graph.imports)
    assert any(not i.module_level and i.external == "torch" for i in graph.imports)


def test_no_private_name_is_imported_from_another_package(graph: ImportGraph) -> None:
    assert private_import_violations(graph) == []


def test_no_import_loop(graph: ImportGraph) -> None:
    loops = import_loops(graph)
    assert not loops, "\n".join(describe_loop(graph, loop) for loop in loops)


def test_layers(graph: ImportGraph) -> None:
    assert layer_violations(graph) == []


# ------------------------------------------------------------------------------ the checker, on test cases


def _package(tmp_path: Path, files: dict[str, str]) -> Path:
    root = tmp_path / "anogen"
    for rel, text in {"__init__.py": "", **files}.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.parent != root and not (path.parent / "__init__.py").exists():
            (path.parent / "__init__.py").write_text("")
        path.write_text(text)
    return root


def test_checker_finds_a_two_module_loop(tmp_path: Path) -> None:
    root = _package(tmp_path, {"a.py": "from anogen.b import x\n", "b.py": "import anogen.a\nx = 1\n"})
    graph = build_graph(root)
    assert import_loops(graph) == [["anogen.a", "anogen.b"]]
    assert "anogen.a:1 -> anogen.b" in describe_loop(graph, ["anogen.a", "anogen.b"])


def test_checker_finds_a_function_local_loop_and_ignores_type_checking(tmp_path: Path) -> None:
    root = _package(
        tmp_path,
        {
            "a.py": "def f():\n    from anogen import b\n    return b\n",
            "b.py": "from anogen.a import f\n",
            "c.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from anogen.d import y\n",
            "d.py": "from anogen.c import TYPE_CHECKING as y\n",
        },
    )
    assert import_loops(build_graph(root)) == [["anogen.a", "anogen.b"]]


def test_checker_counts_imports_from_a_package_init_but_not_implicit_parents(tmp_path: Path) -> None:
    root = _package(
        tmp_path,
        {
            "p/__init__.py": "from anogen.p.m import thing\n",
            "p/m.py": "from anogen.q import other\nthing = 1\n",
            "q.py": "other = 2\nimport anogen.p.n\n",
            "p/n.py": "",
        },
    )
    assert import_loops(build_graph(root)) == []  # q -> p.n does not pass through p/__init__
    (root / "q.py").write_text("from anogen.p import thing as other\n")
    assert import_loops(build_graph(root)) == [["anogen.p", "anogen.p.m", "anogen.q"]]


def test_checker_finds_private_names_across_packages_only(tmp_path: Path) -> None:
    root = _package(
        tmp_path,
        {
            "x/__init__.py": "",
            "x/impl.py": "_helper = 1\n",
            "x/user.py": "from anogen.x.impl import _helper\n",  # same package: fine
            "x/_common.py": "",
            "y.py": "from anogen.x.impl import _helper\nfrom anogen.x import _common\nfrom anogen import __init__\n",
        },
    )
    assert private_import_violations(build_graph(root)) == [
        "anogen.y:1 imports _helper from anogen.x.impl (private to anogen.x)",
        "anogen.y:2 imports the private module anogen.x._common (private to anogen.x)",
    ]


def test_checker_finds_layer_breaches(tmp_path: Path) -> None:
    root = _package(
        tmp_path,
        {
            "config.py": "",
            "cli/__init__.py": "",
            "data/reader.py": "def f():\n    from anogen.config import x\n",
            "export/run.py": "import torch\n\ndef g():\n    import torch\n    from anogen.cli import app\n",
        },
    )
    assert layer_violations(build_graph(root)) == [
        "anogen.data.reader:2 (a reader) imports anogen.config: the preset choice is config's",
        "anogen.export.run:1 imports torch at module level (a torch-free layer)",
        "anogen.export.run:5 imports the CLI (anogen.cli)",
    ]


# ---------------------------------------------------------------------- the table in docs/architecture.md

ARCHITECTURE_MD = PACKAGE_ROOT.parent / "docs" / "architecture.md"
GROUND_FLOOR = {"anogen", "errors", "io", "progress", "seeding", "threads", "dist", "memory"}


def unit_of(module: str) -> str:
    """``anogen.fit.loop`` -> ``fit``; ``anogen.masks`` -> ``masks``; the package ``anogen`` itself -> ``anogen``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def allowed_imports(markdown: str) -> dict[str, set[str]]:
    """The rows ``| `unit` | `a`, `b` (a note) |`` between the two ``imports`` markers of architecture.md: each
    unit and the back-quoted names of its second cell."""
    body = markdown.split("<!-- imports:begin -->", 1)[1].split("<!-- imports:end -->", 1)[0]
    table: dict[str, set[str]] = {}
    for line in body.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) < 2 or not cells[0].startswith("`"):
            continue
        names = set(re.findall(r"`([^`]+)`", cells[1])) | ({"everything"} if "everything" in cells[1] else set())
        table[cells[0].strip("`").rstrip("/").removesuffix(".py")] = names
    return table


def unit_violations(graph: ImportGraph, table: dict[str, set[str]]) -> list[str]:
    found = []
    for imp in graph.imports:
        if imp.external:
            continue
        source, target = unit_of(imp.importer), unit_of(imp.target)
        if source == target or target in GROUND_FLOOR:
            continue
        if source in GROUND_FLOOR:
            found.append(f"{imp.importer}:{imp.line} imports {imp.target}: the ground floor imports only itself")
        elif source not in table:
            found.append(f"{imp.importer}: {source} has no row in docs/architecture.md's import table")
        elif "everything" not in table[source] and target not in table[source]:
            found.append(f"{imp.importer}:{imp.line} imports {imp.target}, but {source} may not import {target}")
    return sorted(set(found))


def test_folders_import_only_what_architecture_md_allows(graph: ImportGraph) -> None:
    table = allowed_imports(ARCHITECTURE_MD.read_text(encoding="utf-8"))
    assert len(table) > 10
    assert unit_violations(graph, table) == []


def test_checker_finds_an_import_the_table_does_not_allow(tmp_path: Path) -> None:
    root = _package(tmp_path, {"fit/__init__.py": "from anogen.synth import x\n", "synth.py": "x = 1\n"})
    rows = "| `fit/` | `model` (lazily, a note) |\n| `synth.py` | - |\n"
    markdown = f"<!-- imports:begin -->\n{rows}<!-- imports:end -->\n"
    assert allowed_imports(markdown) == {"fit": {"model"}, "synth": set()}
    assert unit_violations(build_graph(root), allowed_imports(markdown)) == [
        "anogen.fit:1 imports anogen.synth, but fit may not import synth"
    ]


MAX_LINES = 600  # a file longer than this holds several rooms (docs/architecture.md): split it along its banners


def test_no_source_file_is_longer_than_a_room() -> None:
    long_files = {
        path.relative_to(PACKAGE_ROOT.parent).as_posix(): count
        for path in sorted(PACKAGE_ROOT.rglob("*.py"))
        if (count := len(path.read_text(encoding="utf-8").splitlines())) > MAX_LINES
    }
    assert long_files == {}
