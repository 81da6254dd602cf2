"""No module of banana_async knows another's insides, and no two import each other.

Read from the source with :mod:`ast`, so a new breach fails here before
review. The rules:

- **Private modules are shared; private names are not.** A module whose
  name starts with an underscore (``_checks``, ``_transport``, ``_wire``...)
  is the package's own plumbing: any module may import it, and the layers
  contract of import-linter (``pyproject.toml``) decides which may. A
  *name* with a leading underscore belongs to the module that defines it:
  ``from banana_async.x import _name`` fails, and so does
  ``some_module._name``. This holds inside a subpackage too (``testing/``,
  ``journal/``, ``cli/``): what two of its modules share is a plain name in
  a private module, so that a reader sees at the definition that others use
  it, and nothing needs the looser rule today.
- **A private attribute is the business of the module whose classes define
  it.** ``obj._name`` (``obj`` not ``self`` or ``cls``) passes only when a
  class of the same module defines ``_name`` (a method or class attribute,
  a ``__slots__`` entry, an assignment to ``self._name``); the two classes
  of one module that cooperate (a store and its journal, a poll policy and
  its scouts) are one unit, as Python's underscore convention means. The
  check goes by name, not by type: a module that defines ``_x`` itself
  could still reach a foreign ``_x`` unseen, which review has to catch.
  ``getattr``/``setattr``/``hasattr``/``delattr`` with a literal private
  name count the same.
- **No cycles.** The import graph of the package's modules (imports under
  ``if TYPE_CHECKING:`` left out, as they never run) has no cycle, lazy
  imports inside functions included. import-linter's ``acyclic_siblings``
  contract says the same for packages; this test names the modules.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "banana_async"
ROOT = "banana_async"

# (module, attribute) -> why it may be reached on another object. Keep short.
ALLOWED_ATTRIBUTES: dict[tuple[str, str], str] = {
    # SplitResult is a namedtuple: _replace is its documented public method,
    # underscored only so that it cannot clash with a field name.
    ("banana_async._transport", "_replace"): "namedtuple API (urllib.parse.SplitResult)",
}

_ATTRIBUTE_FUNCTIONS = frozenset({"getattr", "setattr", "hasattr", "delattr"})


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


MODULES: dict[str, Path] = {_module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}
TREES: dict[str, ast.Module] = {
    name: ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    for name, path in MODULES.items()
}


def _is_private(name: str) -> bool:
    """A leading underscore that is not a dunder (``__version__`` is public)."""
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _runtime_nodes(tree: ast.AST) -> Iterator[ast.AST]:
    """Every node, less the bodies of ``if TYPE_CHECKING:`` blocks."""
    todo: list[ast.AST] = [tree]
    while todo:
        node = todo.pop()
        yield node
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            todo.extend(node.orelse)
            continue
        todo.extend(ast.iter_child_nodes(node))


def _absolute(module: str, node: ast.ImportFrom) -> str:
    """The module an ``from ... import`` names, relative forms resolved."""
    if not node.level:
        return node.module or ""
    is_package = MODULES[module].name == "__init__.py"
    base = module.split(".")
    base = base[: len(base) - node.level + (1 if is_package else 0)]
    return ".".join([*base, node.module] if node.module else base)


def _imports(module: str, *, runtime_only: bool) -> Iterator[tuple[int, str, str | None]]:
    """(line, module imported, name imported from it or None) for package imports."""
    tree = TREES[module]
    nodes = _runtime_nodes(tree) if runtime_only else ast.walk(tree)
    for node in nodes:
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == ROOT:
                    yield node.lineno, alias.name, None
        elif isinstance(node, ast.ImportFrom):
            source = _absolute(module, node)
            if source.split(".")[0] == ROOT:
                for alias in node.names:
                    yield node.lineno, source, alias.name


def _private_name_imports(module: str) -> Iterator[str]:
    for line, source, name in _imports(module, runtime_only=False):
        if name is None:
            continue  # "import banana_async.x._y" imports a module: allowed
        if _is_private(name) and f"{source}.{name}" not in MODULES:
            yield f"{module}:{line}: imports the private name {name} from {source}"


def _defined_attributes(tree: ast.Module) -> set[str]:
    """The attribute names that the classes of one module define for themselves."""
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef):
            for item in node.body:
                if isinstance(item, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                    names.add(item.name)
                elif isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name):
                    names.add(item.target.id)
                elif isinstance(item, ast.Assign):
                    for target in item.targets:
                        if isinstance(target, ast.Name):
                            names.add(target.id)
                            if target.id == "__slots__":
                                names.update(
                                    element.value
                                    for element in ast.walk(item.value)
                                    if isinstance(element, ast.Constant)
                                    and isinstance(element.value, str)
                                )
        targets: list[ast.expr] = []
        if isinstance(node, ast.Assign):
            targets = node.targets
        elif isinstance(node, ast.AnnAssign | ast.AugAssign):
            targets = [node.target]
        for target in targets:
            if (
                isinstance(target, ast.Attribute)
                and isinstance(target.value, ast.Name)
                and target.value.id in {"self", "cls"}
            ):
                names.add(target.attr)
    return names


def _module_aliases(module: str) -> set[str]:
    """Local names bound to a module of the package (``from banana_async import _retry``)."""
    aliases: set[str] = set()
    for node in ast.walk(TREES[module]):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == ROOT:
                    aliases.add(alias.asname or ROOT)
        elif isinstance(node, ast.ImportFrom):
            source = _absolute(module, node)
            for alias in node.names:
                if f"{source}.{alias.name}" in MODULES:
                    aliases.add(alias.asname or alias.name)
    return aliases


def _reached_attributes(tree: ast.Module) -> Iterator[tuple[int, ast.expr, str]]:
    """(line, object, name) for every ``obj.name`` and ``getattr(obj, "name")``."""
    nodes = sorted(
        (node for node in ast.walk(tree) if isinstance(node, ast.Attribute | ast.Call)),
        key=lambda node: (node.lineno, node.col_offset),
    )
    for node in nodes:
        if isinstance(node, ast.Attribute):
            yield node.lineno, node.value, node.attr
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id in _ATTRIBUTE_FUNCTIONS
            and len(node.args) >= 2
            and isinstance(node.args[1], ast.Constant)
            and isinstance(node.args[1].value, str)
        ):
            yield node.lineno, node.args[0], node.args[1].value


def _private_attribute_reaches(module: str) -> Iterator[str]:
    tree = TREES[module]
    own = _defined_attributes(tree)
    modules = _module_aliases(module)
    for line, obj, name in _reached_attributes(tree):
        if not _is_private(name) or (module, name) in ALLOWED_ATTRIBUTES:
            continue
        if isinstance(obj, ast.Name):
            if obj.id in {"self", "cls"}:
                continue
            if obj.id in modules:  # another module's private name, by attribute
                yield f"{module}:{line}: reads {obj.id}.{name}, a private name of a module"
                continue
        if name not in own:
            yield f"{module}:{line}: reaches {ast.unparse(obj)}.{name}, defined elsewhere"


def _graph() -> dict[str, set[str]]:
    """Module -> the package modules it imports when it runs."""
    graph: dict[str, set[str]] = {module: set() for module in MODULES}
    for module in MODULES:
        for _, source, name in _imports(module, runtime_only=True):
            target = f"{source}.{name}" if f"{source}.{name}" in MODULES else source
            if target in MODULES and target != module:
                graph[module].add(target)
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for other in sorted(graph[node]):
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in on_stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component: list[str] = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


# --- the package ---------------------------------------------------------------


def test_every_module_is_read() -> None:
    # A wrong root would make every check below pass on nothing.
    assert {"banana_async", "banana_async.client", "banana_async.journal.sqlite"} <= set(MODULES)
    assert len(MODULES) > 30


@pytest.mark.parametrize("module", sorted(MODULES))
def test_no_private_name_is_imported_from_another_module(module: str) -> None:
    assert list(_private_name_imports(module)) == []


@pytest.mark.parametrize("module", sorted(MODULES))
def test_no_private_attribute_is_reached_on_another_modules_object(module: str) -> None:
    assert list(_private_attribute_reaches(module)) == []


def test_no_two_modules_import_each_other() -> None:
    assert _cycles(_graph()) == []


def test_every_allowed_attribute_is_still_used() -> None:
    # A stale entry would quietly allow the next, unrelated use of the name.
    for module, name in ALLOWED_ATTRIBUTES:
        assert any(reached == name for _, _, reached in _reached_attributes(TREES[module]))


# --- the checks themselves, on small sources -------------------------------------


def _with_source(monkeypatch: pytest.MonkeyPatch, module: str, source: str) -> None:
    monkeypatch.setitem(TREES, module, ast.parse(source))
    monkeypatch.setitem(MODULES, module, PACKAGE / (module.split(".")[-1] + ".py"))


def test_a_private_name_from_another_module_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    _with_source(
        monkeypatch,
        "banana_async.probe",
        "from banana_async._transport import _shown_url, send\n"
        "from banana_async import _checks\n"
        "from banana_async._version import __version__\n",
    )
    assert list(_private_name_imports("banana_async.probe")) == [
        "banana_async.probe:1: imports the private name _shown_url from banana_async._transport"
    ]


def test_a_relative_import_is_resolved(monkeypatch: pytest.MonkeyPatch) -> None:
    _with_source(monkeypatch, "banana_async.testing.probe", "from ._tasks import _frozen\n")
    assert list(_private_name_imports("banana_async.testing.probe")) == [
        "banana_async.testing.probe:1: imports the private name _frozen"
        " from banana_async.testing._tasks"
    ]


def test_a_private_attribute_of_another_module_is_caught(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _with_source(
        monkeypatch,
        "banana_async.probe",
        "from banana_async import _transport\n"
        "class Mine:\n"
        "    __slots__ = ('_peer',)\n"
        "    def _own(self) -> None:\n"
        "        self._count = 0\n"
        "    def use(self, other, client, exc) -> None:\n"
        "        self._own(); other._own(); other._count; self._peer._peer\n"
        "        client._create()\n"
        "        exc._marker = True\n"
        "        getattr(exc, '_marker', False)\n"
        "        _transport._shown_url\n"
        "        exc.__class__\n",
    )
    assert list(_private_attribute_reaches("banana_async.probe")) == [
        "banana_async.probe:8: reaches client._create, defined elsewhere",
        "banana_async.probe:9: reaches exc._marker, defined elsewhere",
        "banana_async.probe:10: reaches exc._marker, defined elsewhere",
        "banana_async.probe:11: reads _transport._shown_url, a private name of a module",
    ]


def test_a_cycle_is_caught() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": set()}
    assert _cycles(graph) == [["a", "b", "c"]]


def test_imports_for_type_checking_make_no_cycle(monkeypatch: pytest.MonkeyPatch) -> None:
    _with_source(
        monkeypatch,
        "banana_async.probe",
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n"
        "    from banana_async.client import BananaClient\n"
        "else:\n"
        "    from banana_async import errors\n"
        "def later() -> None:\n"
        "    from banana_async.models import Task\n",
    )
    assert _graph()["banana_async.probe"] == {"banana_async.errors", "banana_async.models"}
