"""Resumable output directories: settings lock, atomic checkpoints, append-only outputs.

Layout of a workflow directory (``--out``)::

    settings.json     workflow name + every setting that changes the results (written once)
    checkpoint.json   the latest checkpoint (atomic replace), incl. the byte size of every
                      append-only output at that moment
    *.csv, *.extxyz   append-only time series and trajectories, written as they go

On resume, :class:`RunDirectory` compares the new settings with ``settings.json`` and refuses
to continue with different ones (:class:`IncompatibleSettingsError` lists the differences;
a model or structure file reached by another path is the same when its hash is, and the
keys of :data:`RESUME_SAFE_KEYS` may change);
every append-only output still being written is truncated back to its size at the last
checkpoint, so rows written after it (which the resumed run writes again) never appear twice.
A kill therefore loses at most one checkpoint interval.

One process at a time: a :class:`RunDirectory` holds an exclusive lock on ``.lock`` in the
directory until :meth:`RunDirectory.release` (``with rd:``; or the process ends); a second
process on the same directory gets :class:`RunDirectoryLocked` instead of interleaving its
rows.
"""

from __future__ import annotations

import fcntl
import json
import math
import os
import shutil
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import IO, Any

import numpy as np

SETTINGS_FILE = "settings.json"
CHECKPOINT_FILE = "checkpoint.json"

LOCK_FILE = ".lock"

#: settings (dotted keys) that may differ on resume: they do not change the trajectory
#: (where it runs, when checkpoints are written, how the finished run is analysed)
RESUME_SAFE_KEYS = frozenset(
    {"device", "progress", "config.checkpoint_every", "config.tilt_threshold_deg", "config.symprec"}
)
#: keys added to the settings after the first release: absent from an older directory's
#: settings.json, they are not a difference (that directory recorded no hashes)
ADDED_KEYS = frozenset({"force_field_sha256", "born_model_sha256", "structure_sha256"})
#: settings (dotted keys) added after the first release with the value an older directory
#: ran with: absent from its settings.json, they are no difference when they have that value
ADDED_WITH_DEFAULT = {"config.harmonic_delta_A": 0.01}
#: file paths (dotted keys) that may differ on resume when the hash locked beside them is
#: the same on both sides: the same file reached from another directory or by another name
LOCATED_BY_HASH = {
    "models.force_field": "models.force_field_sha256",
    "models.born_model": "models.born_model_sha256",
    "config.structure": "structure_sha256",
}


class IncompatibleSettingsError(ValueError):
    """Resuming a workflow directory with settings that differ from the saved ones."""


class RunDirectoryLocked(RuntimeError):
    """Another process is running a workflow in this directory."""


def _json_default(x: Any) -> Any:
    if isinstance(x, np.ndarray):
        return x.tolist()
    if isinstance(x, (np.floating, np.integer, np.bool_)):
        return x.item()
    if isinstance(x, Path):
        return str(x)
    raise TypeError(f"not JSON serialisable: {type(x).__name__}")


def normalise(x: Any) -> Any:
    """JSON round-trip (tuples become lists, numpy scalars Python numbers)."""
    return json.loads(json.dumps(x, default=_json_default))


def _finite_or_none(x: Any) -> Any:
    """A value as :func:`normalise` returns it (plain dicts, lists, floats) with every
    NaN/±inf float replaced by ``None``."""
    if isinstance(x, dict):
        return {k: _finite_or_none(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_finite_or_none(v) for v in x]
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    return x


def write_json(path: str | os.PathLike, data: Any, *, strict: bool = False) -> None:
    """Write JSON atomically (temporary file + ``os.replace``).  ``strict``: standard JSON
    for the result files users read with other tools (jq, JavaScript): undefined numbers
    (NaN, ±inf: e.g. a tilt component the cell cannot hold) become ``null``; otherwise
    Python's ``NaN`` tokens are kept (checkpoints, read back by this package)."""
    path = Path(path)
    if strict:
        data = _finite_or_none(normalise(data))
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "w") as fh:
        json.dump(data, fh, indent=1, default=_json_default, allow_nan=not strict)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def _dotted(d: Any, key: str) -> Any:
    for part in key.split("."):
        if not isinstance(d, dict):
            return None
        d = d.get(part)
    return d


def _without_located_paths(old: dict[str, Any], new: dict[str, Any]) -> tuple[dict, dict]:
    """Copies of both settings without the :data:`LOCATED_BY_HASH` paths whose hashes agree."""
    old, new = normalise(old), normalise(new)
    for path_key, hash_key in LOCATED_BY_HASH.items():
        h = _dotted(old, hash_key)
        if h is not None and h == _dotted(new, hash_key):
            parent, _, leaf = path_key.rpartition(".")
            for d in (old, new):
                holder = _dotted(d, parent) if parent else d
                if isinstance(holder, dict):
                    holder.pop(leaf, None)
    return old, new


def _diff(old: Any, new: Any, prefix: str = "") -> list[str]:
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for k in sorted(set(old) | set(new)):
            key = f"{prefix}{k}"
            if key in RESUME_SAFE_KEYS:
                continue
            if k not in old and k in ADDED_KEYS:
                continue
            if k not in old and key in ADDED_WITH_DEFAULT and new[k] == ADDED_WITH_DEFAULT[key]:
                continue
            if k not in old:
                out.append(f"{key}: (absent) -> {new[k]!r}")
            elif k not in new:
                out.append(f"{key}: {old[k]!r} -> (absent)")
            else:
                out += _diff(old[k], new[k], key + ".")
        return out
    if old != new:
        return [f"{prefix.rstrip('.')}: {old!r} -> {new!r}"]
    return []


class CsvLog:
    """Append-only CSV with a fixed header; floats written with full (repr) precision."""

    def __init__(self, fh: IO[str], columns: Sequence[str], write_header: bool) -> None:
        self.fh = fh
        self.columns = list(columns)
        if write_header:
            fh.write(",".join(self.columns) + "\n")

    def write(self, row: dict[str, Any] | Sequence[Any]) -> None:
        vals = [row[c] for c in self.columns] if isinstance(row, dict) else list(row)
        if len(vals) != len(self.columns):
            raise ValueError(f"row has {len(vals)} values for {len(self.columns)} columns")
        self.fh.write(",".join(format_value(v) for v in vals) + "\n")


def format_value(v: Any) -> str:
    """One CSV cell: floats in full precision (``repr``), anything else with ``str``."""
    if isinstance(v, (float, np.floating)):
        return repr(float(v))
    return str(v)


def read_csv(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Read a :class:`CsvLog` file into ``{column: float array}`` (non-numeric columns as str).

    A last line without its newline is a row still being written (a run in progress, its
    buffer flushed mid-line) or torn by a kill: it is left out (:class:`CsvLog` ends every
    row with one).
    """
    with open(path) as fh:
        header = fh.readline().strip().split(",")
        rows = [line.rstrip("\n").split(",") for line in fh if line.strip() and line.endswith("\n")]
    out: dict[str, np.ndarray] = {}
    for j, name in enumerate(header):
        col = [r[j] for r in rows]
        try:
            out[name] = np.array([float(x) for x in col], dtype=float)
        except ValueError:
            out[name] = np.array(col, dtype=object)
    return out


class RunDirectory:
    """A resumable workflow directory (module docstring).

    Parameters
    ----------
    path : path-like
        The directory (created if needed).
    workflow : str
        Workflow name, stored in ``settings.json`` and checked on resume.
    settings : dict
        Everything that changes the results (JSON-able); compared on resume except
        :data:`RESUME_SAFE_KEYS`.
    overwrite : bool
        Delete an existing workflow directory of the same workflow first (refuses to delete
        a directory that does not hold a ``settings.json`` of that workflow but is not empty).

    Attributes
    ----------
    checkpoint : dict or None
        The loaded checkpoint (``None`` for a fresh start).
    resumed : bool
    """

    def __init__(
        self,
        path: str | os.PathLike,
        workflow: str,
        settings: dict[str, Any],
        *,
        overwrite: bool = False,
    ) -> None:
        self.path = Path(path)
        self.workflow = workflow
        self.settings = normalise(settings)
        self._open: dict[str, IO[str]] = {}
        sfile = self.path / SETTINGS_FILE
        blocker = next((q for q in (self.path, *self.path.parents) if q.exists() and not q.is_dir()), None)
        if blocker is not None:  # mkdir's "[Errno 17] File exists" / "[Errno 20] Not a directory"
            raise IncompatibleSettingsError(
                f"{blocker} is a file, so {self.path} cannot be a run directory; use another --out"
            )
        if overwrite and self.path.exists():
            if sfile.exists():
                saved = json.loads(sfile.read_text())
                if saved.get("workflow") != workflow:
                    raise IncompatibleSettingsError(
                        f"{self.path} holds a '{saved.get('workflow')}' workflow, not '{workflow}'; "
                        "refusing to overwrite it"
                    )
            elif any(p.name != LOCK_FILE for p in self.path.iterdir()):
                raise IncompatibleSettingsError(
                    f"{self.path} is not empty and is not a workflow directory; refusing to overwrite it"
                )
        elif self.path.is_dir() and not sfile.exists() and any(p.name != LOCK_FILE for p in self.path.iterdir()):
            # a later --overwrite of this run would delete everything in it: start only in a
            # new or empty directory (not e.g. `--out .` in a folder of the user's files)
            raise IncompatibleSettingsError(
                f"{self.path} is not empty and is not a workflow directory; use a new or empty --out"
            )
        self.path.mkdir(parents=True, exist_ok=True)
        self._lock = self._acquire_lock()
        try:
            self._start(sfile, overwrite)
        except BaseException:
            self.release()
            raise

    def _acquire_lock(self) -> IO[str]:
        fh = open(self.path / LOCK_FILE, "a+")  # noqa: SIM115 - held until close()
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.seek(0)
            holder = fh.read().strip() or "another process"
            fh.close()
            raise RunDirectoryLocked(
                f"{self.path} is in use by {holder}: one run per directory (wait for it, or "
                "use another --out)"
            ) from None
        fh.seek(0)
        fh.truncate()
        fh.write(f"pid {os.getpid()}\n")
        fh.flush()
        return fh

    def _start(self, sfile: Path, overwrite: bool) -> None:
        if overwrite:  # under the lock: never delete a directory another process is writing
            for p in self.path.iterdir():
                if p.is_dir() and not p.is_symlink():  # a link is removed, not what it points to
                    shutil.rmtree(p)
                elif p.name != LOCK_FILE:
                    p.unlink()
        if sfile.exists():
            saved = json.loads(sfile.read_text())
            if saved.get("workflow") != self.workflow:
                raise IncompatibleSettingsError(
                    f"{self.path} holds a '{saved.get('workflow')}' workflow, not "
                    f"'{self.workflow}'; use another --out"
                )
            diffs = _diff(*_without_located_paths(saved.get("settings", {}), self.settings))
            started = any(p.name not in (SETTINGS_FILE, LOCK_FILE) for p in self.path.iterdir())
            if diffs and not started:
                # a start that failed before writing anything (e.g. a model that did not load):
                # nothing to mix, the corrected command starts afresh
                write_json(sfile, {"workflow": self.workflow, "settings": self.settings})
            elif diffs:
                raise IncompatibleSettingsError(
                    f"{self.path} was started with different settings; refusing to mix them on resume "
                    "(use a new --out, or --overwrite to discard the old run):\n  "
                    + "\n  ".join(diffs)
                )
        else:
            write_json(sfile, {"workflow": self.workflow, "settings": self.settings})
        cfile = self.path / CHECKPOINT_FILE
        self.checkpoint: dict[str, Any] | None = (
            json.loads(cfile.read_text()) if cfile.exists() else None
        )
        self.resumed = self.checkpoint is not None
        self._resume_offsets: dict[str, int] = dict((self.checkpoint or {}).get("offsets", {}))

    # ------------------------------------------------------------------ files
    def file(self, name: str) -> Path:
        """Path of an output inside the directory."""
        return self.path / name

    def open_append(self, name: str) -> tuple[IO[str], bool]:
        """Open an append-only output; returns ``(file, is_empty)``.

        If the last checkpoint recorded a size for ``name`` the file is truncated to it
        (resume); otherwise it is started afresh (truncated to zero).
        """
        if name in self._open:
            return self._open[name], False
        p = self.file(name)
        offset = self._resume_offsets.pop(name, 0)
        if p.exists():
            size = p.stat().st_size
            if size < offset:
                raise RuntimeError(
                    f"{p} is shorter ({size} bytes) than at the last checkpoint ({offset} bytes); "
                    "the directory was modified; start again with --overwrite"
                )
            with open(p, "r+b") as fh:
                fh.truncate(offset)
        elif offset:
            raise RuntimeError(f"{p} was recorded in the checkpoint but is missing")
        fh = open(p, "a")  # noqa: SIM115 - stays open across steps; closed by close()
        self._open[name] = fh
        return fh, offset == 0

    def csv(self, name: str, columns: Sequence[str]) -> CsvLog:
        """An append-only :class:`CsvLog` (header written when the file starts afresh)."""
        fh, empty = self.open_append(name)
        return CsvLog(fh, columns, write_header=empty)

    def close(self, names: Iterable[str] | None = None) -> None:
        """Close open outputs (all by default); the directory stays locked (:meth:`release`)."""
        for name in list(self._open) if names is None else list(names):
            fh = self._open.pop(name, None)
            if fh is not None:
                fh.close()

    def release(self) -> None:
        """Close every output and release the directory's lock (another run may start)."""
        self.close()
        if getattr(self, "_lock", None) is not None:
            self._lock.close()  # closing the descriptor releases the flock
            self._lock = None

    def __enter__(self) -> RunDirectory:  # noqa: PYI034 - a final class in practice
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    # ------------------------------------------------------------------ checkpoints
    def save_checkpoint(self, state: dict[str, Any]) -> None:
        """Flush outputs and write ``state`` + their sizes atomically to ``checkpoint.json``."""
        offsets = {}
        for name, fh in self._open.items():
            fh.flush()
            os.fsync(fh.fileno())
            offsets[name] = fh.tell()
        data = dict(state)
        data["offsets"] = offsets
        write_json(self.path / CHECKPOINT_FILE, data)
        self.checkpoint = normalise(data)

    def write_json(self, name: str, data: Any, *, strict: bool = False) -> Path:
        """Atomic JSON output inside the directory (``strict``: :func:`write_json`)."""
        p = self.file(name)
        write_json(p, data, strict=strict)
        return p


__all__ = [
    "CHECKPOINT_FILE",
    "RESUME_SAFE_KEYS",
    "SETTINGS_FILE",
    "CsvLog",
    "IncompatibleSettingsError",
    "RunDirectory",
    "RunDirectoryLocked",
    "format_value",
    "normalise",
    "read_csv",
    "write_json",
]
