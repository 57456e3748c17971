"""Registry of dataset names usable in upstream DINOv2 dataset strings.

Upstream builds its training dataset from a string such as ``ImageNet:split=TRAIN:root=/data`` (see
``dinov2.data.loaders.make_dataset``). This module lets the plugin add names to that mini-language without editing
upstream: a class (or factory function) is registered under a name, and :func:`parse_dataset_str` turns a dataset
string into ``(class_, kwargs)`` exactly like upstream's private ``_parse_dataset_str`` does, so the caller can run
``class_(transform=..., target_transform=..., **kwargs)``.

Dataset-string grammar: ``NAME:key=value:key=value``.

* Tokens are separated by ``:``; each token after the name is split at its first ``=`` (values may contain ``=``).
* Values arrive as strings and are converted per key. A registered class can declare converters in a class attribute
  ``dataset_str_converters`` (``{key: callable(str) -> value}``) or through ``register_dataset(name, converters=...)``.
  Without one, the converter is inferred from the constructor signature: ``bool`` / ``int`` / ``float`` annotations or
  defaults are parsed as such; a key annotated as a list becomes a list, split at commas (``plates=BR1,BR2`` ->
  ``["BR1", "BR2"]``); a key annotated ``str | list[str]`` stays a string unless the value contains a comma.
* The literal values ``none`` / ``None`` become ``None`` for keys whose default is ``None``.
* An unknown NAME returns ``None`` (the caller then delegates to upstream's parser). An unknown key for a registered
  name, or a key given twice, raises ``ValueError`` naming the key and listing the valid ones.
"""

from __future__ import annotations

import importlib
import inspect
import logging
from typing import Any, Callable

logger = logging.getLogger("dinov2_cell.data")

_REGISTRY: dict[str, Callable[..., Any]] = {}
_CONVERTERS: dict[str, dict[str, Callable[[str], Any]]] = {}

# Built-in datasets, imported only when their name is first looked up: the registry never imports its clients (a
# dataset module imports this one to register itself), and parsing another name imports nothing.
BUILTIN_DATASETS: dict[str, str] = {"CPJUMP1": "dinov2_cell.data.cpjump1_dataset:CPJUMP1Dataset"}

# Keys upstream's make_dataset always passes itself: never accepted from the string.
_RESERVED = ("transform", "target_transform")

_TRUE = {"1", "true", "yes", "on", "y"}
_FALSE = {"0", "false", "no", "off", "n"}


def discard_target(_target: Any) -> tuple:
    """Return an empty tuple; a picklable stand-in for upstream's ``target_transform=lambda _: ()``.

    Args:
        _target: ignored.

    Returns:
        ``()``.
    """
    return ()


def register_dataset(name: str, *, converters: dict[str, Callable[[str], Any]] | None = None):
    """Register a dataset class or factory under ``name`` (decorator).

    Args:
        name: the NAME used in dataset strings (case-sensitive, no ``:``).
        converters: optional ``{key: callable(str) -> value}`` overriding the class's ``dataset_str_converters``.

    Returns:
        A decorator that registers its argument and returns it unchanged.

    Raises:
        ValueError: if ``name`` is empty, contains ``:`` or ``=``, or is already registered to another object.
    """
    if not name or ":" in name or "=" in name:
        raise ValueError(f"invalid dataset name {name!r}: must be non-empty and contain neither ':' nor '='")

    def decorator(cls_or_factory):
        previous = _REGISTRY.get(name)
        if previous is not None and previous is not cls_or_factory and _qualname(previous) != _qualname(cls_or_factory):
            raise ValueError(f"dataset name {name!r} is already registered to {_qualname(previous)}")
        _REGISTRY[name] = cls_or_factory
        merged = dict(getattr(cls_or_factory, "dataset_str_converters", {}) or {})
        merged.update(converters or {})
        _CONVERTERS[name] = merged
        return cls_or_factory

    return decorator


def registered_datasets() -> dict[str, Callable[..., Any]]:
    """Return a copy of the registry (name -> class or factory), built-in datasets included.

    Returns:
        A new dict.
    """
    for name in BUILTIN_DATASETS:
        _ensure_builtin(name)
    return dict(_REGISTRY)


def parse_dataset_str(dataset_str: str) -> tuple[Callable[..., Any], dict[str, Any]] | None:
    """Parse ``NAME:key=value:...`` into ``(class_, kwargs)``; ``None`` when NAME is not registered.

    Args:
        dataset_str: the dataset string (see the module docstring for the grammar and value conversion).

    Returns:
        ``(class_, kwargs)`` for a registered NAME, else ``None``.

    Raises:
        ValueError: malformed token, unknown key, duplicated key or a value its converter rejects; the message names
            the key and the dataset string.
    """
    tokens = dataset_str.split(":")
    name = tokens[0]
    _ensure_builtin(name)
    class_ = _REGISTRY.get(name)
    if class_ is None:
        return None
    params = _keyword_params(class_)
    accepts_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in inspect.signature(class_).parameters.values())
    valid = sorted(k for k in params if k not in _RESERVED)
    kwargs: dict[str, Any] = {}
    for token in tokens[1:]:
        if token == "":
            continue  # tolerate a trailing ':' or '::'
        if "=" not in token:
            raise ValueError(f"dataset string {dataset_str!r}: token {token!r} is not key=value")
        key, value = token.split("=", 1)
        if key in _RESERVED:
            raise ValueError(f"dataset string {dataset_str!r}: {key!r} is set by make_dataset and cannot be given")
        if key not in params and not accepts_any:
            raise ValueError(f"dataset {name!r}: unknown key {key!r}; valid keys: {', '.join(valid)}")
        if key in kwargs:
            raise ValueError(f"dataset string {dataset_str!r}: key {key!r} given twice")
        converter = _CONVERTERS.get(name, {}).get(key) or _infer_converter(params.get(key))
        try:
            kwargs[key] = _none_or(converter, value, params.get(key))
        except (TypeError, ValueError) as e:
            raise ValueError(f"dataset {name!r}: bad value {value!r} for key {key!r}: {e}") from e
    return class_, kwargs


# ----------------------------------------------------------------------------------------------------------------
# Converters shared with dataset classes.


def to_bool(value: str) -> bool:
    """Parse yes/no, true/false, on/off, 1/0 (case-insensitive).

    Args:
        value: the string.

    Returns:
        The boolean.

    Raises:
        ValueError: for anything else.
    """
    v = value.strip().lower()
    if v in _TRUE:
        return True
    if v in _FALSE:
        return False
    raise ValueError(f"expected a boolean (yes/no, true/false, 1/0), got {value!r}")


def to_list(value: str) -> list[str]:
    """Split at commas, dropping blanks: ``"a,b"`` -> ``["a", "b"]``, ``"a"`` -> ``["a"]``.

    Args:
        value: the string.

    Returns:
        The list of non-empty, stripped items.
    """
    return [v.strip() for v in value.split(",") if v.strip()]


def to_str_or_list(value: str) -> str | list[str]:
    """Keep a single value as a string; split a comma-separated value into a list.

    Args:
        value: the string.

    Returns:
        ``value`` unchanged when it has no comma, else :func:`to_list` of it.
    """
    return to_list(value) if "," in value else value.strip()


# ----------------------------------------------------------------------------------------------------------------


def _ensure_builtin(name: str) -> None:
    target = BUILTIN_DATASETS.get(name)
    if target is None or name in _REGISTRY:
        return
    module_name, attr = target.split(":")
    register_dataset(name)(getattr(importlib.import_module(module_name), attr))


def _qualname(obj) -> str:
    return f"{getattr(obj, '__module__', '?')}.{getattr(obj, '__qualname__', repr(obj))}"


def _keyword_params(class_) -> dict[str, inspect.Parameter]:
    sig = inspect.signature(class_)
    return {
        n: p
        for n, p in sig.parameters.items()
        if p.kind in (inspect.Parameter.KEYWORD_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    }


def _annotation_text(param: inspect.Parameter | None) -> str:
    if param is None or param.annotation is inspect.Parameter.empty:
        return ""
    ann = param.annotation
    return ann if isinstance(ann, str) else repr(ann)


def _infer_converter(param: inspect.Parameter | None) -> Callable[[str], Any]:
    text = _annotation_text(param).replace("typing.", "")
    default = None if param is None else param.default
    lower = text.lower()
    if "list" in lower or "sequence" in lower or "tuple" in lower:
        return to_str_or_list if "str |" in text or "| str" in text or "Union[str" in text else to_list
    if text.startswith("bool") or isinstance(default, bool):
        return to_bool
    if text.startswith("int") or (isinstance(default, int) and not isinstance(default, bool)):
        return int
    if text.startswith("float") or isinstance(default, float):
        return float
    return str


def _none_or(converter: Callable[[str], Any], value: str, param: inspect.Parameter | None) -> Any:
    if param is not None and param.default is None and value.strip().lower() == "none":
        return None
    return converter(value)
