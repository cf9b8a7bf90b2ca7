"""A module imported on first use: ``from ._lazy import torch`` in modules that the app's first
page needs (jobs, progress, store, utils), so that drawing it does not wait for torch's import
(seconds on a loaded machine). The first attribute read (``torch.zeros``, ``torch.Tensor``)
imports the real module; annotations stay strings (``from __future__ import annotations``)."""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Any


class LazyModule:
    """Stands for the module ``name`` until an attribute is read, then forwards to it."""

    def __init__(self, name: str):
        self._name = name
        self._module: ModuleType | None = None

    def __getattr__(self, attr: str) -> Any:
        module = self._module
        if module is None:
            module = self._module = importlib.import_module(self._name)
        return getattr(module, attr)

    def __repr__(self) -> str:
        return f"<lazy module {self._name!r}{' (loaded)' if self._module is not None else ''}>"


torch: Any = LazyModule("torch")
