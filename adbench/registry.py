"""Explicit decorator registry of anomaly-detection methods (timm style)."""

from __future__ import annotations

import importlib
from typing import Callable, TypeVar

T = TypeVar("T")

_METHODS: dict[str, type] = {}


def register_method(name: str) -> Callable[[T], T]:
    """Class decorator: make a method available as ``method=<name>``."""

    def deco(cls: T) -> T:
        existing = _METHODS.get(name)
        if existing is not None and existing is not cls:
            raise ValueError(f"method name {name!r} already registered by {existing.__module__}.{existing.__name__}")
        _METHODS[name] = cls  # type: ignore[assignment]
        return cls

    return deco


def _import_builtin() -> None:
    importlib.import_module("methods")


def list_methods() -> list[str]:
    """Names of every registered method, sorted."""
    _import_builtin()
    return sorted(_METHODS)


def get_method(name: str) -> type:
    """The class registered under ``name``; unknown names raise with the known ones listed."""
    _import_builtin()
    try:
        return _METHODS[name]
    except KeyError:
        raise KeyError(f"unknown method {name!r}; registered methods: {', '.join(sorted(_METHODS))}") from None
