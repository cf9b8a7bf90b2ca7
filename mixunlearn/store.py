"""The run store: an SQLite index (runs, methods, metrics, config JSON, status, timestamps)
plus tensors on disk (safetensors, never pickle).

A run is committed atomically. Its files are written into ``runs/<id>.partial/``, renamed to
``runs/<id>/``, and only then is the run marked ``complete`` in one transaction together with
its method rows. A run that crashed or was cancelled stays ``running``/``cancelled``/``failed``
and is never listed as complete. Default location: ``$MIXUNLEARN_HOME/store`` (see
:func:`mixunlearn.utils.home_dir`).

Schema versions: a store written by a newer MixUnlearn is refused with a message. Version 0 is
the layout before the index had a ``meta`` table: a bare ``runs (id, created, status, config,
results)`` table. It is migrated in place (the index columns and the per-method rows are filled
from each run's config and results JSON, a complete run's ``results.json`` is written back); a
version-0 ``runs`` table without ``id`` or ``config`` cannot be migrated and is refused.
"""

from __future__ import annotations

import json
import numbers
import os
import re
import shutil
import sqlite3
import time
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ._lazy import torch
from .utils import atomic_write_text, check_seed, home_dir

SCHEMA_VERSION = 1
STATUSES = ("running", "complete", "failed", "cancelled", "interrupted")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS runs (
    id TEXT PRIMARY KEY,
    created REAL NOT NULL,
    finished REAL,
    status TEXT NOT NULL,
    label TEXT NOT NULL DEFAULT '',
    dataset TEXT NOT NULL DEFAULT '',
    forget TEXT NOT NULL DEFAULT '',
    seed INTEGER,
    pid INTEGER,
    config TEXT NOT NULL,
    results TEXT,
    error TEXT NOT NULL DEFAULT ''
);
CREATE TABLE IF NOT EXISTS methods (
    run_id TEXT NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
    method TEXT NOT NULL,
    status TEXT NOT NULL,
    seconds REAL,
    gap REAL,
    metrics TEXT NOT NULL,
    config TEXT NOT NULL,
    error TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (run_id, method)
);
"""


class StoreError(RuntimeError):
    """The store cannot be used (newer schema, unreadable database, unknown run)."""


@dataclass
class RunRow:
    id: str
    created: float
    finished: float | None
    status: str
    label: str
    dataset: str
    forget: str
    seed: int | None
    config: dict[str, Any]
    results: dict[str, Any] | None
    error: str
    methods: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def title(self) -> str:
        when = time.strftime("%Y-%m-%d %H:%M", time.localtime(self.created))
        label = f" · {self.label}" if self.label else ""
        return f"{when} · {self.dataset} · {self.forget} · seed {self.seed}{label}"


class RunStore:
    def __init__(self, root: str | os.PathLike | None = None):
        self.root = Path(root) if root else home_dir() / "store"
        self.runs_dir = self.root / "runs"
        self.runs_dir.mkdir(parents=True, exist_ok=True)
        self.db_path = self.root / "index.sqlite"
        self._init_schema()

    # ------------------------------------------------------------------ plumbing

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        try:
            con = sqlite3.connect(self.db_path, timeout=30, isolation_level=None)
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open the run store at {self.db_path}: {exc}") from exc
        try:
            con.row_factory = sqlite3.Row
            con.execute("PRAGMA foreign_keys = ON")
            con.execute("PRAGMA busy_timeout = 30000")
            yield con
        except sqlite3.DatabaseError as exc:
            raise StoreError(_store_problem(self.db_path, exc)) from exc
        finally:
            con.close()

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        with self._connect() as con:
            con.execute("BEGIN IMMEDIATE")
            try:
                yield con
            except BaseException:
                if con.in_transaction:  # SQLite may already have rolled back (e.g. on SQLITE_FULL)
                    con.execute("ROLLBACK")
                raise
            con.execute("COMMIT")

    def _init_schema(self) -> None:
        with self._connect() as con:
            try:
                con.execute("PRAGMA journal_mode = WAL")
            except sqlite3.OperationalError:
                pass  # e.g. a read-only or network file system: rollback journal still works
            con.execute("BEGIN IMMEDIATE")
            try:
                tables = {r["name"] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
                legacy = "runs" in tables and "meta" not in tables  # version 0: no meta table yet
                for stmt in filter(str.strip, _SCHEMA.split(";")):
                    con.execute(stmt)
                row = con.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
                if row is None:
                    version = 0 if legacy else SCHEMA_VERSION
                    con.execute("INSERT INTO meta VALUES ('schema_version', ?)", (str(version),))
                else:
                    try:
                        version = int(row["value"])
                    except (TypeError, ValueError):
                        raise StoreError(f"the run store at {self.root} has an unreadable schema version "
                                         f"{row['value']!r}; move it aside or set MIXUNLEARN_HOME elsewhere") from None
                if version > SCHEMA_VERSION:
                    raise StoreError(
                        f"the run store at {self.root} was written by a newer MixUnlearn (schema {version}, "
                        f"this one reads {SCHEMA_VERSION}); upgrade, or point MIXUNLEARN_HOME elsewhere"
                    )
                for v in range(version, SCHEMA_VERSION):
                    _MIGRATIONS[v](con, self)
                    con.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (str(v + 1),))
                # Additive column (older readers ignore it): which incarnation of ``pid`` owns a run,
                # so a restarted app that got the same pid (containers) still recovers its dead runs.
                columns = {r["name"] for r in con.execute("PRAGMA table_info(runs)")}
                if "owner" not in columns:
                    con.execute("ALTER TABLE runs ADD COLUMN owner TEXT NOT NULL DEFAULT ''")
            except BaseException:
                con.execute("ROLLBACK")
                raise
            con.execute("COMMIT")

    # ------------------------------------------------------------------ writing

    def begin(self, config: Mapping[str, Any], label: str = "") -> str:
        """Register a run as ``running``; returns its id. A seed outside ``0..2**32-1`` (every
        consumer's range, :func:`~mixunlearn.utils.check_seed`) is refused before anything is stored."""
        seed = config.get("seed")
        if isinstance(seed, numbers.Integral) and not isinstance(seed, bool):
            seed = check_seed(seed)
        run_id = time.strftime("%Y%m%d-%H%M%S") + "-" + uuid.uuid4().hex[:6]
        with self._transaction() as con:
            con.execute(
                "INSERT INTO runs (id, created, status, label, dataset, forget, seed, pid, owner, config) "
                "VALUES (?, ?, 'running', ?, ?, ?, ?, ?, ?, ?)",
                (run_id, time.time(), label, str(config.get("dataset", "")), str(config.get("forget", "")),
                 seed, os.getpid(), _process_identity(os.getpid()) or "",
                 json.dumps(config, default=str)),
            )
        return run_id

    def commit(
        self,
        run_id: str,
        results: Mapping[str, Any],
        tensors: Mapping[str, torch.Tensor] | None = None,
        files: Mapping[str, str | bytes] | None = None,
    ) -> None:
        """Write the run's files, then mark it complete with its method rows, atomically."""
        from safetensors.torch import save_file

        row = self._row(run_id)
        if row["status"] != "running":
            raise StoreError(f"run {run_id} is {row['status']}, not running; it cannot be committed")
        for name in files or {}:
            if not name or "/" in name or "\\" in name or name.startswith(".") or name == "results.json":
                raise ValueError(f"bad file name {name!r}")
        partial = self.runs_dir / f"{run_id}.partial"
        final = self.runs_dir / run_id
        try:
            shutil.rmtree(partial, ignore_errors=True)
            partial.mkdir(parents=True)
            if tensors:
                state = {k: v.detach().cpu().contiguous().clone() for k, v in tensors.items()}
                save_file(state, str(partial / "tensors.safetensors"))
            for name, content in (files or {}).items():
                mode = "wb" if isinstance(content, bytes) else "w"
                with open(partial / name, mode) as fh:
                    fh.write(content)
            (partial / "results.json").write_text(json.dumps(results, default=str))
            _fsync_dir(partial)
            shutil.rmtree(final, ignore_errors=True)
            os.replace(partial, final)
        except OSError as exc:
            # A cancel (or recover) meanwhile removes the partial folder: say so, not "file not found".
            status = self._row(run_id)["status"]
            if status != "running":
                shutil.rmtree(partial, ignore_errors=True)
                raise StoreError(f"run {run_id} became {status} while it was being committed; "
                                 "it is not stored as complete") from exc
            raise
        with self._transaction() as con:
            # Only a run that is still running becomes complete: a cancel or a recover() that
            # happened while the files were written wins, and the files go away again.
            cur = con.execute("UPDATE runs SET status = 'complete', finished = ?, results = ? "
                              "WHERE id = ? AND status = 'running'",
                              (time.time(), json.dumps(results, default=str), run_id))
            if cur.rowcount != 1:
                status = con.execute("SELECT status FROM runs WHERE id = ?", (run_id,)).fetchone()
                shutil.rmtree(final, ignore_errors=True)
                raise StoreError(f"run {run_id} became {status['status'] if status else 'deleted'} while it was "
                                 "being committed; it is not stored as complete")
            for name, rec in (results.get("methods") or {}).items():
                con.execute(
                    "INSERT OR REPLACE INTO methods VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (run_id, name, rec.get("status", "done"), rec.get("seconds"), rec.get("gap_to_retrain"),
                     json.dumps(rec.get("metrics", {})), json.dumps(rec.get("config", {}), default=str),
                     rec.get("error", "")),
                )

    def finish_unsuccessful(self, run_id: str, status: str, error: str = "") -> None:
        """Mark a run ``failed`` or ``cancelled``; its partial files are removed."""
        if status not in ("failed", "cancelled", "interrupted"):
            raise ValueError(f"status must be failed, cancelled or interrupted, got {status!r}")
        with self._transaction() as con:
            cur = con.execute("UPDATE runs SET status = ?, finished = ?, error = ? WHERE id = ? AND status = 'running'",
                              (status, time.time(), error, run_id))
        shutil.rmtree(self.runs_dir / f"{run_id}.partial", ignore_errors=True)
        if cur.rowcount == 1:  # never touch the files of a run that is already complete
            shutil.rmtree(self.runs_dir / run_id, ignore_errors=True)

    def recover(self) -> list[str]:
        """Mark ``running`` runs whose process is gone as ``interrupted``, with the reason in their
        ``error``; returns their ids. Whoever opens the store calls it (the CLI before a stored run,
        the app when it opens the store), so a run whose process was killed (``kill -9``, a crash, a
        closed terminal) never stays ``running``. A run's process is its ``pid`` and ``owner``
        (boot id and start time), so a reused pid is not mistaken for the run's process."""
        stale = []
        with self._transaction() as con:
            for row in con.execute("SELECT id, pid, owner FROM runs WHERE status = 'running'").fetchall():
                if row["pid"] is None or not _owner_alive(int(row["pid"]), row["owner"]):
                    stale.append(row["id"])
                    who = f"its process (pid {row['pid']})" if row["pid"] is not None else "its process"
                    reason = (f"interrupted: {who} ended without finishing the run (killed or crashed); "
                              "found when the run store was next opened")
                    con.execute("UPDATE runs SET status = 'interrupted', finished = ?, error = ? WHERE id = ? "
                                "AND status = 'running'", (time.time(), reason, row["id"]))
        for run_id in stale:
            # Files of a commit that died between its rename and its status update go too.
            shutil.rmtree(self.runs_dir / f"{run_id}.partial", ignore_errors=True)
            shutil.rmtree(self.runs_dir / run_id, ignore_errors=True)
        return stale

    def delete(self, run_id: str) -> None:
        with self._transaction() as con:
            con.execute("DELETE FROM methods WHERE run_id = ?", (run_id,))
            con.execute("DELETE FROM runs WHERE id = ?", (run_id,))
        shutil.rmtree(self.runs_dir / run_id, ignore_errors=True)

    # ------------------------------------------------------------------ reading

    def _row(self, run_id: str) -> sqlite3.Row:
        with self._connect() as con:
            row = con.execute("SELECT * FROM runs WHERE id = ?", (run_id,)).fetchone()
        if row is None:
            raise StoreError(f"no run {run_id!r} in the store at {self.root}")
        return row

    def _to_run(self, row: sqlite3.Row, con: sqlite3.Connection) -> RunRow:
        methods = {
            m["method"]: {"status": m["status"], "seconds": m["seconds"], "gap_to_retrain": m["gap"],
                          "metrics": json.loads(m["metrics"]), "config": json.loads(m["config"]), "error": m["error"]}
            for m in con.execute("SELECT * FROM methods WHERE run_id = ?", (row["id"],))
        }
        return RunRow(row["id"], row["created"], row["finished"], row["status"], row["label"], row["dataset"],
                      row["forget"], row["seed"], json.loads(row["config"]),
                      json.loads(row["results"]) if row["results"] else None, row["error"], methods)

    def list_runs(self, status: str | None = "complete", limit: int = 200) -> list[RunRow]:
        """Runs, newest first. ``status=None`` lists every run. A complete run whose files are
        missing is not listed as complete."""
        with self._connect() as con:
            if status is None:
                rows = con.execute("SELECT * FROM runs ORDER BY created DESC LIMIT ?", (limit,)).fetchall()
            else:
                rows = con.execute("SELECT * FROM runs WHERE status = ? ORDER BY created DESC LIMIT ?",
                                   (status, limit)).fetchall()
            runs = [self._to_run(r, con) for r in rows]
        if status == "complete":
            runs = [r for r in runs if (self.runs_dir / r.id / "results.json").is_file()]
        return runs

    def get(self, run_id: str) -> RunRow:
        with self._connect() as con:
            row = con.execute("SELECT * FROM runs WHERE id = ?", (run_id,)).fetchone()
            if row is None:
                raise StoreError(f"no run {run_id!r} in the store at {self.root}")
            return self._to_run(row, con)

    def run_dir(self, run_id: str) -> Path:
        run = self.get(run_id)
        if run.status != "complete":
            raise StoreError(f"run {run_id} is {run.status}, not complete")
        return self.runs_dir / run_id

    def load_tensors(self, run_id: str) -> dict[str, torch.Tensor]:
        from safetensors.torch import load_file

        path = self.run_dir(run_id) / "tensors.safetensors"
        if not path.is_file():
            return {}
        try:
            return load_file(str(path), device="cpu")
        except Exception as exc:  # safetensors raises its own error types
            raise StoreError(f"tensors of run {run_id} are unreadable: {exc}") from exc

    def save_artifact(self, run_id: str, name: str, tensors: Mapping[str, torch.Tensor]) -> None:
        """Add a derived, cacheable artifact (e.g. a projection) to a complete run, atomically.
        Artifacts can always be recomputed from the run, so they are not part of its commit."""
        from safetensors.torch import save_file

        if not name.replace("-", "").replace("_", "").isalnum():
            raise ValueError(f"bad artifact name {name!r}")
        folder = self.run_dir(run_id)
        path = folder / f"artifact-{name}.safetensors"
        tmp = folder / f".artifact-{name}.{uuid.uuid4().hex[:6]}.tmp"
        state = {k: v.detach().cpu().contiguous().clone() for k, v in tensors.items()}
        save_file(state, str(tmp))
        os.replace(tmp, path)

    def load_artifact(self, run_id: str, name: str) -> dict[str, torch.Tensor] | None:
        """A previously saved artifact, or None when absent or unreadable."""
        from safetensors.torch import load_file

        path = self.run_dir(run_id) / f"artifact-{name}.safetensors"
        if not path.is_file():
            return None
        try:
            return load_file(str(path), device="cpu")
        except Exception:  # a damaged cache entry is simply recomputed
            return None

    def read_file(self, run_id: str, name: str) -> bytes:
        path = self.run_dir(run_id) / name
        if not path.is_file():
            raise StoreError(f"run {run_id} has no file {name!r}")
        return path.read_bytes()


def _store_problem(db_path: Path, exc: sqlite3.Error) -> str:
    """What is wrong with the store, said as it is: read-only, not openable, or damaged."""
    text = str(exc)
    low = text.lower()
    if "readonly" in low or "read-only" in low:
        return (f"the run store at {db_path} cannot be written (it or its folder is read-only: {text}); "
                "make it writable or set MIXUNLEARN_HOME to another folder")
    if "unable to open" in low or "disk i/o" in low:
        return f"the run store at {db_path} cannot be opened ({text}); check the folder's permissions and disk"
    return f"the run store at {db_path} is unreadable: {text}"


_SAFE_ID = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")

# Columns a version-0 ``runs`` table may lack, with the default each one starts from.
_V1_RUN_COLUMNS = {
    "created": "REAL NOT NULL DEFAULT 0", "finished": "REAL", "status": "TEXT NOT NULL DEFAULT 'interrupted'",
    "label": "TEXT NOT NULL DEFAULT ''", "dataset": "TEXT NOT NULL DEFAULT ''",
    "forget": "TEXT NOT NULL DEFAULT ''", "seed": "INTEGER", "pid": "INTEGER", "results": "TEXT",
    "error": "TEXT NOT NULL DEFAULT ''",
}


def _json_or_none(text: Any) -> Any:
    if not isinstance(text, (str, bytes)):
        return None
    try:
        return json.loads(text)
    except ValueError:
        return None


def _migrate_0_to_1(con: sqlite3.Connection, store: RunStore) -> None:
    """Version 0 (a bare ``runs`` table, no meta table) -> version 1, in the caller's transaction.

    Every row keeps its id, config and results. Index columns come from the config JSON; per-method
    rows from the results JSON of complete runs; a row whose config or results is not JSON, or
    whose status is unknown, is kept as ``failed`` / ``interrupted`` so it is never shown as
    complete; a complete run's ``results.json`` is written back where its folder lacks one.
    """
    columns = {r["name"] for r in con.execute("PRAGMA table_info(runs)")}
    missing = [c for c in ("id", "config") if c not in columns]
    if missing:
        raise StoreError(f"the run store at {store.root} has an old layout without a {missing[0]!r} column in "
                         "its runs table; it cannot be migrated. Move it aside (a fresh store is created) or set "
                         "MIXUNLEARN_HOME to another folder")
    for name, decl in _V1_RUN_COLUMNS.items():
        if name not in columns:
            con.execute(f"ALTER TABLE runs ADD COLUMN {name} {decl}")
    for row in con.execute("SELECT * FROM runs").fetchall():
        run_id = str(row["id"])
        if not _SAFE_ID.fullmatch(run_id):  # an id is a folder name: never a path
            run_id = f"legacy-{uuid.uuid4().hex[:12]}"
            con.execute("UPDATE runs SET id = ? WHERE id = ?", (run_id, row["id"]))
        config = _json_or_none(row["config"])
        results = _json_or_none(row["results"]) if row["results"] is not None else None
        status, error = row["status"], row["error"]
        if status not in STATUSES:
            status = "interrupted"
        if not isinstance(config, dict):
            config, status, error = {}, "failed", "unreadable config in a version-0 store"
        if status == "complete" and not isinstance(results, dict):
            results, status, error = None, "failed", "unreadable results in a version-0 store"
        seed = config.get("seed")
        con.execute(
            "UPDATE runs SET status = ?, error = ?, dataset = ?, forget = ?, seed = ?, config = ?, results = ? "
            "WHERE id = ?",
            (status, error or "", str(config.get("dataset", "")), str(config.get("forget", "")),
             seed if isinstance(seed, int) and not isinstance(seed, bool) and -2**63 <= seed < 2**63 else None,
             json.dumps(config, default=str), json.dumps(results, default=str) if results is not None else None,
             run_id),
        )
        if status != "complete":
            continue
        for method, rec in (results.get("methods") or {}).items():
            if not isinstance(rec, dict):
                continue
            con.execute(
                "INSERT OR REPLACE INTO methods VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (run_id, str(method), str(rec.get("status", "done")), rec.get("seconds"), rec.get("gap_to_retrain"),
                 json.dumps(rec.get("metrics", {}), default=str), json.dumps(rec.get("config", {}), default=str),
                 str(rec.get("error", ""))),
            )
        folder = store.runs_dir / run_id
        if not (folder / "results.json").is_file():
            folder.mkdir(parents=True, exist_ok=True)
            atomic_write_text(folder / "results.json", json.dumps(results, default=str))


_MIGRATIONS = {0: _migrate_0_to_1}


def _process_identity(pid: int) -> str | None:
    """``boot id:start time`` of process ``pid`` (Linux), which a reused pid does not share; None
    where /proc is not available."""
    try:
        with open("/proc/sys/kernel/random/boot_id") as fh:
            boot = fh.read().strip()
        with open(f"/proc/{pid}/stat") as fh:
            start = fh.read().rsplit(")", 1)[1].split()[19]  # field 22: start time after boot
    except (OSError, IndexError):
        return None
    return f"{boot}:{start}"


def _owner_alive(pid: int, owner: str | None) -> bool:
    """Is the process that began a run still running? A pid that now belongs to another process
    (another boot, or a restarted container whose app got the same pid) does not count."""
    if not _pid_alive(pid):
        return False
    if owner:
        current = _process_identity(pid)
        if current is not None and current != owner:
            return False
    return True


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except OSError:
        return False
    # A killed process that its parent has not reaped yet still answers kill(0): a zombie is dead.
    try:
        with open(f"/proc/{pid}/stat") as fh:
            state = fh.read().rsplit(")", 1)[1].split()[0]
        return state not in ("Z", "X")
    except (OSError, IndexError):
        return True


def _fsync_dir(path: Path) -> None:
    for p in path.iterdir():
        with open(p, "rb") as fh:
            os.fsync(fh.fileno())
