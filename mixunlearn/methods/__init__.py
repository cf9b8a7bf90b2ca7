"""Unlearning methods. Every module in this package that does not start with ``_`` (and is not
``base``) is imported on first use of the registry, and registers its methods by name.
"""

from __future__ import annotations

import importlib
import pkgutil

from .base import (
    MethodConfig,
    MethodOutput,
    MethodResult,
    MethodSpec,
    PluginMethodError,
    config_from_dict,
    config_to_dict,
    field_specs,
    get_method,
    list_methods,
    make_config,
    method_names,
    param,
    parse_param_overrides,
    register_method,
    run_method,
    validate_config,
)

_loaded = False


def _load_all() -> None:
    global _loaded
    if _loaded:
        return
    for info in pkgutil.iter_modules(__path__):
        if not info.name.startswith("_") and info.name != "base":
            importlib.import_module(f"{__name__}.{info.name}")
    # Then the methods of installed packages (entry-point group ``mixunlearn.methods``); one that
    # fails is recorded (mixunlearn.plugins.loaded) and leaves the others usable.
    from ..plugins import load_entry_points

    load_entry_points()
    # Only after every module imported: a failing import fails again on the next call instead
    # of leaving a silently incomplete registry.
    _loaded = True


__all__ = [
    "MethodConfig", "MethodOutput", "MethodResult", "MethodSpec", "PluginMethodError", "config_from_dict",
    "config_to_dict",
    "field_specs", "get_method", "list_methods", "make_config", "method_names", "param",
    "parse_param_overrides", "register_method", "run_method", "validate_config",
]
