"""The package's floor plan in numbers: what the restructure (issue 12) is measured by.

Prints one JSON object:

* ``top_level_modules`` — ``tokensidecar/*.py`` besides ``__init__``/``__main__``;
* ``import_cycles`` — strongly connected groups of ``tokensidecar`` modules that import
  each other, counting imports anywhere in a module (a function-level import still ties
  the two modules together) but not those under ``if TYPE_CHECKING:``;
* ``imports_of_the_cli`` — rooms importing the door (``tokensidecar.cli``), which only
  ``__main__`` should;
* ``longest_functions`` — the ten longest function bodies, in lines;
* ``untyped_settings_reads`` — attribute reads on a ``Config`` (``config.token_file``),
  which ``Config.__getattr__`` types ``Any``; counted statically as ``<name>.<attr>``
  where ``<name>`` is a variable named ``config``/``cfg`` and ``<attr>`` is not one of
  ``Config``'s own methods (a module that imports something *named* ``config``, such as
  ``from kubernetes import config``, is left out);
* ``lines`` — non-blank lines of product code (``tokensidecar/``) and of tests.

Usage: ``python bench/structure.py [ROOT]`` (default: the repository this file is in).
"""

from __future__ import annotations

import ast
import json
import sys
from pathlib import Path

CONFIG_OWN = {"values", "explicit", "given_as", "is_set", "label", "require", "get", "optional", "address"}
CONFIG_NAMES = {"config", "cfg"}


def module_name(root: Path, path: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _type_checking_nodes(tree: ast.AST) -> set[int]:
    skip: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in ast.walk(node):
                skip.add(id(child))
    return skip


def imports_of(name: str, path: Path, known: set[str]) -> set[str]:
    tree = ast.parse(path.read_text())
    skip = _type_checking_nodes(tree)
    is_package = path.name == "__init__.py"
    found: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                package = name.split(".") if is_package else name.split(".")[:-1]
                package = package[: len(package) - (node.level - 1)]
                base = ".".join(package + ([base] if base else []))
            targets = [f"{base}.{alias.name}" for alias in node.names] + [base]
        for imported in targets:
            target = imported
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's strongly connected components with more than one module."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []
    counter = [0]

    def visit(node: str) -> None:
        index[node] = low[node] = counter[0]
        counter[0] += 1
        stack.append(node)
        on_stack.add(node)
        for other in graph[node]:
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in on_stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            group = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                group.append(top)
                if top == node:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    sys.setrecursionlimit(10_000)
    for node in sorted(graph):
        if node not in index:
            visit(node)
    return sorted(groups)


def longest_functions(root: Path, files: list[Path], most: int = 10) -> list[dict[str, object]]:
    rows = []
    for path in files:
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = (node.end_lineno or node.lineno) - node.lineno + 1
                rows.append({"function": f"{path.relative_to(root)}::{node.name}", "lines": length})
    rows.sort(key=lambda row: -int(str(row["lines"])))
    return rows[:most]


def untyped_settings_reads(files: list[Path]) -> tuple[int, int]:
    reads, modules = 0, 0
    for path in files:
        tree = ast.parse(path.read_text())
        if _imports_a_module_named_config(tree):
            continue  # ``from kubernetes import config``: that ``config`` is a module
        here = sum(
            1
            for node in ast.walk(tree)
            if isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Name)
            and node.value.id in CONFIG_NAMES
            and node.attr not in CONFIG_OWN
            and not node.attr.startswith("_")
        )
        reads += here
        modules += bool(here)
    return reads, modules


def _imports_a_module_named_config(tree: ast.AST) -> bool:
    return any(
        isinstance(node, ast.Import | ast.ImportFrom)
        and any((alias.asname or alias.name) in CONFIG_NAMES for alias in node.names)
        for node in ast.walk(tree)
    )


def lines(files: list[Path]) -> int:
    return sum(1 for path in files for line in path.read_text().splitlines() if line.strip())


def main() -> None:
    repo = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parent.parent
    package = repo / "tokensidecar"
    files = sorted(package.rglob("*.py"))
    names = {module_name(repo, path): path for path in files}
    known = set(names)
    graph = {name: imports_of(name, path, known) for name, path in names.items()}
    # Importing the CLI (the door) from a room is the one upward import that matters here.
    upward = sorted(
        f"{name} -> {target}"
        for name, targets in graph.items()
        for target in targets
        if target == "tokensidecar.cli" and name != "tokensidecar.__main__"
    )
    reads, read_modules = untyped_settings_reads(files)
    tests = sorted((repo / "tests").rglob("*.py"))
    print(
        json.dumps(
            {
                "top_level_modules": sorted(
                    path.stem for path in package.glob("*.py") if not path.stem.startswith("__")
                ),
                "top_level_module_count": sum(
                    1 for path in package.glob("*.py") if not path.stem.startswith("__")
                ),
                "packages": sorted(
                    str(path.parent.relative_to(repo)) for path in package.rglob("__init__.py")
                ),
                "import_cycles": cycles(graph),
                "imports_of_the_cli": upward,
                "longest_functions": longest_functions(repo, files),
                "untyped_settings_reads": reads,
                "modules_with_untyped_settings_reads": read_modules,
                "lines": {"product": lines(files), "tests": lines(tests)},
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
