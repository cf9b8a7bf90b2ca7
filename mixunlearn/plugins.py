"""Methods from outside the package: plugin files and installed packages.

Three ways in, all ending in :func:`mixunlearn.methods.register_method` (docs/plugins.md):

- a Python file given with ``--plugin FILE.py`` (CLI) or named in ``ExperimentConfig.plugins``;
- every ``*.py`` in ``$MIXUNLEARN_HOME/plugins/`` (the app loads them at start and lists them on
  its Setup page);
- an installed distribution that declares an entry point in the group ``mixunlearn.methods``
  (loaded with the built-in methods, on first use of the registry).

A plugin runs in this process with the user's rights: importing it runs its code. A file that
fails to import is reported as one line naming the file (:class:`PluginError`); the methods of
the other plugins and the built-in ones are unaffected.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import sys
import threading
import traceback
import types
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

ENTRY_POINT_GROUP = "mixunlearn.methods"
MODULE_PREFIX = "mixunlearn_plugin_"


class PluginError(ValueError):
    """A plugin file that cannot be used (missing, not .py, or its import raised): one line naming the file."""


@dataclass
class PluginInfo:
    """One plugin source (a file or an entry point): the methods it added, or why it failed."""

    source: str  # the file's absolute path, or "entry point NAME (DIST)"
    methods: list[str] = field(default_factory=list)
    error: str = ""

    @property
    def ok(self) -> bool:
        return not self.error


_LOCK = threading.RLock()
_FILES: dict[str, PluginInfo] = {}  # resolved path -> info (a file is imported once per process)
_ENTRY_POINTS: list[PluginInfo] = []
_entry_points_loaded = False


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return f"{type(exc).__name__}: {text}" if not isinstance(exc, PluginError) else text


def _where_raised(exc: BaseException, path: Path) -> str:
    """`` (line N)`` of the deepest frame of ``exc`` inside ``path``, or ``""``."""
    line = ""
    for frame in traceback.extract_tb(exc.__traceback__):
        if Path(frame.filename).resolve() == path:
            line = f" (line {frame.lineno})"
    if isinstance(exc, SyntaxError) and exc.lineno and exc.filename and Path(exc.filename).resolve() == path:
        line = f" (line {exc.lineno})"
    return line


def _registry_names() -> list[str]:
    from .methods import base

    base._ensure_loaded()
    return list(base._REGISTRY)


def load_plugin_file(path: str | os.PathLike, *, strict: bool = True) -> PluginInfo:
    """Import one plugin file (once per process) and return what it registered.

    ``strict``: raise :class:`PluginError` (one line naming the file) when it cannot be imported;
    otherwise the error is in the returned info. A failed import registers nothing: methods the
    file registered before it raised are removed again.
    """
    raw = Path(path).expanduser()
    resolved = raw.resolve()
    key = str(resolved)
    with _LOCK:
        info = _FILES.get(key)
        if info is None:
            info = _import_file(raw, resolved)
            if info.ok:  # a failed file is tried again next time (the user may have fixed it)
                _FILES[key] = info
        if strict and not info.ok:
            raise PluginError(info.error)
        return info


def _import_file(raw: Path, resolved: Path) -> PluginInfo:
    from .methods import base

    info = PluginInfo(str(resolved))
    if not resolved.is_file():
        info.error = f"plugin {raw}: no such file"
        return info
    if resolved.suffix != ".py":
        info.error = f"plugin {raw}: not a Python file (.py)"
        return info
    before = set(_registry_names())
    digest = hashlib.sha256(str(resolved).encode()).hexdigest()[:10]
    name = f"{MODULE_PREFIX}{resolved.stem.replace('-', '_').replace('.', '_')}_{digest}"
    try:
        spec = importlib.util.spec_from_file_location(name, resolved)
        if spec is None or spec.loader is None:
            raise PluginError(f"plugin {raw}: cannot be imported as a module")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    except BaseException as exc:  # noqa: BLE001 - any failure of foreign code is the plugin's
        if isinstance(exc, KeyboardInterrupt):
            raise
        sys.modules.pop(name, None)
        for added in set(base._REGISTRY) - before:
            base._REGISTRY.pop(added, None)
        info.error = f"plugin {raw} failed to import{_where_raised(exc, resolved)}: {_one_line(exc)}"
        return info
    info.methods = [n for n in base._REGISTRY if n not in before]
    # Methods this file registered again (a second import under another path) count as its own.
    info.methods += [n for n, s in base._REGISTRY.items()
                     if n in before and getattr(s.fn, "__module__", "") == name and n not in info.methods]
    return info


def load_plugins(paths: Iterable[str | os.PathLike]) -> list[PluginInfo]:
    """:func:`load_plugin_file` for each path, strictly: the first failing file raises."""
    return [load_plugin_file(p) for p in paths]


def plugins_dir() -> Path:
    from .utils import home_dir

    return home_dir() / "plugins"


def load_home_plugins() -> list[PluginInfo]:
    """Every ``*.py`` of ``$MIXUNLEARN_HOME/plugins/`` (sorted by name), never raising: a file that
    fails is listed with its error and the others load."""
    folder = plugins_dir()
    try:
        files = sorted(p for p in folder.iterdir() if p.suffix == ".py" and not p.name.startswith("."))
    except OSError:
        return []
    return [load_plugin_file(p, strict=False) for p in files]


def load_entry_points() -> list[PluginInfo]:
    """Import every entry point of the group ``mixunlearn.methods`` once; called by the registry
    after the built-in methods. A failing entry point is recorded (see :func:`loaded`), never raised."""
    global _entry_points_loaded
    from importlib.metadata import entry_points

    from .methods import base

    with _LOCK:
        if _entry_points_loaded:
            return list(_ENTRY_POINTS)
        _entry_points_loaded = True
        try:
            eps = list(entry_points(group=ENTRY_POINT_GROUP))
        except Exception:  # noqa: BLE001 - broken metadata of an unrelated distribution
            eps = []
        for ep in eps:
            dist = getattr(getattr(ep, "dist", None), "name", None) or "?"
            info = PluginInfo(f"entry point {ep.name} ({dist}: {ep.value})")
            before = set(base._REGISTRY)
            try:
                obj = ep.load()  # "pkg.module": importing it registers its methods
                if isinstance(obj, types.FunctionType) and obj not in {s.fn for s in base._REGISTRY.values()}:
                    obj()  # "pkg.module:setup": a function that registers the methods when called
            except BaseException as exc:  # noqa: BLE001
                if isinstance(exc, KeyboardInterrupt):
                    raise
                for added in set(base._REGISTRY) - before:
                    base._REGISTRY.pop(added, None)
                info.error = f"{info.source} failed to load: {_one_line(exc)}"
            info.methods = [n for n in base._REGISTRY if n not in before]
            _ENTRY_POINTS.append(info)
        return list(_ENTRY_POINTS)


def loaded() -> list[PluginInfo]:
    """Every plugin source tried in this process: files (successful ones), then entry points."""
    with _LOCK:
        return list(_FILES.values()) + list(_ENTRY_POINTS)


def plugin_source(name: str) -> str:
    """The file a registered method comes from when it is not one of the package's own, else ``""``."""
    from .methods import base, get_method

    return base._plugin_source(get_method(name))


def plugin_paths_of(methods: Iterable[str]) -> tuple[str, ...]:
    """The plugin files (absolute paths) a set of methods needs, e.g. for Ray workers."""
    out = []
    for m in methods:
        src = plugin_source(m)
        if src and src in _FILES and src not in out:
            out.append(src)
    return tuple(out)
