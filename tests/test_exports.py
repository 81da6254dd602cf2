"""The top-level namespace: what ``import banana_async`` promises."""

from __future__ import annotations

import builtins
import importlib
import inspect
import re

import pytest

import banana_async

ALL: list[str] = list(banana_async.__all__)
PUBLIC_MODULES = [
    "banana_async.errors",
    "banana_async.models",
    "banana_async.dialects",
    "banana_async.client",
    "banana_async.sync",
]


def isort_style_key(name: str) -> tuple[int, list[tuple[str, int]]]:
    """Ruff RUF022's "isort-style" order.

    SCREAMING_CASE first, then CamelCase, then everything else; a natural sort
    (digit runs compared as numbers) within each group.
    """
    if len(name) > 1 and name.isupper():
        group = 0
    elif name[:1].isupper():
        group = 1
    else:
        group = 2
    natural = [(text, int(digits or 0)) for text, digits in re.findall(r"(\D*)(\d*)", name)]
    return group, natural


def test_isort_style_key_matches_ruff_examples() -> None:
    names = ["get_dialect", "Task", "NANO", "__version__", "API_KEY_ENV", "Model2", "Model10"]
    assert sorted(names, key=isort_style_key) == [
        "API_KEY_ENV",
        "NANO",
        "Model2",
        "Model10",
        "Task",
        "__version__",
        "get_dialect",
    ]


def test_all_is_sorted_isort_style() -> None:
    # __init__.py follows ruff's RUF022 isort-style order (constants, classes,
    # the rest), which is not plain sorted(): "API_KEY_ENV" precedes "APIConnectionError".
    assert sorted(ALL, key=isort_style_key) == ALL
    assert sorted(ALL) != ALL


def test_all_has_no_duplicates() -> None:
    assert len(ALL) == len(set(ALL))


@pytest.mark.parametrize("name", ALL)
def test_every_name_resolves(name: str) -> None:
    assert getattr(banana_async, name) is not None


def test_star_import_gives_exactly_all() -> None:
    namespace: dict[str, object] = {}
    exec("from banana_async import *", namespace)
    namespace.pop("__builtins__")
    assert set(namespace) == set(ALL)


def test_version_is_a_string() -> None:
    assert isinstance(banana_async.__version__, str)
    assert banana_async.__version__


def _module_exports() -> list[tuple[str, str]]:
    pairs: list[tuple[str, str]] = []
    for module_name in PUBLIC_MODULES:
        module = importlib.import_module(module_name)
        pairs.extend((module_name, name) for name in module.__all__)
    return pairs


# Public in their module, and on purpose not at the top: the plumbing of
# custom dialects and clocks (docs/api.md documents each in its module).
MODULE_ONLY = {
    ("banana_async.client", "SystemClock"),
    ("banana_async.dialects", "HTTPRequest"),
    ("banana_async.dialects", "HTTPResponse"),
    ("banana_async.dialects", "error_for_status"),
    ("banana_async.dialects", "parse_body"),
    ("banana_async.sync", "OutcomeIterator"),
}


@pytest.mark.parametrize(("module_name", "name"), _module_exports())
def test_public_module_names_are_reexported(module_name: str, name: str) -> None:
    module = importlib.import_module(module_name)
    if (module_name, name) in MODULE_ONLY:
        assert name not in ALL
        return
    assert name in ALL, f"{module_name}.{name} is public but not in banana_async.__all__"
    assert getattr(banana_async, name) is getattr(module, name)


def test_module_only_names_exist_in_their_module() -> None:
    for module_name, name in MODULE_ONLY:
        assert name in importlib.import_module(module_name).__all__


@pytest.mark.parametrize(
    ("name", "home"),
    [
        ("DEFAULT_MAX_IMAGE_BYTES", "banana_async.download"),
        ("HTTPRequest", "banana_async.dialects"),
        ("HTTPResponse", "banana_async.dialects"),
        ("SystemClock", "banana_async.client"),
        ("parse_body", "banana_async.dialects"),
    ],
)
def test_names_that_left_the_top_level_still_work_with_a_warning(name: str, home: str) -> None:
    assert name not in ALL
    with pytest.warns(DeprecationWarning, match=f"import it from {home}"):
        value = getattr(banana_async, name)
    assert value is getattr(importlib.import_module(home), name)


def test_an_unknown_top_level_name_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="no_such_name"):
        banana_async.no_such_name  # noqa: B018


def _documentable() -> list[str]:
    return [
        name
        for name in ALL
        if inspect.isclass(getattr(banana_async, name))
        or inspect.isfunction(getattr(banana_async, name))
    ]


def test_there_are_classes_and_functions_to_document() -> None:
    assert "BananaClient" in _documentable()
    assert "get_dialect" in _documentable()


@pytest.mark.parametrize("name", _documentable())
def test_exported_classes_and_functions_have_their_own_docstring(name: str) -> None:
    obj = getattr(banana_async, name)
    # Not inspect.getdoc: for a class it falls back to a base class's docstring.
    own = obj.__dict__.get("__doc__") if inspect.isclass(obj) else obj.__doc__
    assert isinstance(own, str)
    assert own.strip()


ERROR_TREE: list[tuple[str, tuple[str, ...]]] = [
    ("BananaError", ("Exception",)),
    ("InvalidRequestError", ("BananaError", "ValueError")),
    ("APIConnectionError", ("BananaError",)),
    ("APITimeoutError", ("APIConnectionError",)),
    ("APIStatusError", ("BananaError",)),
    ("BadRequestError", ("APIStatusError",)),
    ("AuthenticationError", ("APIStatusError",)),
    ("NotFoundError", ("APIStatusError",)),
    ("RateLimitError", ("APIStatusError",)),
    ("ServerError", ("APIStatusError",)),
    ("ProviderError", ("BananaError",)),
    ("ResponseValidationError", ("BananaError",)),
    ("TaskFailedError", ("BananaError",)),
    ("TaskTimeoutError", ("BananaError",)),
]


def _resolve(name: str) -> type:
    found = getattr(banana_async, name, None) or getattr(builtins, name)
    assert isinstance(found, type), name
    return found


@pytest.mark.parametrize(("name", "parents"), ERROR_TREE)
def test_error_tree(name: str, parents: tuple[str, ...]) -> None:
    assert name in ALL
    cls = _resolve(name)
    assert issubclass(cls, BaseException)
    assert issubclass(cls, banana_async.BananaError)
    for parent in parents:
        assert issubclass(cls, _resolve(parent)), f"{name} should subclass {parent}"
    # The direct parents are exactly the contract's (no accidental extra bases).
    assert {base.__name__ for base in cls.__bases__} == set(parents)


def test_every_exported_exception_is_a_banana_error() -> None:
    # The contract lists the errors above; more may be added, but all under BananaError.
    # Warnings (ResolutionIgnoredWarning) are not errors and stay outside the tree.
    exported = [
        getattr(banana_async, name)
        for name in ALL
        if inspect.isclass(getattr(banana_async, name))
        and issubclass(getattr(banana_async, name), BaseException)
    ]
    errors = [cls for cls in exported if not issubclass(cls, Warning)]
    assert {name for name, _ in ERROR_TREE} <= {cls.__name__ for cls in errors}
    for cls in errors:
        assert issubclass(cls, banana_async.BananaError), cls.__name__
    assert issubclass(banana_async.ResolutionIgnoredWarning, UserWarning)
    assert not issubclass(banana_async.ResolutionIgnoredWarning, banana_async.BananaError)


def test_status_error_subclasses_are_not_related_to_each_other() -> None:
    leaves = [
        banana_async.BadRequestError,
        banana_async.AuthenticationError,
        banana_async.NotFoundError,
        banana_async.RateLimitError,
        banana_async.ServerError,
    ]
    for a in leaves:
        for b in leaves:
            assert issubclass(a, b) is (a is b)
    assert not issubclass(banana_async.APITimeoutError, banana_async.APIStatusError)
    assert not issubclass(banana_async.ProviderError, banana_async.APIStatusError)
