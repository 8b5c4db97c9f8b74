"""Finding a worker app from a ``MODULE:ATTR`` spec, as ``shards worker`` does.

    app = load_app("examples.sheep:app")

``ATTR`` (dotted paths allowed) may name a ``WorkerApp``, a list or tuple of
``ProcessDefinition``, or a zero-argument callable returning either. The
current directory goes on ``sys.path`` first, so a project's own modules load
when run from its root, as with ``python -m``.
"""

from __future__ import annotations

import importlib
import os
import sys
from typing import Any

from shards_worker.definition import ProcessDefinition, WorkerApp

EXPECTED = "a WorkerApp, a list of ProcessDefinition, or a zero-argument callable returning one of those"


class AppLoadError(ValueError):
    """The spec is malformed, or does not lead to a worker app; the message says which and why."""


def load_app(spec: str) -> WorkerApp:
    """The ``WorkerApp`` that ``spec`` (``MODULE:ATTR``) names; AppLoadError otherwise."""
    module_name, attribute = _split(spec)
    _put_cwd_on_path()
    module = _import(module_name, spec)
    target = _resolve(module, module_name, attribute)
    app = _as_app(target, spec)
    if app is not None:
        return app
    if callable(target) and not isinstance(target, type):
        try:
            made = target()
        except Exception as error:
            raise AppLoadError(f"calling {spec} failed: {type(error).__name__}: {error}") from error
        app = _as_app(made, spec)
        if app is not None:
            return app
        raise AppLoadError(f"{spec}() returned {_describe(made)}; expected {EXPECTED}")
    raise AppLoadError(f"{spec} is {_describe(target)}; expected {EXPECTED}")


def _split(spec: str) -> tuple[str, str]:
    module_name, sep, attribute = spec.strip().partition(":")
    if not sep or not module_name or not attribute or ":" in attribute:
        raise AppLoadError(f"worker app {spec!r} must look like MODULE:ATTR, e.g. examples.sheep:app")
    if not all(part.isidentifier() for part in module_name.split(".")):
        raise AppLoadError(f"worker app {spec!r}: {module_name!r} is not a module name")
    if not all(part.isidentifier() for part in attribute.split(".")):
        raise AppLoadError(f"worker app {spec!r}: {attribute!r} is not an attribute name")
    return module_name, attribute


def _put_cwd_on_path() -> None:
    cwd = os.getcwd()
    if cwd not in sys.path and "" not in sys.path:
        sys.path.insert(0, cwd)


def _import(module_name: str, spec: str) -> Any:
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as error:
        # Missing: the module itself (or a package above it), not a module it imports.
        if error.name is not None and (module_name == error.name or module_name.startswith(error.name + ".")):
            raise AppLoadError(
                f"cannot load {spec}: no module named {error.name!r} "
                f"(looked in the current directory {os.getcwd()!r} and the Python path)"
            ) from error
        raise AppLoadError(f"cannot load {spec}: importing {module_name!r} failed: {error}") from error
    except Exception as error:
        raise AppLoadError(
            f"cannot load {spec}: importing {module_name!r} raised {type(error).__name__}: {error}"
        ) from error


def _resolve(module: Any, module_name: str, attribute: str) -> Any:
    target = module
    parts = attribute.split(".")
    for index, part in enumerate(parts):
        if not hasattr(target, part):
            holder = f"module {module_name!r}" if index == 0 else f"{module_name}:{'.'.join(parts[:index])}"
            raise AppLoadError(f"{holder} has no attribute {part!r}{_hint(target)}")
        target = getattr(target, part)
    return target


def _hint(holder: Any) -> str:
    names = vars(holder) if hasattr(holder, "__dict__") else {}
    found = sorted(
        name
        for name, value in names.items()
        if not name.startswith("_") and (isinstance(value, WorkerApp) or _is_definition_list(value))
    )
    return f" (worker apps there: {', '.join(found)})" if found else ""


def _is_definition_list(value: Any) -> bool:
    return (
        isinstance(value, list | tuple)
        and bool(value)
        and all(isinstance(d, ProcessDefinition) for d in value)
    )


def _as_app(value: Any, spec: str) -> WorkerApp | None:
    if isinstance(value, WorkerApp):
        return value
    if isinstance(value, list | tuple):
        if not value:
            raise AppLoadError(f"{spec} is an empty list: a worker needs at least one ProcessDefinition")
        for index, item in enumerate(value):
            if not isinstance(item, ProcessDefinition):
                raise AppLoadError(
                    f"{spec}: item {index} of the list is {_describe(item)}, not a ProcessDefinition"
                )
        return WorkerApp.of(value)
    return None


def _describe(value: Any) -> str:
    kind = type(value).__name__
    article = "an" if kind[:1].lower() in "aeiou" else "a"
    return f"{article} {kind}"


__all__ = ["AppLoadError", "load_app"]
