"""Imports run down: no circle of modules, imports inside functions included (one under TYPE_CHECKING does not
count), and the layers of pyproject.toml's import-linter contracts (what ``make lint`` checks with lint-imports)."""

from __future__ import annotations

import subprocess
import sys

import grimp
import pytest

from helpers import REPO


@pytest.fixture(scope="module")
def graph() -> grimp.ImportGraph:
    return grimp.build_graph("dylora", exclude_type_checking_imports=True, cache_dir=None)


def circles(graph: grimp.ImportGraph) -> list[list[str]]:
    """Every circle of modules (a strongly connected set of more than one, sorted), by Tarjan's algorithm."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found = []

    def visit(module: str) -> None:  # recursive: the package's import chains are short
        index[module] = low[module] = len(index)
        stack.append(module)
        for imported in graph.find_modules_directly_imported_by(module):
            if imported not in index:
                visit(imported)
                low[module] = min(low[module], low[imported])
            elif imported in stack:
                low[module] = min(low[module], index[imported])
        if low[module] == index[module]:
            component = []
            while not component or component[-1] != module:
                component.append(stack.pop())
            if len(component) > 1:
                found.append(sorted(component))

    for module in sorted(graph.modules):
        if module not in index:
            visit(module)
    return sorted(found)


def test_imports_inside_functions_are_in_the_graph(graph):
    # both only inside functions: the graph that is checked has them
    assert graph.direct_import_exists(importer="dylora.lab.reproduce", imported="dylora.lab.search_cost")
    assert graph.direct_import_exists(importer="dylora.tasks.glue", imported="dylora.metrics.glue")


def test_no_module_imports_its_importers(graph):
    assert circles(graph) == [], "import circle(s): break each so that every import runs down a layer"


@pytest.mark.parametrize(("importer", "imported", "circle"), [
    ("dylora.metrics.glue", "dylora.tasks.glue", ["dylora.metrics.glue", "dylora.tasks.glue"]),
    ("dylora.lab.search_tables", "dylora.lab.reproduce",
     ["dylora.lab.reproduce", "dylora.lab.search_cost", "dylora.lab.search_tables"]),
])
def test_an_import_back_up_is_a_circle_found(importer, imported, circle):
    graph = grimp.build_graph("dylora", exclude_type_checking_imports=True, cache_dir=None)  # a copy to change
    graph.add_import(importer=importer, imported=imported)
    assert circles(graph) == [circle]


def test_the_layered_contracts_are_kept():
    code = ("import sys; from importlinter.cli import lint_imports; "
            f"sys.exit(lint_imports(config_filename={str(REPO / 'pyproject.toml')!r}, no_cache=True, no_logo=True))")
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    assert "3 kept, 0 broken" in result.stdout
