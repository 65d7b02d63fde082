"""Each package's documented public surface (its docstring's "Public surface" part) is its ``__all__``."""

from __future__ import annotations

import importlib
import pkgutil
import re

import pytest

import vmcrash

PACKAGES = sorted(m.name for m in pkgutil.walk_packages(vmcrash.__path__, "vmcrash.") if m.ispkg) + ["vmcrash"]


def documented(doc: str) -> set[str]:
    """Names in the docstring's "Public surface" part: roles (:func:`x`), ``x``, and ``x(`` calls."""
    part = doc.split("Public surface", 1)[1]
    names = set(re.findall(r":\w+:`~?(?:[\w.]+\.)?(\w+)`", part))
    names |= set(re.findall(r"``(\w+)``", part))
    names |= set(re.findall(r"\b(\w+)\(", part))
    names |= set(re.findall(r"->\s*(\w+)", part))
    names |= {w for w in re.findall(r"\b([A-Z][A-Z0-9_]{3,})\b", part)}
    return names


@pytest.mark.parametrize("name", PACKAGES)
def test_public_surface_is_all(name: str) -> None:
    try:
        module = importlib.import_module(name)
    except ImportError as exc:  # an optional extra's package: the test environment has every extra
        raise AssertionError(f"{name} does not import: {exc}") from exc
    exported = getattr(module, "__all__", None)
    doc = module.__doc__ or ""
    assert doc.strip(), f"{name} has no docstring saying what the room is for"
    if exported is None:
        assert "Public surface" not in doc, f"{name} documents a public surface but has no __all__"
        return
    assert "Public surface" in doc, f"{name} has __all__ but its docstring does not list it"
    missing = set(exported) - documented(doc)
    extra = {n for n in documented(doc) - set(exported) if hasattr(module, n) and not n.startswith("_")}
    assert not missing, f"{name}: in __all__ but not documented: {sorted(missing)}"
    assert not extra, f"{name}: documented as public but not in __all__: {sorted(extra)}"
    for n in exported:
        assert hasattr(module, n), f"{name}.__all__ names {n}, which does not exist"
