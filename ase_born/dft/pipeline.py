"""Resumable ABINIT DFPT pipeline over a plan of structures.

Layout
------
``plan.extxyz``
    Structures with ``info["structure_id"]``, ``kind``, ``split``, ``sampling``.
``<workdir>/<structure_id>/``
    One directory per structure: ABINIT inputs/outputs, step markers
    (``gs.done``, ``ddk.done``, ``efield.done``) and the restart files of the
    unfinished step chain (see :mod:`ase_born.dft.abinit`).
``<workdir>/run.lock``
    Held (``flock``, with the PID of its holder written in it) for the whole of a
    :func:`run_plan` call: a second pipeline on the same work directory is refused
    (:class:`PipelineLocked`) instead of computing and appending the same structures.
``<workdir>/settings.json``
    The ABINIT settings of the latest run; a later run with other physics
    settings (cutoff, k-points, functional, pseudopotentials) is refused (mixing
    them would silently corrupt the dataset).  Tolerances
    (:data:`~ase_born.dft.abinit.TOLERANCE_KEYS`) may change between runs.  The work
    directory may not outlive a session, so the physics settings are also checked
    against the ``dft_settings`` of every frame already in ``<output>``
    (:func:`check_output_settings`).
``<workdir>/<structure_id>/settings.json``
    The settings a structure started with; it finishes with them when a later run asks
    for tighter tolerances, and takes the later run's when they are looser or equal
    (:func:`structure_settings`), so every one of its steps met the tolerances of the
    frame's ``dft_settings`` (exactly what each step used unless they were loosened).
``failures.json`` beside ``<output>`` (:func:`failures_file`; ``data/dft/failures.json``)
    ``{structure_id: [{"reason": ..., "type": ..., "time": ..., "output": ...}, ...]}``; a
    structure that failed ``max_attempts`` times is skipped, not retried forever.  Kept (and
    committed) with the dataset so that the count survives a fresh machine; entries of the
    older location ``<workdir>/failures.json`` are read too.  Several datasets in one folder
    share the file: each counts only its own attempts (``output``: the dataset's file name;
    older entries without it count for every dataset).
``<carry>/<structure_id>/`` (default ``data/dft/partial/``, committed with the data)
    The finished field directions of an unfinished structure (``efield{d}.ddb``,
    markers, ``.abo`` outputs): run directories do not outlive a work session here,
    these small files do, so a structure too long for one session is finished
    direction by direction over several.  Removed once the frame is written.  Several
    datasets in one folder share ``partial/``: a carried structure belongs to the dataset
    whose physics settings it records (its ``settings.json``); another dataset's run leaves
    it alone (neither uses, extends nor removes it) and computes that structure uncarried.
``<output>`` (default ``data/dft/catio3_dfpt.extxyz``)
    One frame per finished structure, appended by :func:`append_frame`, which checks under
    a lock that the ID is not in the file yet (:func:`ase_born.io.extxyz.write_frames` with
    ``append=True``: one write, fsync; a write that fails is rolled back).  Only a crash of
    the machine inside that write can leave a torn last frame: reading then fails naming
    the byte where the whole frames end (cut there, or restore the committed file).
    A structure is *done* when its ID is in this file; at the start of a run the carry
    directories of done structures are removed.

Stopping: SIGINT/SIGTERM set a stop flag; every process of the running ABINIT steps
(``mpirun`` and its ranks, :func:`ase_born.dft.abinit.kill_step`) is killed, finished
steps keep their markers, and the next ``run`` resumes at the first unfinished step of
each structure.  A pipeline killed outright (SIGKILL) takes its running step with it on
Linux (:func:`ase_born.dft.abinit.run_step`).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import math
import os
import re
import shutil
import signal
import socket
import sys
import threading
import time
import traceback
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from ase import Atoms

from ase_born.dft.abinit import (
    DIRECTIONS,
    GS_EXIT_WAIT_S,
    GS_TIMELIMIT_MARGIN_S,
    PARTIAL_SECONDS,
    PARTIAL_WFK,
    TOLERANCE_KEYS,
    AbinitError,
    AbinitSettings,
    StepInterrupted,
    StructurePaused,
    check_environment,
    gs_timelimit_s,
    read_marker,
    run_structure,
)
from ase_born.io.abinit import (
    AbinitParseError,
    read_abinit_output,
    read_run_times,
    read_scf_history,
    response_from_ddb,
    structure_difference,
)
from ase_born.io.extxyz import read_frames, write_frames

DEFAULT_OUTPUT = Path("data/dft/catio3_dfpt.extxyz")
DEFAULT_WORKDIR = Path("dft_runs/catio3")


def carry_directory(output: str | os.PathLike) -> Path:
    """Where the finished field directions of unfinished structures are kept: ``partial/``
    beside the dataset file (``data/dft/partial`` for the default output)."""
    return Path(output).parent / "partial"


#: share of a structure's cost in the ground state and in each field direction (ddk + efield):
#: measured GS 13 % (cubic5_0000) and 20 % (tilt10_0000); rounded up for planning.  The
#: scheduler uses the shares measured on the dataset's frames (:meth:`CostModel.step_share`)
#: and these only while fewer than :data:`MIN_SHARE_FRAMES` frames record their step times
F_GS, F_DIRECTION = 0.2, 0.3

#: a ground state continued from the wavefunctions of a cut try
#: (:data:`~ase_born.dft.abinit.PARTIAL_WFK`) is estimated at the seconds left of its
#: estimate plus this share of it: measured (data/dft/README.md, session 35) 18 SCF iterations
#: in all after a cut at 10 vs 16 uninterrupted (2 of 16 redone)
GS_CONTINUE_EXTRA_SHARE = 0.125

#: and at least this share of its estimate, whatever the cut try spent (the last SCF
#: iterations, forces, stress and the wavefunctions written again)
GS_CONTINUE_MIN_SHARE = 0.25

#: frames with step times (``wall_s_steps``) a kind needs before its own step shares are
#: used (else those of all kinds together, else :data:`F_GS` / :data:`F_DIRECTION`)
MIN_SHARE_FRAMES = 3

#: wall seconds per CPU second of one MPI rank when ABINIT has its cores to itself
#: (measured on finished frames: cubic5 1.01-1.03, tilt10_0000 1.02, pnma_eq 1.06)
WALL_PER_CPU = 1.06

#: a run shorter than this says little about the machine's load (start-up dominates it)
LOAD_MIN_WALL_S = 300.0

#: bounds of the machine-speed factor (:func:`run_plan` ``machine_speed``)
SPEED_BOUNDS = (0.25, 4.0)


def unloaded_wall_s(wall_s: float, cpu_s: float | None, wall_sum_s: float | None) -> float:
    """Wall seconds a run would have taken with its cores to itself.

    ``wall_s`` is its measured wall time; ``cpu_s`` and ``wall_sum_s`` are its CPU and wall
    seconds summed over its MPI ranks (:func:`~ase_born.io.abinit.read_run_times`).  A run
    at ``nice`` 19 beside other work gets less than a core per rank, so its wall time
    overstates the cost (tilt10_0001's ground state: 4541 s of wall time, 0.62 CPU
    seconds per wall second); the estimate is then :data:`WALL_PER_CPU` x its CPU seconds
    per rank.  Never more than ``wall_s``.
    """
    if not cpu_s or not wall_sum_s or wall_sum_s <= 0:
        return float(wall_s)
    return float(wall_s) * min(1.0, WALL_PER_CPU * float(cpu_s) / float(wall_sum_s))


def frame_idle_wall_s(frame: Atoms, ranks: int) -> float | None:
    """A finished frame's wall time at its idle-machine cost (:func:`unloaded_wall_s` from its
    ``cpu_s`` over its MPI ranks, ``ranks`` when it does not record them): a structure slowed
    down by other work counts as it would have run alone.  None without ``wall_s``."""
    if "wall_s" not in frame.info:
        return None
    wall = float(frame.info["wall_s"])
    if "cpu_s" not in frame.info:
        return wall
    return unloaded_wall_s(wall, float(frame.info["cpu_s"]), wall * int(frame.info.get("mpi_ranks", ranks)))


def frame_units(frame: Atoms, settings: AbinitSettings) -> float:
    """:func:`work_units` of a finished frame, on the k-mesh it records (else ``settings``')."""
    return work_units(frame, frame.info["kpts"] if "kpts" in frame.info else settings.kmesh(frame))


def frame_speed_ratio(frame: Atoms, reference: CostModel, settings: AbinitSettings, ranks: int) -> float | None:
    """A frame's idle-machine time (:func:`frame_idle_wall_s`) over ``reference``'s estimate
    of it: how fast the machine that made it is; None without either."""
    expected = reference.estimate_s(frame.info.get("kind"), frame_units(frame, settings), len(frame))
    idle = frame_idle_wall_s(frame, ranks)
    return idle / expected if expected and idle is not None else None


def machine_speed_ratios(frames: Sequence[Atoms], plan_ids: set[str], made_here: set[str],
                         settings: AbinitSettings, ranks: int) -> tuple[CostModel, dict[str, float | None]]:
    """The reference :class:`CostModel` (the plan's frames not in ``made_here``) and the
    :func:`frame_speed_ratio` of each frame in ``made_here`` (frames made on this machine,
    :func:`machine_frames`)."""
    reference = CostModel(ranks=ranks)
    for a in frames:
        if a.info["structure_id"] in plan_ids and a.info["structure_id"] not in made_here:
            reference.add_frame(a, settings)
    return reference, {a.info["structure_id"]: frame_speed_ratio(a, reference, settings, ranks)
                       for a in frames if a.info["structure_id"] in made_here}


def speed_factor(ratios: Sequence[float]) -> float:
    """The machine-speed factor from measured/expected ratios: their median within
    :data:`SPEED_BOUNDS`; 1.0 when none is measured."""
    return float(np.clip(np.median(ratios), *SPEED_BOUNDS)) if len(ratios) else 1.0


def step_load(marker: str | os.PathLike) -> float | None:
    """How many times longer than on an idle machine a finished step took (>= 1): the wall
    seconds in its done marker over :func:`unloaded_wall_s` (from the CPU and wall times in
    the ``.abo`` beside it).  None for a step shorter than :data:`LOAD_MIN_WALL_S` or
    without those times.  A step paused (``dft_pause.sh``) counts as loaded for the pause."""
    marker = Path(marker)
    try:
        wall = read_marker(marker)
    except (OSError, ValueError):
        return None
    times = read_run_times(marker.with_suffix(".abo"))
    if wall < LOAD_MIN_WALL_S or times is None:
        return None
    unloaded = unloaded_wall_s(wall, *times)
    return max(1.0, wall / unloaded) if unloaded > 0 else None


class StopRequested(Exception):
    """Raised inside a worker when the pipeline was asked to stop."""


class PipelineLocked(OSError):
    """Another pipeline holds the work directory's lock (an ``OSError``, as a busy file is:
    the command line reports it in one line)."""


#: lock file of a work directory, held by :func:`run_plan` for its whole call
LOCK_NAME = "run.lock"


@contextlib.contextmanager
def workdir_lock(workdir: str | os.PathLike) -> Iterator[None]:
    """Hold an exclusive, non-blocking ``flock`` on ``<workdir>/run.lock``.

    The holder writes its PID, host and start time into the file.  Raises
    :class:`PipelineLocked`, naming that holder, when another process holds it.  The lock
    goes with the process (also when it is killed); the file stays.
    """
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir / LOCK_NAME
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 300, 0).decode(errors="replace").strip() or "PID not recorded yet"
            raise PipelineLocked(
                f"{workdir} is in use by another pipeline ({holder}; lock {path}): two runs on one "
                "work directory would compute and append the same structures; stop it first"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"PID {os.getpid()} on {socket.gethostname()} since "
                      f"{time.strftime('%Y-%m-%d %H:%M:%S')}\n".encode(), 0)
        yield
    finally:
        os.close(fd)  # also releases the lock


def lock_holder(workdir: str | os.PathLike) -> str | None:
    """Who holds ``<workdir>/run.lock`` (the line its holder wrote), or ``None`` when no
    pipeline runs on ``workdir``.  Probes with a shared lock, released at once."""
    path = Path(workdir) / LOCK_NAME
    if not path.is_file():
        return None
    fd = os.open(path, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return os.pread(fd, 300, 0).decode(errors="replace").strip() or "PID not recorded yet"
        return None
    finally:
        os.close(fd)


def abinit_directories() -> set[Path] | None:
    """Working directories of the running ``abinit`` processes, from ``/proc``; ``None``
    where there is no ``/proc`` to tell."""
    proc = Path("/proc")
    if not (proc / "self" / "cwd").exists():
        return None
    found = set()
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if (entry / "comm").read_text().strip() == "abinit":
                found.add(Path(os.readlink(entry / "cwd")))
        except OSError:  # gone, or not ours to read
            continue
    return found


def cut_gs_seconds(directory: Path) -> float | None:
    """Wall seconds that the cut tries of the ground state in run ``directory`` spent
    (:data:`~ase_born.dft.abinit.PARTIAL_SECONDS`), when its wavefunctions are kept to
    continue from (:data:`~ase_born.dft.abinit.PARTIAL_WFK`); else None."""
    spent = directory / PARTIAL_SECONDS
    return read_marker(spent) if spent.is_file() and (directory / PARTIAL_WFK).is_file() else None


def run_progress(directory: Path, live: set[Path] | None) -> dict:
    """Steps of an unfinished structure's run directory: ``done_steps`` (``<step>.done``
    markers, in the order they finished) and ``open_step``, the step started last that has
    no marker (``None`` if every started step finished), with ``open_since`` (its input's
    time, ``YYYY-mm-dd HH:MM`` local) and ``open_running`` (the directory is in ``live``,
    :func:`abinit_directories`: an ABINIT process works there now; else the step was
    interrupted; ``None`` when ``live`` is), ``open_scf`` (:func:`scf_progress` of that
    step, or None), and ``gs_cut_s``: the seconds of a ground state cut early (ABINIT's time
    limit or a graceful stop) whose wavefunctions are kept to continue from (else None)."""
    markers = sorted(directory.glob("*.done"), key=lambda f: f.stat().st_mtime)
    cut_s = cut_gs_seconds(directory)
    started = [f for f in directory.glob("*.abi") if not (directory / f"{f.stem}.done").is_file()]
    last = max(started, key=lambda f: f.stat().st_mtime, default=None)
    return {
        "done_steps": [f.stem for f in markers],
        "open_step": last.stem if last is not None else None,
        "open_since": (time.strftime("%Y-%m-%d %H:%M", time.localtime(last.stat().st_mtime))
                       if last is not None else None),
        "open_running": (False if last is None
                         else None if live is None else directory.resolve() in live),
        "open_scf": scf_progress(directory, last.stem, last.stat().st_mtime) if last is not None else None,
        "gs_cut_s": cut_s,
    }


def scf_progress(directory: Path, step: str, since: float, now: float | None = None) -> dict | None:
    """How far the SCF cycle of step ``step`` (started at epoch ``since``) got, from its log
    (:func:`~ase_born.io.abinit.read_scf_history`): ``iterations``, the ``residual`` that
    its input's tolerance bounds (``residual_name`` vres2 for ``tolvrs`` steps, residm for
    the ddk's ``tolwfr``) and that ``target``, ``minutes_per_iteration`` (wall time since
    the start over iterations: setup included) and ``iterations_left``, projected at the
    mean rate (decades per iteration) of the last five iterations; None when that rate is
    under 0.05 (not converging steadily) or the target is met or unknown.  None without
    any iteration."""
    history = read_scf_history(directory / f"{step}.log")
    if not history:
        return None
    try:
        text = (directory / f"{step}.abi").read_text()
    except OSError:
        text = ""
    tol = re.search(r"^\s*(tolvrs|tolwfr)\s+(\S+)", text, re.MULTILINE)
    name = "residm" if tol is not None and tol.group(1) == "tolwfr" else "vres2"
    res = [row[1] if name == "residm" else row[2] for row in history]
    target = float(tol.group(2).replace("d", "e").replace("D", "E")) if tol is not None else None
    k = min(5, len(res) - 1)
    left = None
    if target is not None and k > 0 and min(res[-1], res[-k - 1]) > 0 and res[-1] > target:
        rate = (math.log10(res[-k - 1]) - math.log10(res[-1])) / k
        if rate >= 0.05:
            left = math.ceil((math.log10(res[-1]) - math.log10(target)) / rate)
    elapsed = (time.time() if now is None else now) - since
    return {"iterations": len(res), "residual": res[-1], "residual_name": name, "target": target,
            "minutes_per_iteration": max(elapsed, 0.0) / 60 / len(res), "iterations_left": left}


@contextlib.contextmanager
def _output_lock(output: Path) -> Iterator[None]:
    """Exclusive ``flock`` on the directory of ``output``: serialises the check-then-append
    of :func:`append_frame` between processes (whatever their work directories).  The
    directory is locked, not the file, because
    :func:`~ase_born.io.extxyz.write_frames` locks the file itself."""
    output.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(output.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def append_frame(output: str | os.PathLike, frame: Atoms, log: Callable[[str], None] = print) -> bool:
    """Append ``frame`` to ``output`` unless a frame with its ``structure_id`` is there already.

    The check and the append happen under one lock (:func:`_output_lock`), so two
    processes finishing the same structure append it once.  Returns whether it was
    appended; a skipped duplicate is reported through ``log``.
    """
    output = Path(output)
    sid = str(frame.info["structure_id"])
    with _output_lock(output):
        if sid in finished_ids(output):
            log(f"{sid} is already in {output}: not appended again")
            return False
        write_frames(output, frame, append=True)
    return True


def failures_file(output: str | os.PathLike) -> Path:
    """Where failed attempts are counted: ``failures.json`` beside the dataset file
    (``data/dft/failures.json`` for the default output), committed with it."""
    return Path(output).parent / "failures.json"


def _own_attempt(attempt: dict, output: str | os.PathLike) -> bool:
    """Whether a ``failures.json`` entry is an attempt for the dataset ``output`` (entries
    from before the ``output`` field count for every dataset)."""
    return attempt.get("output", Path(output).name) == Path(output).name


def load_failures(output: str | os.PathLike, workdir: str | os.PathLike | None = None) -> dict[str, list[dict]]:
    """Failed attempts per structure ID of the dataset ``output`` from :func:`failures_file`
    (attempts of other datasets in that folder left out, :func:`_own_attempt`), merged with
    the older location ``<workdir>/failures.json`` when it exists (an attempt in both counts
    once)."""
    merged: dict[str, list[dict]] = {}
    paths = [failures_file(output)] + ([Path(workdir) / "failures.json"] if workdir is not None else [])
    for path in paths:
        for sid, attempts in _load_json(path, {}).items():
            have = merged.setdefault(sid, [])
            for a in attempts:
                if a not in have and _own_attempt(a, output):
                    have.append(a)
    for attempts in merged.values():
        attempts.sort(key=lambda a: a.get("time", 0.0))
    return {sid: attempts for sid, attempts in merged.items() if attempts}


def save_failures(output: str | os.PathLike, failures: dict[str, list[dict]]) -> None:
    """Write ``failures`` (the attempts of ``output``, :func:`load_failures`) to
    :func:`failures_file`, keeping the entries of the other datasets there."""
    path = failures_file(output)
    path.parent.mkdir(parents=True, exist_ok=True)
    merged = {sid: [a for a in attempts if not _own_attempt(a, output)]
              for sid, attempts in _load_json(path, {}).items()}
    for sid, attempts in failures.items():
        merged[sid] = sorted(merged.get(sid, []) + list(attempts), key=lambda a: a.get("time", 0.0))
    _dump_json(path, {sid: attempts for sid, attempts in merged.items() if attempts})


def load_plan(path: str | os.PathLike) -> list[Atoms]:
    """Read a plan and check its IDs are present and unique."""
    if not Path(path).is_file():
        where = "" if Path(path).is_absolute() else f" (relative to {Path.cwd()})"
        raise FileNotFoundError(
            f"plan file not found: {path}{where}; run from the repository root, pass the "
            "plan's path, or write one with `ase-born dft plan`"
        )
    plan = read_frames(path)
    ids = [a.info.get("structure_id") for a in plan]
    if any(i is None for i in ids):
        raise ValueError(f"{path}: every structure needs info['structure_id']")
    dup = [i for i, c in Counter(ids).items() if c > 1]
    if dup:
        raise ValueError(f"{path}: duplicate structure IDs {dup[:5]}")
    return plan


def finished_ids(output: str | os.PathLike) -> set[str]:
    """IDs of structures already in the dataset file."""
    if not Path(output).is_file() or Path(output).stat().st_size == 0:
        return set()
    return {str(a.info["structure_id"]) for a in read_frames(output)}


def _load_json(path: Path, default):
    if path.is_file():
        return json.loads(path.read_text())
    return default


def _dump_json(path: Path, obj) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}.{threading.get_ident()}")
    tmp.write_text(json.dumps(obj, indent=1, sort_keys=True))
    os.replace(tmp, path)


def _physics_diff(stored: dict, requested: dict) -> dict:
    """Settings other than tolerances that differ: ``{key: (stored, requested)}``."""
    return {k: (stored.get(k), requested.get(k)) for k in sorted(set(stored) | set(requested))
            if k not in TOLERANCE_KEYS and stored.get(k) != requested.get(k)}


def check_settings(workdir: Path, settings: AbinitSettings) -> None:
    """Record ``settings`` for ``workdir``; refuse other physics settings later.

    Tolerances may change.  Before the stored ones are replaced, every structure
    directory with finished steps but no settings record of its own gets the stored
    settings as its record: it was started with them and finishes with them.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir / "settings.json"
    current = settings.to_dict()
    stored = _load_json(path, None)
    if stored is None:
        _dump_json(path, current)
        return
    diff = _physics_diff(stored, current)
    if diff:
        raise ValueError(
            f"{workdir} was started with different ABINIT settings {diff} (stored, requested); "
            "use another --workdir/--output for other settings"
        )
    if stored != current:
        for d in sorted(p for p in workdir.iterdir() if p.is_dir()):
            if any(d.glob("*.done")) and not (d / "settings.json").is_file():
                _dump_json(d / "settings.json", stored)
        _dump_json(path, current)


def check_output_settings(output: str | os.PathLike, settings: AbinitSettings,
                          frames: Sequence[Atoms] | None = None) -> None:
    """Refuse ``settings`` whose physics settings differ from those recorded in the frames of
    ``output`` (``info["dft_settings"]``; tolerances may differ, as in :func:`check_settings`).

    The work directory's ``settings.json`` does not outlive a fresh machine; the dataset
    does.  Keys a frame does not record (older versions) are not compared.  ``frames``:
    the frames of ``output`` when already read.

    Raises
    ------
    ValueError
        Naming the first differing frame and the settings ``{key: (recorded, requested)}``.
    """
    if frames is None:
        output_path = Path(output)
        frames = read_frames(output_path) if output_path.is_file() and output_path.stat().st_size else []
    requested = settings.to_dict()
    for frame in frames:
        raw = frame.info.get("dft_settings")
        if raw is None:
            continue
        recorded = json.loads(raw) if isinstance(raw, str) else dict(raw)
        diff = {k: (recorded[k], requested.get(k)) for k in sorted(recorded)
                if k not in TOLERANCE_KEYS and recorded[k] != requested.get(k)}
        if diff:
            raise ValueError(
                f"{output} holds frames computed with other ABINIT settings than requested "
                f"({frame.info.get('structure_id', '?')}: {diff} (recorded, requested)); the physics "
                "settings must not vary within a dataset: use another --output for other settings"
            )


def settings_changes(old: AbinitSettings, new: AbinitSettings) -> dict[str, tuple]:
    """``{key: (old value, new value)}`` of the settings that differ."""
    a, b = old.to_dict(), new.to_dict()
    return {k: (v, b[k]) for k, v in a.items() if v != b[k]}


def no_tighter(new: AbinitSettings, old: AbinitSettings, natoms: int) -> bool:
    """Whether every tolerance of ``new`` is at least as loose as ``old``'s for a cell of
    ``natoms`` atoms (and ``nstep`` no smaller): steps run under ``old`` then meet ``new``."""
    return (new.tolvrs_gs >= old.tolvrs_gs and new.tolwfr_ddk >= old.tolwfr_ddk
            and new.efield_tolvrs(natoms) >= old.efield_tolvrs(natoms) and new.nstep >= old.nstep)


def structure_settings(directory: Path, settings: AbinitSettings, natoms: int | None = None,
                       log: Callable[[str], None] | None = None) -> AbinitSettings:
    """The settings a structure runs with: those it started with, recorded in its directory.

    A structure with finished steps keeps its recorded settings (physics settings other
    than ``settings``'s are refused), unless ``settings``' tolerances are no tighter for
    its ``natoms`` atoms (:func:`no_tighter`): then its remaining steps take them and the
    record is replaced, since the finished steps met them too (session 41: the E-field
    ``tolvrs`` per 5 atoms reaches a 20-atom cell started under the fixed 1e-6).  One with
    no finished step (new, or failed before its first step ended) gets ``settings``, so a
    larger ``nstep`` reaches a retry.
    """
    path = directory / "settings.json"
    if path.is_file() and any(directory.glob("*.done")):
        recorded = json.loads(path.read_text())
        diff = _physics_diff(recorded, settings.to_dict())
        if diff:
            raise ValueError(f"{directory} was started with different ABINIT settings {diff} (recorded, requested)")
        own = AbinitSettings.from_dict(recorded)
        if own == settings or natoms is None or not no_tighter(settings, own, natoms):
            return own
        if log is not None:
            log(f"{directory.name}: its remaining steps take the requested tolerances, no tighter than "
                f"those it started with {settings_changes(own, settings)} (recorded, requested)")
    directory.mkdir(parents=True, exist_ok=True)
    _dump_json(path, settings.to_dict())
    return settings


def read_run_directory(directory: str | os.PathLike) -> Atoms:
    """The results of a finished structure directory: ground state + Born charges + ε∞.

    Reads ``gs.abo`` and either the per-direction databases ``efield{1,2,3}.ddb``
    (:func:`~ase_born.io.abinit.response_from_ddb`; unknown ε∞ elements filled by
    :func:`complete_by_symmetry` where the structure's symmetry fixes them) or, for
    directories of the older layout (``efield.done``), the tables of ``efield.abo``.
    """
    directory = Path(directory)
    if (directory / "efield.done").is_file() or not (directory / "efield1.ddb").is_file():
        return read_abinit_output(directory / "gs.abo", directory / "efield.abo")
    parsed = read_abinit_output(directory / "gs.abo")
    z, eps = response_from_ddb([directory / f"efield{d}.ddb" for d in DIRECTIONS])
    parsed.arrays["born_effective_charges"] = z
    parsed.info["epsilon_inf"] = complete_by_symmetry(eps, parsed)
    parsed.info["acoustic_sum"] = z.sum(axis=0)
    return parsed


def check_same_structure(parsed: Atoms, structure: Atoms) -> None:
    """Raise :class:`AbinitParseError` unless the structure ABINIT echoed is the plan's
    (same species order, positions and cell to 1e-6 Å)."""
    diff = structure_difference(structure, parsed)
    if diff is not None:
        raise AbinitParseError(f"ABINIT structure differs from the plan ({diff})")


def frame_from_run(structure: Atoms, directory: Path, settings: AbinitSettings, timings: dict, ranks: int) -> Atoms:
    """Parse a finished structure directory into a dataset frame.

    The frame keeps the plan's exact positions/cell (checked against ABINIT's
    echo to 1e-6 Å) and carries provenance in ``info``.
    """
    parsed = read_run_directory(directory)
    check_same_structure(parsed, structure)
    frame = structure.copy()
    frame.arrays["born_effective_charges"] = parsed.arrays["born_effective_charges"]
    frame.calc = parsed.calc
    frame.calc.atoms = frame
    frame.info.update(
        epsilon_inf=parsed.info["epsilon_inf"],
        acoustic_sum=parsed.info["acoustic_sum"],
        dft_code=f"ABINIT {parsed.info.get('abinit_version', '?')}",
        xc="PBEsol (libxc ixc -116133)" if settings.ixc == -116133 else f"ixc {settings.ixc}",
        dft_settings=json.dumps(settings.to_dict(), sort_keys=True),
        kpts=np.array(settings.kmesh(structure)),
        mpi_ranks=ranks,
        wall_s=float(sum(timings.values())),
        wall_s_steps=json.dumps({k: round(v, 1) for k, v in timings.items()}),
    )
    cpu = cpu_seconds(directory)
    if cpu is not None:
        frame.info["cpu_s"] = cpu
    return frame


def complete_by_symmetry(eps: np.ndarray, atoms: Atoms, symprec: float = 1e-4) -> np.ndarray:
    """Fill unknown (NaN) elements of a symmetric tensor that the crystal's point group fixes.

    The tensor must lie in the space of symmetric tensors invariant under the
    rotations of ``atoms`` (spglib, ``symprec`` Å); its coordinates in a basis of
    that space are fitted to the known elements, and the NaN elements are taken from
    the fit when the known ones determine it (they do for ``pnma_eq``: mmm makes
    ε∞ diagonal).  Otherwise the NaNs stay.
    """
    eps = np.asarray(eps, dtype=float)
    if not np.isnan(eps).any():
        return eps
    import spglib

    cell = (atoms.cell.array, atoms.get_scaled_positions(), atoms.numbers)
    sym = spglib.get_symmetry(cell, symprec=symprec)
    lat = atoms.cell.array.T  # columns = lattice vectors
    rots = [lat @ r @ np.linalg.inv(lat) for r in (sym["rotations"] if sym else [np.eye(3)])]
    basis = []
    for i, j in ((0, 0), (1, 1), (2, 2), (0, 1), (0, 2), (1, 2)):
        e = np.zeros((3, 3))
        e[i, j] = e[j, i] = 1.0
        basis.append(sum(r @ e @ r.T for r in rots) / len(rots))
    b = np.array([m.ravel() for m in basis]).T  # (9, 6), spans the invariant tensors
    u, sv, _ = np.linalg.svd(b, full_matrices=False)
    inv = u[:, sv > 1e-8 * sv.max()]  # orthonormal basis of the invariant space
    known = ~np.isnan(eps.ravel())
    if np.linalg.matrix_rank(inv[known]) < inv.shape[1]:
        return eps
    coef, *_ = np.linalg.lstsq(inv[known], eps.ravel()[known], rcond=None)
    out = eps.ravel().copy()
    out[~known] = (inv @ coef)[~known]
    return out.reshape(3, 3)


def cpu_seconds(directory: str | os.PathLike) -> float | None:
    """CPU seconds of a finished structure (all steps, all MPI ranks), from its ``.abo`` files.

    ``None`` unless the GS, all ddk directions (one run or three) and the efield
    step(s) report their times.  For a structure finished over several sessions it is
    the sum of the runs that were kept: each field direction once, the last ground
    state only.
    """
    directory = Path(directory)
    ddk = ["ddk.abo"] if (directory / "ddk.abo").is_file() else [f"ddk{d}.abo" for d in DIRECTIONS]
    efield = ["efield.abo"] if (directory / "efield.done").is_file() else [f"efield{d}.abo" for d in DIRECTIONS]
    times = [read_run_times(directory / name) for name in ["gs.abo", *ddk, *efield]]
    if any(t is None for t in times):
        return None
    extra = [read_run_times(p) for p in sorted(directory.glob("eps_ddk*.abo"))]  # ddk runs again for ε∞
    return float(sum(t[0] for t in times + [e for e in extra if e is not None]))


def work_units(atoms: Atoms, kmesh: Sequence[int]) -> float:
    """Relative cost of one structure: N_atoms³ × k-points of its full mesh.

    Bands and plane waves both grow with N, and at 20 atoms the N³ work
    (orthogonalisation of 80 bands) dominates: one ddk iteration per k-point took
    0.093 s on cubic5 and 4.7 s on pnma_eq (2 ranks), 51x for 4x the atoms (N^2.8).
    The DFPT steps use no symmetry (ABINIT's little group of the ddk and field
    perturbations is the identity even for Pnma), so symmetric structures are not
    cheaper.  Only kinds without a measured structure rely on this scaling (the
    estimate then comes from the other kinds' rates and is pessimistic for 10
    atoms: cubic5 → tilt10 measured 2.7x, N³ says 5.6x).
    """
    return float(len(atoms) ** 3 * int(np.prod(kmesh)))


@dataclass
class CostModel:
    """Wall seconds per :func:`work_units` unit, per kind, measured on finished frames.

    ``estimate_s`` uses the median rate of the structure's kind; a kind with no finished
    structure yet is scaled from the kinds whose cells have the nearest number of atoms
    (given ``n_atoms``; the rate per unit differs by kind, not monotonically with size:
    ``ase-born dft status`` prints the current rates), else from all kinds.
    ``step_share`` splits a structure's estimate into its ABINIT steps.
    """

    ranks: int

    def __post_init__(self) -> None:
        self.rates: dict[str, list[float]] = defaultdict(list)
        self.atoms: dict[str, int] = {}
        self.shares: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))

    def add(self, kind: str, units: float, wall_s: float, ranks: int | None = None,
            n_atoms: int | None = None) -> None:
        """Record a finished structure (its wall time on ``ranks`` MPI ranks)."""
        if units > 0 and wall_s > 0:
            self.rates[str(kind)].append(wall_s * (ranks or self.ranks) / self.ranks / units)
            if n_atoms:
                self.atoms[str(kind)] = int(n_atoms)

    def add_frame(self, frame: Atoms, settings: AbinitSettings) -> None:
        wall = frame_idle_wall_s(frame, self.ranks)
        if wall is None:
            return
        ranks = int(frame.info.get("mpi_ranks", self.ranks))
        self.add(frame.info.get("kind"), frame_units(frame, settings), wall, ranks, n_atoms=len(frame))
        steps = frame.info.get("wall_s_steps")
        if isinstance(steps, str):
            try:
                steps = json.loads(steps)
            except ValueError:
                return
        if isinstance(steps, dict):
            self.add_steps(frame.info.get("kind"), steps)

    def add_steps(self, kind: str, steps: dict) -> None:
        """Record a finished structure's step times (``wall_s_steps``: ``gs``, and ``ddk`` and
        ``efield`` summed over the field directions) as shares of its total: the ground state's
        and one direction's ddk and efield step each.  Anything else is ignored."""
        try:
            times = {k: float(steps[k]) for k in ("gs", "ddk", "efield")}
        except (KeyError, TypeError, ValueError):
            return
        total = sum(times.values())
        if set(steps) != set(times) or not all(math.isfinite(t) and t > 0 for t in times.values()):
            return
        for step, t in times.items():
            self.shares[str(kind)][step].append(t / total / (1 if step == "gs" else len(DIRECTIONS)))

    def step_share(self, kind: str, step: str) -> float:
        """Share of a structure's wall time in one step (``gs``, ``ddk``, ``efield``: one field
        direction's): the median over the kind's frames with step times when it has
        :data:`MIN_SHARE_FRAMES`, else over all kinds' frames, else :data:`F_GS` and half of
        :data:`F_DIRECTION`.  Measured (71 frames, session 37): GS 0.18-0.22 by kind, ddk 0.12 and
        efield 0.15 per direction (the fixed shares: 0.2, 0.15 and 0.15)."""
        if step not in ("gs", "ddk", "efield"):
            raise ValueError(f"unknown step {step!r} (gs, ddk, efield)")
        own = self.shares.get(str(kind), {}).get(step, [])
        pooled = [v for by_step in self.shares.values() for v in by_step.get(step, [])]
        for values in (own, pooled):
            if len(values) >= MIN_SHARE_FRAMES:
                return float(np.median(values))
        return F_GS if step == "gs" else 0.5 * F_DIRECTION

    def estimate_s(self, kind: str, units: float, n_atoms: int | None = None) -> float | None:
        rates = self.rates.get(str(kind))
        if not rates and n_atoms and self.atoms:
            gap = {k: abs(np.log(n / n_atoms)) for k, n in self.atoms.items() if self.rates.get(k)}
            if gap:
                nearest = min(gap.values())
                rates = [r for k, g in gap.items() if np.isclose(g, nearest) for r in self.rates[k]]
        rates = rates or [r for rs in self.rates.values() for r in rs]
        return float(np.median(rates)) * units if rates else None


@dataclass
class Progress:
    """Progress bookkeeping with the cost model for the ETA."""

    total: int
    model: CostModel
    done: int = 0

    def eta_s(self, pending: Sequence[tuple[str, float, int]], jobs: int) -> float | None:
        """ETA of ``pending`` ``(kind, work units, atoms)`` triples run ``jobs`` at a time."""
        est = [self.model.estimate_s(k, u, n) for k, u, n in pending]
        if any(e is None for e in est):
            return None
        return sum(est) / max(jobs, 1)


#: this many structures failing in a row, each within :data:`FAST_FAILURE_S` of its start and
#: with the same reason, stop a call as a setup problem (their failures are kept flagged
#: ``setup_suspect`` and not counted, unless the same structures already failed so in an
#: earlier call: then they are their own failures, counted, and the call goes on)
SYSTEMATIC_FAILURES = 3
FAST_FAILURE_S = 60.0


def counted_attempts(attempts: list[dict]) -> int:
    """Failed attempts that count towards ``max_attempts`` (not those of a first
    fast identical streak, flagged ``setup_suspect``)."""
    return sum(not a.get("setup_suspect") for a in attempts)


class SystematicFailure(RuntimeError):
    """Structures failed in a row, fast and for the same reason: a setup problem."""


def _fmt_s(s: float | None) -> str:
    if s is None:
        return "?"
    h, rem = divmod(int(s), 3600)
    return f"{h}h{rem // 60:02d}m" if h else f"{rem // 60}m{rem % 60:02d}s"


_CARRIED = ("efield{d}.ddb", "efield{d}.done", "efield{d}.abo", "ddk{d}.done", "ddk{d}.abo")


def carried_directions(carry_dir: Path) -> list[int]:
    """Field directions finished and carried over for one structure."""
    return [d for d in DIRECTIONS if (carry_dir / f"efield{d}.ddb").is_file() and (carry_dir / f"efield{d}.done").is_file()]


def ground_state_kept(directory: Path) -> bool:
    """Whether a run directory holds a finished ground state with its wavefunctions."""
    return (directory / "gs.done").is_file() and (directory / "gs_o_WFK").is_file()


def kept_steps(directory: Path) -> list[str]:
    """The finished ABINIT steps a run directory keeps for a structure to continue on (its
    ground state with wavefunctions, then the ddk and field steps done on it), in run order;
    empty without a kept ground state (the later steps continue from its wavefunctions)."""
    if not ground_state_kept(directory):
        return []
    return ["gs"] + [f"{step}{d}" for d in DIRECTIONS for step in ("ddk", "efield")
                     if (directory / f"{step}{d}.done").is_file()]


#: calls with a deadline made on a work directory: ``[{"start": epoch, "end": epoch,
#: "frames": [structure IDs that measured the machine's speed]}, ...]``
CALLS_FILE = "calls.json"


def record_call(workdir: Path, seconds_left: float) -> float:
    """Add this call (now, and the wall time its deadline falls at) to :data:`CALLS_FILE`;
    returns its ``start``, the key of :func:`record_call_frame`."""
    now = round(time.time(), 1)
    calls = _load_json(workdir / CALLS_FILE, [])
    calls.append({"start": now, "end": round(now + seconds_left, 1)})
    _dump_json(workdir / CALLS_FILE, calls)
    return now


def record_call_frame(workdir: Path, start: float, structure_id: str) -> None:
    """Add a structure finished in the call that began at ``start`` (:func:`record_call`) and
    measured this machine's speed to that call's ``frames`` in :data:`CALLS_FILE`."""
    calls = _load_json(workdir / CALLS_FILE, [])
    for call in calls:
        if isinstance(call, dict) and call.get("start") == start:
            call.setdefault("frames", []).append(str(structure_id))
            _dump_json(workdir / CALLS_FILE, calls)
            return


def machine_frames(workdir: str | os.PathLike) -> list[str]:
    """Structure IDs that measured the machine's speed in the calls recorded in
    :data:`CALLS_FILE` (:func:`record_call_frame`): frames made on this machine, since the
    work directory lives on it."""
    ids: list[str] = []
    for call in _load_json(Path(workdir) / CALLS_FILE, []):
        frames = call.get("frames") if isinstance(call, dict) else None
        if isinstance(frames, list):
            ids += [str(f) for f in frames if str(f) not in ids]
    return ids


def machine_kept(workdir: str | os.PathLike, now: float | None = None) -> bool:
    """Whether an earlier call on ``workdir`` ran to its deadline (:data:`CALLS_FILE`): the
    files outlived a whole call, so the machine is kept between work sessions.  A call
    restarted within the same session sees only calls whose deadline is still ahead."""
    now = time.time() if now is None else now
    calls = _load_json(Path(workdir) / CALLS_FILE, [])
    return any(isinstance(c, dict) and isinstance(c.get("end"), (int, float)) and c["end"] < now for c in calls)


def resolve_step_level(choice: str, workdir: str | os.PathLike, output: str | os.PathLike,
                       now: float | None = None) -> bool:
    """``run_plan(step_level=...)`` from ``"yes"``, ``"no"`` or ``"auto"``.  ``auto`` says yes

    * when the work directory holds a started step (an ABINIT input, finished or not) of an
      unfinished structure, i.e. it survived an earlier call (on a machine that keeps its
      files a structure may then span calls).  A ground state interrupted by the end of a
      session counts: before session 35 only finished steps did, so a kept machine whose
      last call was cut during a 20-atom ground state went back to the whole-direction rule,
      under which a 20-atom cell never starts in a 2.6 h call.  A pipeline restarted within
      one session on a fresh machine also answers yes (say ``no`` there when the machine
      will not be kept);
    * or when an earlier call on the work directory ran to its deadline
      (:func:`machine_kept`; session 36): the machine was kept from one session to the
      next, as in most sessions so far (8 of sessions 27-35), so a 20-atom cell may start
      there; without this rule none ever started, since no 20-atom step was started.

    ``now``: the wall time (epoch seconds) the earlier calls' deadlines are compared with."""
    if choice in ("yes", "no"):
        return choice == "yes"
    if choice != "auto":
        raise ValueError(f"step level must be 'yes', 'no' or 'auto', got {choice!r}")
    workdir = Path(workdir)
    if not workdir.is_dir():
        return False
    if machine_kept(workdir, now):
        return True
    done = finished_ids(output)
    return any(d.is_dir() and d.name not in done and any(d.glob("*.abi")) for d in workdir.iterdir())


def partial_born_charges(carry_dir: str | os.PathLike, structure: Atoms) -> tuple[np.ndarray, list[int]]:
    """Z* of an unfinished structure from its carried field directions.

    Returns ``(z, directions)``: ``z`` in CONVENTIONS order with NaN rows where the
    missing directions are needed (:func:`~ase_born.io.abinit.response_from_ddb` with
    ``partial=True``), and the finished reduced directions.

    Raises
    ------
    FileNotFoundError
        When no direction is carried in ``carry_dir``.
    AbinitParseError
        When the carried ground-state output (the run the DDBs continue) is of another
        structure than ``structure`` (:func:`check_same_structure`).
    """
    carry_dir = Path(carry_dir)
    dirs = carried_directions(carry_dir)
    if not dirs:
        raise FileNotFoundError(f"no finished field direction in {carry_dir}")
    try:
        check_same_structure(read_abinit_output(carry_dir / "gs.abo"), structure)
    except AbinitParseError as exc:
        raise AbinitParseError(f"{carry_dir}: carried data of another structure than "
                               f"{structure.info.get('structure_id', '?')}: {exc}") from exc
    paths = [carry_dir / f"efield{d}.ddb" for d in dirs]
    z, _ = response_from_ddb(paths, partial=True)
    return z, dirs


def save_direction(directory: Path, carry_dir: Path, d: int) -> None:
    """Copy field direction ``d`` (and the ground state's output) into the carry directory.

    Markers are copied last and each file atomically, so a half-copied direction is
    not taken for a finished one.
    """
    carry_dir.mkdir(parents=True, exist_ok=True)
    names = [n.format(d=d) for n in _CARRIED] + ["gs.abo", "gs.done", "settings.json"]
    for name in sorted(names, key=lambda n: n.endswith(".done")):
        src = directory / name
        if src.is_file():
            tmp = carry_dir / f".{name}.tmp"
            shutil.copyfile(src, tmp)
            os.replace(tmp, carry_dir / name)


def restore_carried(carry_dir: Path, directory: Path) -> None:
    """Copy carried files into a run directory that lacks them.

    As in :func:`save_direction`, each file is copied to a temporary name and renamed, and
    the ``.done`` markers come last: a copy killed part-way leaves no short file under its
    final name (which a later call would keep, beside a marker calling it finished).

    The ground state's marker ``gs.done`` is not restored (it stays in the carry directory
    for the timing estimates): the carried directions need the ground state run again
    anyway, and a marker put beside the wavefunctions of a later ground state that failed
    (e.g. unconverged, having written its WFK) would pass that one off as finished.
    """
    if not carry_dir.is_dir():
        return
    directory.mkdir(parents=True, exist_ok=True)
    for src in sorted(carry_dir.iterdir(), key=lambda p: p.name.endswith(".done")):
        if src.name == "gs.done":
            continue
        if src.is_file() and not src.name.startswith(".") and not (directory / src.name).exists():
            tmp = directory / f".{src.name}.tmp"
            shutil.copyfile(src, tmp)
            os.replace(tmp, directory / src.name)


def carried_settings_diff(carry_dir: Path, reference: dict) -> dict:
    """Physics settings in which the carried data in ``carry_dir`` (its ``settings.json``)
    differ from ``reference`` (an :meth:`AbinitSettings.to_dict`): not empty when they
    belong to another dataset sharing the carry directory; empty without a record."""
    return _physics_diff(_load_json(carry_dir / "settings.json", reference), reference)


def run_plan(
    plan_path: str | os.PathLike,
    output: str | os.PathLike = DEFAULT_OUTPUT,
    workdir: str | os.PathLike = DEFAULT_WORKDIR,
    settings: AbinitSettings | None = None,
    ranks: int = 2,
    jobs: int = 1,
    timeout_s: float | None = 6 * 3600.0,
    max_attempts: int = 2,
    max_structures: int | None = None,
    only_ids: Sequence[str] | None = None,
    max_atoms: int | None = None,
    first_ids: Sequence[str] | None = None,
    nice: int = 19,
    log: Callable[[str], None] = print,
    install_signal_handlers: bool = True,
    runner: Callable[..., dict] = run_structure,
    deadline: float | None = None,
    grace_s: float = 0.0,
    safety: float = 1.2,
    clock: Callable[[], float] = time.time,
    carry: str | os.PathLike | None = "auto",
    step_level: bool = False,
    complete_epsilon: bool = True,
    machine_speed: bool = False,
) -> dict[str, int]:
    """Compute every unfinished structure of a plan; resumable and interruptible.

    Parameters
    ----------
    plan_path : path-like
        Plan (extxyz with ``structure_id``).
    output : path-like
        Dataset file, appended one frame per finished structure.
    workdir : path-like
        Directory of per-structure run directories.
    settings : AbinitSettings
        Numerical settings (default :class:`AbinitSettings()`).
    ranks, jobs : int
        MPI ranks per structure and structures run at the same time.
    timeout_s : float or None
        Wall-clock limit per ABINIT step.
    max_attempts : int
        Failures after which a structure is skipped.
    max_structures : int, optional
        Stop after this many structures finished in this call.
    only_ids : sequence of str, optional
        Restrict to these IDs (plan order kept).
    max_atoms : int, optional
        Leave structures with more atoms for a later call (their carried directions stay
        in ``data/dft/partial/``): on a machine that will not survive the session, a 20-atom
        cell whose steps left take longer than the call only costs time the small cells could use.
    first_ids : sequence of str, optional
        Start these structures first, in this order, then the rest in plan order; structures
        with finished field directions carried over, then those whose run directory keeps
        finished steps (:func:`kept_steps`), still come before them (their work is the closest
        to a frame).  Session 40: the hot 20-atom Pnma cells, where the default Born model is
        weakest, put ahead of the 10-atom cells.
    runner : callable
        ``run_structure``-compatible function (tests substitute a fake ABINIT).
    deadline : float, optional
        Epoch seconds (``clock()``) at which this call stops (running ABINIT steps are
        killed, as at the end of a work session).  A structure starts only if
        ``safety`` x the estimated wall time of its ground state (unless its run
        directory keeps the wavefunctions) and one field direction (:class:`CostModel` and
        its :meth:`~CostModel.step_share`; times the load of the latest step finished in
        this call, :func:`step_load`) fits before it; the others are deferred, not
        failed.  A started structure is paused before a step (without ``step_level``:
        before a field direction) that no longer fits (its finished steps are kept) and the
        time goes to structures that fit; it resumes in the same call once its next step
        fits again (the load that paused it has gone).  The call ends when nothing fits.
    grace_s : float
        Seconds after ``deadline`` that the steps running then may still use: no step
        starts after the deadline, and the running ones are killed only at ``deadline +
        grace_s``, so that a step admitted in time but slowed (other work on the cores)
        is not lost minutes before its end.  A ground state gets ABINIT's ``--timelimit``
        at ``deadline + grace_s`` minus :data:`~ase_born.dft.abinit.GS_TIMELIMIT_MARGIN_S`:
        cut there, it keeps its wavefunctions and continues in a later call (the
        structure is deferred, not tried again in this call).  With a grace shorter than
        that margin the time limit falls before the deadline, and a ground state starts
        only when it is expected to end before its time limit.
    step_level : bool
        For a work directory that survives between calls (a machine that keeps its
        files): a structure starts, and each of its ABINIT steps runs, when that step
        alone fits before the deadline, so structures longer than one call (20-atom
        cells: ground state + one direction ≈ 3 h) progress step by step.  Default:
        the ground state and a whole field direction must fit, the safe rule when run
        directories may be lost and only finished directions are carried
        (:func:`resolve_step_level` chooses from the work directory).
    complete_epsilon : bool
        Passed to the runner (:func:`~ase_born.dft.abinit.run_structure`): run the ddk of
        directions finished on another ground state again (``eps_ddk{c}``, optional steps
        that run only when they and the next field direction fit before the deadline, with
        ``step_level`` also every step the structure still needs when those fit without
        it) so that the frame's ε∞ is complete.
    machine_speed : bool
        With ``deadline``: scale the cost model's estimates by this machine's speed, the
        median over the frames finished in this call of their idle-machine time over what
        the model (the dataset's frames, made on other machines) expected, bounded by
        :data:`SPEED_BOUNDS`; a structure's own measured steps are not scaled.  Until a
        frame has finished, the first structure started is the cheapest one that fits
        (a cubic cell, minutes), so that the speed is known before long structures are
        judged.  Session 36: a machine 2.2x faster than the model deferred a 20-atom cell
        whose ground state and first direction would have fitted.  The frames that measured
        the speed are recorded in the work directory (:func:`machine_frames`): a later call
        on it (the same machine) starts with their speed, without a calibration structure,
        and the estimates come from the frames made elsewhere only (the machine's own would
        count its speed twice).  The command line turns it on; off by default here.
    carry : path-like, "auto" or None
        Directory for the finished field directions of unfinished structures (see
        the module doc); ``"auto"``: :func:`carry_directory` of ``output``; ``None``
        keeps them only in the run directories.
    clock : callable
        Time source for ``deadline`` (tests substitute a fake clock).

    Returns
    -------
    dict
        Counts ``{"finished": ..., "failed": ..., "skipped": ..., "pending": ...,
        "deferred": ...}`` for this call (``deferred``: left for lack of time), and
        ``"too_large"`` with ``max_atoms``: structures left for a later call with more atoms.

    Raises
    ------
    PipelineLocked
        When another call holds the work directory (:func:`workdir_lock`).
    ValueError
        When the physics settings differ from the work directory's or from those of the
        frames already in ``output`` (:func:`check_settings`, :func:`check_output_settings`).
    AbinitError, FileNotFoundError
        Before anything runs, with the real runner: no ABINIT / ``mpirun`` / pseudopotential
        (:func:`~ase_born.dft.abinit.check_environment`).
    SystematicFailure
        :data:`SYSTEMATIC_FAILURES` structures in a row failed within
        :data:`FAST_FAILURE_S` for the same reason (a setup problem): the call stops and
        those failures are recorded flagged ``setup_suspect``, not counted (the structures
        stay pending).  When the same structures fail so again in a later call, the
        failures are theirs: counted, and the call goes on with the rest of the plan (a
        structure that always fails fast cannot block the plan).
    """
    settings = settings or AbinitSettings()
    workdir, output = Path(workdir), Path(output)
    plan = load_plan(plan_path)  # before anything is written into workdir
    for ids in (only_ids, first_ids):
        unknown = sorted(set(ids or ()) - {str(a.info["structure_id"]) for a in plan})
        if unknown:
            raise ValueError(f"structure IDs not in the plan {plan_path}: {', '.join(unknown)}")
    if runner is run_structure:  # a missing ABINIT/mpirun/pseudopotential is no structure's failure
        check_environment(plan, settings, ranks)
    with workdir_lock(workdir):
        return _run_plan(
            plan, plan_path, output, workdir, settings, ranks=ranks, jobs=jobs, timeout_s=timeout_s,
            max_attempts=max_attempts, max_structures=max_structures, only_ids=only_ids, max_atoms=max_atoms,
            first_ids=first_ids, nice=nice, log=log, install_signal_handlers=install_signal_handlers, runner=runner,
            deadline=deadline, grace_s=grace_s, safety=safety, clock=clock, carry=carry, step_level=step_level,
            complete_epsilon=complete_epsilon, machine_speed=machine_speed,
        )


def _failure_reason(exc: BaseException) -> str:
    """One line for ``failures.json``: the message of an expected failure (ABINIT, parsing,
    files); type, message and innermost source line of any other exception."""
    if isinstance(exc, (AbinitError, AbinitParseError, ValueError, OSError)):
        return str(exc)
    where = traceback.extract_tb(exc.__traceback__)[-1:] if exc.__traceback__ else []
    at = f" (at {Path(where[0].filename).name}:{where[0].lineno})" if where else ""
    return f"{type(exc).__name__}: {exc}{at}"


def _run_plan(
    plan: list[Atoms],
    plan_path: str | os.PathLike,
    output: Path,
    workdir: Path,
    settings: AbinitSettings,
    *,
    ranks: int,
    jobs: int,
    timeout_s: float | None,
    max_attempts: int,
    max_structures: int | None,
    only_ids: Sequence[str] | None,
    max_atoms: int | None,
    first_ids: Sequence[str] | None,
    nice: int,
    log: Callable[[str], None],
    install_signal_handlers: bool,
    runner: Callable[..., dict],
    deadline: float | None,
    grace_s: float,
    safety: float,
    clock: Callable[[], float],
    carry: str | os.PathLike | None,
    step_level: bool,
    complete_epsilon: bool,
    machine_speed: bool,
) -> dict[str, int]:
    """:func:`run_plan` while it holds the work directory's lock."""
    frames = read_frames(output) if output.is_file() and output.stat().st_size else []
    check_output_settings(output, settings, frames)  # before check_settings records anything
    check_settings(workdir, settings)
    measure_speed = machine_speed and deadline is not None
    made_here = set(machine_frames(workdir)) if measure_speed else set()  # earlier calls' frames
    call_start = record_call(workdir, deadline - clock()) if deadline is not None else None
    done = {str(a.info["structure_id"]) for a in frames}
    failures = load_failures(output, workdir)
    todo = [
        a
        for a in plan
        if a.info["structure_id"] not in done
        and counted_attempts(failures.get(a.info["structure_id"], [])) < max_attempts
        and (only_ids is None or a.info["structure_id"] in only_ids)
    ]
    if max_atoms is not None:
        large = [a.info["structure_id"] for a in todo if len(a) > max_atoms]
        todo = [a for a in todo if len(a) <= max_atoms]
        if large:
            log(f"left for a later call (more than {max_atoms} atoms): {len(large)} structure(s), "
                f"{', '.join(large[:3])}{', ...' if len(large) > 3 else ''}")
    skipped = sum(counted_attempts(failures.get(a.info["structure_id"], [])) >= max_attempts for a in plan
                  if a.info["structure_id"] not in done)
    n_done = len(done & {a.info["structure_id"] for a in plan})  # frames outside the plan (conv_cubic) not counted
    model = CostModel(ranks=ranks)
    plan_ids = {a.info["structure_id"] for a in plan}
    for a in frames:
        if a.info["structure_id"] in plan_ids:  # the symmetric convergence cell would skew the rates
            model.add_frame(a, settings)
    # the machine-speed reference: the model of the frames made elsewhere (not in this call nor
    # in earlier calls on this work directory); with machine_speed it makes the estimates
    # (all frames made here, e.g. a dataset begun on this machine: the model of all, unscaled)
    reference, earlier = machine_speed_ratios(frames, plan_ids, made_here, settings, ranks)
    estimates = reference if measure_speed and reference.rates else model
    progress = Progress(total=len(plan), model=estimates, done=n_done)  # its ETA x speed()

    def speed_ratio(frame: Atoms) -> float | None:
        return frame_speed_ratio(frame, reference, settings, ranks) if estimates is reference else None

    speed_ratios = [r for r in earlier.values() if r is not None]
    calibrating = measure_speed and not speed_ratios  # the next start is the cheapest structure

    def speed() -> float:
        """This machine's speed factor on the model's estimates (1.0 until measured)."""
        with lock:
            return speed_factor(speed_ratios)
    units = {a.info["structure_id"]: work_units(a, settings.kmesh(a)) for a in todo}
    log(f"plan {plan_path}: {len(plan)} structures, {n_done} done, {skipped} skipped after failures, {len(todo)} to run")
    if speed_ratios:
        n = len(speed_ratios)
        log(f"machine speed from {n} frame{'s' if n > 1 else ''} made here in earlier calls "
            f"({', '.join(sid for sid, r in earlier.items() if r is not None)}): estimates "
            f"x{speed_factor(speed_ratios):.2f}")
    stop = threading.Event()
    lock = threading.Lock()
    counts = Counter()

    graceful = threading.Event()  # set by the first signal: a running ground state may end cleanly

    def handler(signum, _frame):
        name = signal.Signals(signum).name
        if graceful.is_set():
            graceful.clear()
            log(f"signal {name} again: killing the running steps now")
        elif stop.is_set():
            log(f"signal {name}: already stopping")
        else:
            graceful.set()  # before stop: a step that sees the stop sees this too
            log(f"signal {name}: stopping (finished steps are kept; a running ground state ends after "
                f"its SCF iteration with its wavefunctions kept, within {GS_EXIT_WAIT_S / 60:.0f} min; "
                "a second signal kills it)")
            stop.set()

    old = {}
    if install_signal_handlers and threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            old[sig] = signal.signal(sig, handler)

    carry_root = None if carry is None else carry_directory(output) if carry == "auto" else Path(carry)

    def foreign(sid: str) -> dict:
        return {} if carry_root is None else carried_settings_diff(carry_root / sid, settings.to_dict())

    if carry_root is not None:
        # left when a run was stopped between the append of a frame and the removal of its
        # carried directions: they would never be removed otherwise
        for sid in sorted(done):
            stale = carry_root / sid
            if sid not in (".", "..") and Path(sid).name == sid and stale.is_dir() and not foreign(sid):
                log(f"remove {stale}: {sid} is already in {output}")
                shutil.rmtree(stale)
    others = {a.info["structure_id"]: foreign(a.info["structure_id"]) for a in todo} if carry_root is not None else {}
    others = {sid: diff for sid, diff in others.items() if diff}
    for sid, diff in others.items():
        log(f"{sid}: the carried data in {carry_root / sid} have other physics settings {diff} (carried, "
            f"this run): another dataset's, left alone; {sid} runs without carrying")
    carried = {a.info["structure_id"]: carried_directions(carry_root / a.info["structure_id"])
               for a in todo if a.info["structure_id"] not in others} if carry_root is not None else {}
    if any(carried.values()):
        log("carried over: " + ", ".join(f"{k} directions {v}" for k, v in carried.items() if v))

    def work(structure: Atoms) -> bool:
        """Compute ``structure`` and append its frame; False when another process had
        appended it meanwhile (:func:`append_frame`)."""
        sid = structure.info["structure_id"]
        if stop.is_set():
            raise StopRequested
        t0 = time.time()
        directory = workdir / sid
        carry_here = carry_root is not None and sid not in others
        if carry_here:
            restore_carried(carry_root / sid, directory)
        with lock:
            ran[directory] = time.time()  # markers written from now on are this call's
        own = structure_settings(directory, settings, len(structure), log)
        if own != settings:
            log(f"{sid}: finishing with the tolerances it started with {settings_changes(own, settings)} "
                "(recorded, requested)")

        kwargs = {"ranks": ranks, "timeout_s": timeout_s, "nice": nice, "stop_event": stop,
                  "log": lambda m: log(f"{sid}: {m}")}
        if not complete_epsilon:
            kwargs["complete_epsilon"] = False
        if carry_here:
            kwargs["on_direction"] = lambda d: save_direction(directory, carry_root / sid, d)
        if deadline is not None:
            kwargs["before_step"] = lambda name: step_fits(structure, name)
            kwargs["time_left"] = lambda: deadline + grace_s - clock()  # a ground state ends cleanly before its kill
        if install_signal_handlers:
            kwargs["graceful"] = graceful
        timings = runner(structure, own, directory, **kwargs)
        frame = frame_from_run(structure, directory, own, timings, ranks)
        if np.isnan(frame.info["epsilon_inf"]).any():
            log(f"{sid}: epsilon_inf elements between directions computed in different sessions are unknown (NaN)")
        appended = append_frame(output, frame, log)
        (directory / "DONE").write_text(f"{time.time() - t0:.1f}\n")
        if carry_here and (carry_root / sid).is_dir():
            shutil.rmtree(carry_root / sid)
        if not appended:
            return False
        with lock:
            counts["finished"] += 1
            progress.done += 1
            if not carried.get(sid):  # a structure partly computed earlier would look cheap
                model.add_frame(frame, own)  # at its idle-machine cost, as frames read at the start
                ratio = speed_ratio(frame) if measure_speed else None
                if ratio is not None:
                    speed_ratios.append(ratio)
                    record_call_frame(workdir, call_start, sid)
                    n = len(speed_ratios)
                    idle = frame_idle_wall_s(frame, ranks)
                    log(f"machine speed: {sid} took {_fmt_s(idle)} at idle-machine cost, the model expected "
                        f"{_fmt_s(idle / ratio)}; estimates now x{speed_factor(speed_ratios):.2f} "
                        f"({n} frame{'s' if n > 1 else ''} of this machine)")
        return True

    ran: dict[Path, float] = {}  # run directories of this call: when each started (carried data restored)

    def margin() -> tuple[float, str]:
        """The factor on estimated wall times (``safety`` x the load of the latest step finished
        in this call, :func:`step_load`: later steps are taken to run as slowly) and its words."""
        with lock:
            places = list(ran.items())
        latest = []
        for directory, since in places:
            for marker in directory.glob("*.done"):
                with contextlib.suppress(OSError):
                    if (mtime := marker.stat().st_mtime) >= since:
                        latest.append((mtime, marker))
        load = next((f for _, m in sorted(latest, reverse=True) if (f := step_load(m)) is not None), 1.0)
        return safety * load, f"x{safety} margin" + (f", x{load:.2f} load now" if load > 1.0 else "")

    deferred: set[str] = set()
    cut: set[str] = set()  # ground state cut at ABINIT's time limit in this call (resumes in a later one)
    paused: set[str] = set()  # started, then stopped before a step that did not fit (StructurePaused)

    def steps_left(s: Atoms) -> list[str]:
        """The ABINIT steps ``s`` still needs, in order: its ground state unless the run
        directory keeps it, then per field direction not finished (in the run directory or
        carried over) its ddk (unless done on the kept ground state) and field steps."""
        sid = s.info["structure_id"]
        directory = workdir / sid
        done = set(carried.get(sid, [])) | {d for d in DIRECTIONS if (directory / f"efield{d}.done").is_file()}
        todo = [d for d in DIRECTIONS if d not in done]
        if not todo:
            return []
        gs_kept = ground_state_kept(directory)
        steps = [] if gs_kept else ["gs"]
        for d in todo:
            if not (gs_kept and (directory / f"ddk{d}.done").is_file()):
                steps.append(f"ddk{d}")
            steps.append(f"efield{d}")
        return steps

    def measured_s(s: Atoms, step: str) -> float | None:
        """Mean wall seconds of ``step`` (``gs``, ``ddk`` or ``efield``) measured on ``s``
        itself: the markers of its finished steps in its run directory or carried over (the
        markers do not record the MPI ranks: the same count is assumed), each corrected to
        its idle-machine cost by the CPU time in its ``.abo`` (:func:`unloaded_wall_s`);
        ``None`` if none."""
        sid = s.info["structure_id"]
        places = [workdir / sid] + ([carry_root / sid] if carry_root is not None and sid not in others else [])
        names = ["gs"] if step == "gs" else [f"{step}{k}" for k in DIRECTIONS]
        measured = {}
        for name in names:
            for place in places:
                marker = place / f"{name}.done"
                if name not in measured and marker.is_file():
                    try:
                        wall = read_marker(marker)
                    except (OSError, ValueError):
                        continue
                    cpu, wall_sum = read_run_times(place / f"{name}.abo") or (None, None)
                    measured[name] = unloaded_wall_s(wall, cpu, wall_sum)
        return float(np.mean(list(measured.values()))) if measured else None

    def step_s(s: Atoms, name: str) -> float | None:
        """Expected wall seconds of one step (``gs``, ``ddk{d}``, ``efield{d}``) of ``s``:
        measured on the structure itself (:func:`measured_s`), else the cost model."""
        step = name.rstrip("0123456789").removeprefix("eps_")  # eps_ddk{c}: a ddk run again
        own = measured_s(s, step)
        if own is not None:
            return own
        est = estimates.estimate_s(s.info.get("kind"), units[s.info["structure_id"]], len(s))
        if est is None:
            return None
        est *= speed() * estimates.step_share(s.info.get("kind"), step)
        return continued_gs_s(s, est) if step == "gs" else est

    def continued_gs_s(s: Atoms, est: float) -> float:
        """Estimate ``est`` of the ground state of ``s``, when the next try continues from
        the kept wavefunctions of a cut one: the seconds left of it after those the cut tries
        spent, plus :data:`GS_CONTINUE_EXTRA_SHARE` of it, at least
        :data:`GS_CONTINUE_MIN_SHARE` of it."""
        try:
            spent = cut_gs_seconds(workdir / s.info["structure_id"])
        except (OSError, ValueError):
            spent = None
        if spent is None:
            return est
        return max(est - spent + GS_CONTINUE_EXTRA_SHARE * est, GS_CONTINUE_MIN_SHARE * est)

    def total_s(s: Atoms, names: list[str]) -> float | None:
        """Expected wall seconds of steps ``names`` of ``s`` (:func:`step_s`); None if one is unknown."""
        times = [step_s(s, p) for p in names]
        return None if any(t is None for t in times) else float(sum(times))

    def estimate_s(s: Atoms) -> float | None:
        """Estimated wall time of the steps left on ``s`` (:func:`steps_left`)."""
        return total_s(s, steps_left(s))

    def next_step(s: Atoms) -> str:
        """The first step ``s`` still needs (:func:`steps_left`)."""
        return (steps_left(s) or ["gs"])[0]

    def need_s(s: Atoms, name: str, factor: float) -> float | None:
        """Wall seconds that must fit before the deadline to start step ``name`` of ``s``: with
        ``step_level`` the step alone; otherwise the step and the rest of its field direction
        (after a ground state: a whole first direction), so that a direction is not left
        half done in a run directory that may not survive.  An optional ``eps_ddk{c}`` (it
        runs before the ddk of the next direction) needs the next whole direction too, and
        with ``step_level`` every step the structure still needs when those fit without it:
        it never costs the structure its frame in this call (``factor``: :func:`margin`'s)."""
        parts = [name]
        sid = s.info["structure_id"]
        if name.startswith("eps_ddk"):
            rest = steps_left(s)
            required = total_s(s, rest)
            if step_level and required is not None and factor * required <= deadline - clock():
                parts += rest
            else:
                d = next((k for k in DIRECTIONS if k not in carried.get(sid, [])
                          and not (workdir / sid / f"efield{k}.done").is_file()), 1)
                parts += [f"ddk{d}", f"efield{d}"]
        elif not step_level:
            if name == "gs":
                d = next((k for k in DIRECTIONS if k not in carried.get(sid, [])), 1)
                parts += [f"ddk{d}", f"efield{d}"]
            elif name.startswith("ddk"):
                parts.append("efield" + name[3:])
        return total_s(s, parts)

    def end_s(name: str) -> float:
        """Clock time by which step ``name`` must end: the deadline; for a ground state the
        earlier ``--timelimit`` it would get when started now
        (:func:`~ase_born.dft.abinit.gs_timelimit_s` of the time to ``deadline + grace_s``),
        so that a ground state is not admitted to be cut at once (grace shorter than the margin)."""
        if name != "gs":
            return deadline
        now = clock()
        return min(deadline, now + gs_timelimit_s(deadline + grace_s - now))

    def end_words(name: str) -> str:
        """What :func:`end_s` of ``name`` is, for the log."""
        return "the deadline" if end_s(name) >= deadline else f"its ABINIT time limit (grace < {GS_TIMELIMIT_MARGIN_S / 60:.0f} min)"

    def step_fits(s: Atoms, name: str) -> bool:
        """``before_step`` of a started structure: whether step ``name`` (:func:`need_s`) is
        expected to finish before the deadline.  When it does not the structure is paused,
        not stopped: its finished steps are kept and the time left goes to structures that
        fit."""
        if name != "gs" and not name[-1:].isdigit():
            return True  # the older one-run layout
        factor, words = margin()
        need = need_s(s, name, factor)
        left = end_s(name) - clock()
        if left > 0 and (need is None or factor * need <= left):  # unknown cost: before the deadline
            return True
        needs = "an unknown time" if need is None else f"~{_fmt_s(factor * need)}"
        if name.startswith("eps_"):
            log(f"skip {name} of {s.info['structure_id']}: needs {needs} ({words}, with the "
                f"steps after it), {_fmt_s(max(left, 0.0))} left; ε∞ elements with direction {name[-1]} stay unknown")
            return False
        what = name if step_level or name == "gs" else f"{name} (field direction {name[-1]})"
        log(f"pause {s.info['structure_id']} before {what}: needs {needs} ({words}), "
            f"{_fmt_s(max(left, 0.0))} left before {end_words(name)} (finished steps are kept)")
        return False

    def next_structure() -> Atoms | None:
        """First pending structure whose next step (:func:`need_s`) fits before the deadline, or
        None; while ``machine_speed`` is being calibrated the cheapest such structure."""
        nonlocal calibrating
        factor, words = margin() if deadline is not None else (safety, "")
        order = list(range(len(pending)))
        if calibrating:
            calibrating = False
            cost = {i: estimate_s(s) for i, s in enumerate(pending)}
            if all(c is not None for c in cost.values()):
                order.sort(key=lambda i: cost[i])  # stable: plan order among equals
                if order and order[0] != 0:
                    log(f"machine speed unknown: {pending[order[0]].info['structure_id']} first, the cheapest "
                        f"structure (estimated {_fmt_s(cost[order[0]])}), to measure it")
        for i in order:
            s = pending[i]
            sid = s.info["structure_id"]
            if sid in cut:
                continue
            if deadline is not None and steps_left(s):  # no steps left: only parsing
                name = next_step(s)
                est = need_s(s, name, factor)
                left = end_s(name) - clock()
                if left <= 0 or (est is not None and factor * est > left):  # unknown cost: before the deadline
                    if sid not in deferred:
                        deferred.add(sid)
                        what = (f"its next step ({name})" if step_level else
                                "its next field direction (and ground state, unless kept)")
                        needs = "an unknown time" if est is None else f"~{_fmt_s(factor * est)}"
                        log(f"defer {sid}: {what} needs {needs} ({words}), "
                            f"{_fmt_s(max(left, 0.0))} left before {end_words(name)}")
                    continue
            if sid in paused:  # paused under a load that has gone, or for a step that now fits
                paused.discard(sid)
                deferred.discard(sid)
                log(f"resume {sid}: its next step ({next_step(s)}) fits now ({words})")
            return pending.pop(i)
        return None

    # Carried-over structures first: each session redoes their ground state, and they are the
    # closest to a finished frame; then those with finished steps kept in their run directory
    # (a kept machine), then first_ids in their order; plan order otherwise (stable sort).
    rank = {sid: i for i, sid in enumerate(dict.fromkeys(first_ids or ()))}
    kept = {sid: steps for a in todo if not carried.get(sid := a.info["structure_id"])
            and (steps := kept_steps(workdir / sid))}
    if kept:
        log("finished steps kept in their run directories, continued first: " + ", ".join(
            f"{sid} ({', '.join(kept[sid])})" for sid in sorted(kept)))

    def precedence(s: Atoms) -> tuple[bool, bool, int]:
        sid = s.info["structure_id"]
        return not carried.get(sid), sid not in kept, rank.get(sid, len(rank))

    pending = sorted(todo, key=precedence)
    if rank and (ahead := [s.info["structure_id"] for s in pending if s.info["structure_id"] in rank]):
        log(f"first (requested): {', '.join(ahead)}")
    streak: list[str] = []  # structures failing fast in a row with the same reason
    streak_reason: str | None = None
    systematic: str | None = None
    try:
        with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
            running = {}
            started: dict[str, float] = {}
            in_grace = grace_s <= 0.0
            while (pending or running) and not stop.is_set():
                while pending and len(running) < jobs and not stop.is_set():
                    if max_structures is not None and counts["finished"] + len(running) >= max_structures:
                        break
                    s = next_structure()
                    if s is None:
                        break
                    est = estimate_s(s)
                    log(f"start {s.info['structure_id']} ({s.info.get('kind')}, {len(s)} atoms, "
                        f"estimated {_fmt_s(est)})")
                    started[s.info["structure_id"]] = time.time()
                    running[pool.submit(work, s)] = s
                if not running:
                    break
                finished, _ = wait(running, timeout=1.0, return_when=FIRST_COMPLETED)
                if deadline is not None and clock() >= deadline + grace_s and not stop.is_set():
                    log("deadline reached: stopping (finished field directions are kept)")
                    stop.set()
                elif deadline is not None and clock() >= deadline and not in_grace:
                    in_grace = True
                    log(f"deadline reached: no step starts any more; the running ones may finish within "
                        f"{_fmt_s(grace_s)}")
                for fut in finished:
                    s = running.pop(fut)
                    sid = s.info["structure_id"]
                    try:
                        appended = fut.result()
                    except StructurePaused as exc:
                        deferred.add(sid)  # left for a later call, counted as pending and deferred
                        (cut if exc.cut else paused).add(sid)  # a cut ground state: not again in this call
                        pending.append(s)
                        continue
                    except (StopRequested, StepInterrupted):
                        continue
                    # any error of one structure (a parser's KeyError too) is its failure:
                    # recorded, and the others go on; KeyboardInterrupt/SystemExit are not caught
                    except Exception as exc:  # noqa: BLE001
                        if stop.is_set():
                            continue
                        reason = _failure_reason(exc)
                        with lock:
                            failures.setdefault(sid, []).append(
                                {"reason": reason[:500], "type": type(exc).__name__, "time": time.time(),
                                 "output": output.name})
                            save_failures(output, failures)
                            counts["failed"] += 1
                        log(f"FAILED {sid}: {reason}")
                        if time.time() - started[sid] >= FAST_FAILURE_S:  # ABINIT ran: its own
                            streak, streak_reason = [], None
                        elif reason == streak_reason:
                            streak.append(sid)
                        else:
                            streak, streak_reason = [sid], reason
                        if len(streak) >= SYSTEMATIC_FAILURES:
                            with lock:
                                repeated = all(
                                    any(a.get("setup_suspect") and a["reason"] == failures[f][-1]["reason"]
                                        for a in failures[f][:-1])
                                    for f in streak
                                )
                                if not repeated:  # a setup problem, not these structures: not counted
                                    for f_sid in streak:
                                        failures[f_sid][-1]["setup_suspect"] = True
                                    save_failures(output, failures)
                                    counts["failed"] -= len(streak)
                            what = (f"{len(streak)} structures in a row ({', '.join(streak)}) failed "
                                    f"within {FAST_FAILURE_S:.0f} s with the same reason: {reason}")
                            streak, streak_reason = [], None
                            if repeated:
                                log(f"{what}, as in an earlier call: their own failures (counted); "
                                    "going on with the rest of the plan")
                                continue
                            systematic = what
                            log(f"stopping: {systematic}; a setup problem, so these failures are not "
                                "counted against the structures (they are if it happens again)")
                            stop.set()
                        continue
                    streak, streak_reason = [], None
                    if not appended:
                        continue
                    remaining = [(p.info.get("kind"), units[p.info["structure_id"]], len(p))
                                 for p in [*pending, *running.values()]]
                    until = "" if deadline is None else f"; this call stops in {_fmt_s(max(deadline - clock(), 0.0))}"
                    eta = progress.eta_s(remaining, jobs)
                    factor = speed()
                    here = "" if factor == 1.0 or eta is None else f" at this machine's speed (x{factor:.2f})"
                    log(
                        f"[{progress.done}/{progress.total}] finished {sid} "
                        f"({_fmt_s(time.time() - started[sid])}); "
                        f"ETA for the {len(remaining)} structures left "
                        f"{_fmt_s(None if eta is None else eta * factor)}{here}{until}"
                    )
            if stop.is_set():
                for fut in running:
                    fut.cancel()
    finally:
        for sig, h in old.items():
            signal.signal(sig, h)
    if systematic is not None:
        raise SystematicFailure(systematic)
    counts["pending"] = len(pending)
    counts["skipped"] = skipped
    if max_atoms is not None:
        counts["too_large"] = len(large)
    counts["deferred"] = len(deferred & {p.info["structure_id"] for p in pending})
    if counts["deferred"]:
        log(f"{counts['deferred']} structure(s) deferred: not expected to finish before the deadline")
    return dict(counts)


def status(plan_path: str | os.PathLike, output: str | os.PathLike = DEFAULT_OUTPUT,
           workdir: str | os.PathLike = DEFAULT_WORKDIR) -> dict:
    """Summary of a plan: per kind done/in progress/failed/pending, cost and ASR statistics,
    and the field directions carried over for unfinished structures (``partial/`` beside
    ``output``)."""
    plan = load_plan(plan_path)
    frames = read_frames(output) if Path(output).is_file() and Path(output).stat().st_size else []
    done = {str(a.info["structure_id"]): a for a in frames}
    failures = load_failures(output, workdir)
    rows: dict[str, Counter] = defaultdict(Counter)
    cost: dict[str, list[float]] = defaultdict(list)
    cpu: dict[str, list[float]] = defaultdict(list)
    wall: dict[str, list[float]] = defaultdict(list)
    model = CostModel(ranks=2)  # the rates the scheduler uses (idle-machine cost on 2 ranks)
    started: dict[str, dict] = {}
    live = abinit_directories()  # one /proc scan for every started structure
    for a in plan:
        sid, kind = a.info["structure_id"], str(a.info.get("kind"))
        rows[kind]["planned"] += 1
        if sid in done:
            rows[kind]["done"] += 1
            f = done[sid]
            rows[kind]["test"] += f.info.get("split") == "test"
            if "wall_s" in f.info:
                cost[kind].append(float(f.info["wall_s"]) * int(f.info.get("mpi_ranks", 1)))
                wall[kind].append(float(f.info["wall_s"]))
                if "kpts" in f.info:
                    model.add_frame(f, AbinitSettings())
            c = f.info["cpu_s"] if "cpu_s" in f.info else cpu_seconds(Path(workdir) / sid)
            if c is not None:
                cpu[kind].append(float(c))
        elif counted_attempts(failures.get(sid, [])):
            rows[kind]["failed"] += 1
        elif (Path(workdir) / sid / "gs.done").is_file() or (Path(workdir) / sid / "gs.abi").is_file():
            rows[kind]["in_progress"] += 1
            started[sid] = run_progress(Path(workdir) / sid, live)
    summary = {
        kind: {
            **dict(c),
            "mean_core_hours": (float(np.mean(cost[kind])) / 3600.0) if cost[kind] else None,
            "mean_cpu_hours": (float(np.mean(cpu[kind])) / 3600.0) if cpu[kind] else None,
            "min_cpu_hours": (min(cpu[kind]) / 3600.0) if cpu[kind] else None,
            "max_cpu_hours": (max(cpu[kind]) / 3600.0) if cpu[kind] else None,
            "median_wall_min": float(np.median(wall[kind])) / 60.0 if wall[kind] else None,
            "min_wall_min": min(wall[kind]) / 60.0 if wall[kind] else None,
            "max_wall_min": max(wall[kind]) / 60.0 if wall[kind] else None,
            # CostModel: median idle-machine wall seconds per work unit (N_atoms³ x k-points)
            "wall_s_per_cost_unit": float(np.median(model.rates[kind])) if model.rates.get(kind) else None,
            # CostModel.step_share: the ground state's and one field direction's share of a structure
            "step_shares": {
                "gs": model.step_share(kind, "gs"),
                "direction": model.step_share(kind, "ddk") + model.step_share(kind, "efield"),
            },
        }
        for kind, c in rows.items()
    }
    asr = [np.abs(np.asarray(f.info["acoustic_sum"])).max() / (len(f) / 5) for f in frames if "acoustic_sum" in f.info]
    planned = {str(a.info["structure_id"]) for a in plan}
    carry = carry_directory(output)
    # carried data of another dataset in the folder (other physics settings than this one's
    # frames) are not this dataset's: run_plan leaves them alone
    own = json.loads(frames[0].info["dft_settings"]) if frames and "dft_settings" in frames[0].info else None

    partial = {sid: dirs for sid in sorted(planned - set(done))
               if (dirs := carried_directions(carry / sid))
               and (own is None or not carried_settings_diff(carry / sid, own))}
    # unfinished structures whose run directory still holds the ground-state wavefunctions
    # (a machine that kept its files): they resume without redoing the ground state
    kept_gs = [sid for sid in sorted(planned - set(done)) if ground_state_kept(Path(workdir) / sid)]
    return {
        "plan": str(plan_path),
        "output": str(output),
        "workdir": str(workdir),
        "total": len(plan),
        "done": len(planned & set(done)),
        "extra": sorted(set(done) - planned),  # frames not from the plan (e.g. the convergence cell)
        "kinds": summary,
        "max_asr_violation_per_formula_unit_e": float(max(asr)) if asr else None,
        "failures": {k: v[-1]["reason"] + (" (setup suspect: not counted)" if v[-1].get("setup_suspect") else "")
                     for k, v in failures.items()},
        "partial": partial,
        "kept_ground_state": kept_gs,
        "started": started,  # run_progress of each started, unfinished structure
        "running": lock_holder(workdir),  # the pipeline holding the work directory, or None
        "machine_kept": machine_kept(workdir),  # an earlier call ran to its deadline here
        "machine_speed": _status_speed(frames, planned, workdir),
    }


def _status_speed(frames: Sequence[Atoms], plan_ids: set[str], workdir: str | os.PathLike) -> dict | None:
    """This machine's speed for :func:`status`: ``{"factor": ..., "frames": [IDs]}`` from the
    frames it made (:func:`machine_frames`) against the others, as a call would start with it."""
    made_here = set(machine_frames(workdir)) if Path(workdir).is_dir() else set()
    if not made_here:
        return None
    _, ratios = machine_speed_ratios(frames, plan_ids, made_here, AbinitSettings(), 2)
    measured = {sid: r for sid, r in ratios.items() if r is not None}
    return {"factor": speed_factor(list(measured.values())), "frames": sorted(measured)} if measured else None


def print_status(st: dict, file=sys.stdout) -> None:
    print(f"{st['plan']}: {st['done']}/{st['total']} structures in {st['output']}", file=file)
    if st.get("extra"):
        print(f"plus {len(st['extra'])} frame(s) not in the plan: {', '.join(st['extra'])}", file=file)
    print(f"{'kind':<10}{'planned':>8}{'done':>6}{'test':>6}{'started':>8}{'failed':>7}"
          f"{'core-h/struct':>15}{'cpu-h/struct':>14}{'cpu-h range':>14}", file=file)  # fmt: skip
    for kind, c in st["kinds"].items():
        ch, cpu = c.get("mean_core_hours"), c.get("mean_cpu_hours")
        lo, hi = c.get("min_cpu_hours"), c.get("max_cpu_hours")
        print(
            f"{kind:<10}{c.get('planned', 0):>8}{c.get('done', 0):>6}{c.get('test', 0):>6}"
            f"{c.get('in_progress', 0):>8}{c.get('failed', 0):>7}{(f'{ch:.2f}' if ch else '-'):>15}"
            f"{(f'{cpu:.2f}' if cpu else '-'):>14}{(f'{lo:.2f}-{hi:.2f}' if cpu else '-'):>14}",
            file=file,
        )
    print("started = has a run directory, not finished (running now or interrupted); "
          "core-h = wall x MPI ranks; cpu-h = CPU time summed over ranks (ABINIT's own count)", file=file)
    for kind, c in st["kinds"].items():
        if c.get("median_wall_min") is not None:
            rate = c.get("wall_s_per_cost_unit")
            shares = c.get("step_shares") or {}
            split = (f"; steps: ground state {shares['gs']:.0%}, a field direction {shares['direction']:.0%}"
                     if shares else "")
            print(f"{kind}: wall {c['min_wall_min']:.0f}-{c['max_wall_min']:.0f} min (median "
                  f"{c['median_wall_min']:.0f}) per structure as run; scheduler rate "
                  f"{(f'{rate:.3f}' if rate is not None else '-')} s per cost unit (idle machine, 2 ranks)"
                  f"{split}", file=file)
    if st["max_asr_violation_per_formula_unit_e"] is not None:
        print(f"max |sum_k Z*| per formula unit: {st['max_asr_violation_per_formula_unit_e']:.3f} e", file=file)
    for sid, reason in st["failures"].items():
        print(f"failed {sid}: {reason}", file=file)
    for sid, dirs in st.get("partial", {}).items():
        print(f"carried over: {sid}, field directions {dirs} of 3 finished", file=file)
    if st.get("kept_ground_state"):
        print(f"ground state kept in {st['workdir']} (no GS to redo): {', '.join(st['kept_ground_state'])}", file=file)
    running = st.get("running")
    print(f"pipeline: {'running (' + running + ')' if running else 'not running'}", file=file)
    if st.get("machine_kept"):
        print(f"{st['workdir']}: an earlier call ran to its deadline here (a kept machine): "
              "--step-level auto schedules step by step", file=file)
    speed = st.get("machine_speed")
    if speed:
        print(f"machine speed: x{speed['factor']:.2f} of the other machines' times, from the "
              f"{len(speed['frames'])} frame(s) made here; the next call starts with it", file=file)
    for sid, prog in st.get("started", {}).items():
        done = ", ".join(prog["done_steps"]) or "none"
        live = prog.get("open_running")
        # without /proc (None): running when a pipeline holds the work directory
        state = "running" if (live if live is not None else running) else "interrupted"
        if prog.get("gs_cut_s") is not None and not (prog["open_step"] == "gs" and state == "running"):
            now = (f"; gs cut early after {prog['gs_cut_s'] / 60:.0f} min (time limit or stop request), "
                   "continues from its kept wavefunctions")
        elif prog["open_step"]:
            scf = prog.get("open_scf")
            if scf is not None:
                state += (f"; SCF iteration {scf['iterations']}, {scf['residual_name']} {scf['residual']:.1e}"
                          + (f" → {scf['target']:.0e}" if scf["target"] is not None else ""))
                if state.startswith("running"):
                    state += f", ~{scf['minutes_per_iteration']:.1f} min per iteration"
                    if scf["iterations_left"] is not None:
                        state += f", ~{scf['iterations_left']} more at the last iterations' rate"
            now = f"; {prog['open_step']} started {prog['open_since']} ({state})"
        else:
            now = ""
        print(f"started {sid}: steps done {done}{now}", file=file)
