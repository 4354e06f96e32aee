"""ABINIT density-functional perturbation theory: inputs and runs.

One structure is computed in seven ABINIT runs, each in its own input file in the
structure's directory, so that an interrupted structure resumes at the last
finished run (ABINIT's own restart files: the ground-state ``WFK`` and the ddk
first-order wavefunctions ``1WF{3*natom+1..3}`` are kept until the structure is
finished, then deleted):

1. ``gs``: self-consistent ground state (energy, forces, stress), writes WFK;
2. then for each reduced direction ``d`` = 1, 2, 3:
   ``ddk{d}``: non-self-consistent d/dk perturbation (``rfelfd 2``, ``iscf -3``), and
   ``efield{d}``: electric-field perturbation along ``d`` only (``rfelfd 3``,
   ``rfphon 0``), reading the ddk files of directions 1..d.  Its derivative database
   (kept as ``efield{d}.ddb``, a few kB) holds the mixed field/displacement derivatives
   (row ``d`` of Z* in reduced coordinates) and the field-field elements ``(d, j ≤ d)``;
   the three together give Z* and the whole (symmetric) ε∞ —
   :func:`ase_born.io.abinit.response_from_ddb`, identical to ABINIT's one-run tables
   to 5e-11 e.

A finished direction is therefore a small self-contained result: a structure too
long for one work session can be finished direction by direction in several
(:mod:`ase_born.dft.pipeline` carries the finished ``efield{d}.ddb`` files over);
only the field-field elements between directions computed in different sessions are
then missing (filled from the structure's symmetry where it fixes them).  Directories
started with the older layouts (one ``ddk`` run, one ``efield`` run with all three
directions, parsed from its printed tables) still finish that way.

A ground state that would outlast the call (``run_structure(time_left=...)``) is given
ABINIT's own ``--timelimit``, and a graceful stop (``run_step(graceful=...)``: the
pipeline's first SIGTERM/SIGINT) asks a running ground state to end through the file
``abinit.exit`` (``chkexit 1``): ABINIT leaves the SCF loop cleanly and writes the
wavefunctions reached; they are kept as ``gs_partial_WFK`` (seconds so far in
``gs.partial``) and the next try of the ground state continues from them (``irdwfk 1``)
instead of from scratch (measured on a 5-atom cell: cut after 8 SCF iterations, 10 more
after the restart, 16 uninterrupted; the same converged energy).  Only the SCF loop of the
ground state has this check; a DFPT step killed mid-way restarts from its beginning.

Only occupied bands are computed (``nband`` = valence electrons / 2, ``occopt 1``;
insulators only).  The DFPT steps use time-reversal symmetry (``kptopt 2``), the
ground state the full symmetry (``kptopt 1``).  ``tolsym 1e-8`` keeps ABINIT from
symmetrising a nearly-symmetric input, so the stored structure is exactly the one
computed.

Units: ABINIT works in Hartree atomic units; the structure is written in Bohr
(``acell 3*1``, ``rprim`` = cell in Bohr), conversions through
:mod:`ase_born.conventions`.  Parsing lives in :mod:`ase_born.io.abinit`.
"""

from __future__ import annotations

import ctypes
import dataclasses
import functools
import math
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from ase import Atoms
from ase.calculators.calculator import kptdensity2monkhorstpack

from ase_born.conventions import BOHR_A
from ase_born.io.abinit import read_scf_history

#: Directory of the Debian ``abinit-data`` pseudopotentials.
DEFAULT_PSP_DIR = Path("/usr/share/abinit/psp")

#: PseudoDojo norm-conserving psp8 files per element (``abinit-data``).  Their
#: generation functional is PBE (Ca, O: pspxc 11) or LDA (Ti: pspxc -1012); the
#: calculations override it with PBEsol (``ixc -116133``), as the seed papers'
#: PBEsol data, and record that choice in every frame.
DEFAULT_PSEUDOPOTENTIALS: Mapping[str, str] = {
    "Ca": "Ca.psp8",
    "Ti": "Ti.psp8",
    "O": "O.psp8",
    "Ba": "Ba.psp8",
}

#: wavefunctions of a ground state cut at ABINIT's time limit (resumed by the next try)
PARTIAL_WFK = "gs_partial_WFK"

#: wall seconds spent so far on that cut ground state (a marker, :func:`read_marker`)
PARTIAL_SECONDS = "gs.partial"

#: seconds before the kill time at which a ground state's ``--timelimit`` falls: ABINIT
#: stops the SCF loop there; forces, stress and the WFK file (~0.6 GB, 20 atoms) follow
GS_TIMELIMIT_MARGIN_S = 600.0

#: file whose presence makes a ground state (``chkexit 1``) leave its SCF loop cleanly, as at
#: the time limit (a graceful stop, :func:`run_step`)
EXIT_FILE = "abinit.exit"

#: seconds a graceful stop waits for a ground state to leave its SCF loop and write its
#: wavefunctions (a 20-atom SCF iteration takes ~3.5 min, forces/stress/WFK ~2 min) before
#: the step is killed
GS_EXIT_WAIT_S = 600.0

#: shortest ``--timelimit`` given (a ground state admitted that close to the kill time
#: gets a few SCF iterations rather than none)
GS_TIMELIMIT_MIN_S = 60.0


def gs_timelimit_s(left: float) -> float:
    """ABINIT ``--timelimit`` (seconds) of a ground state started ``left`` seconds before its
    kill: :data:`GS_TIMELIMIT_MARGIN_S` earlier, at least :data:`GS_TIMELIMIT_MIN_S`."""
    return max(left - GS_TIMELIMIT_MARGIN_S, GS_TIMELIMIT_MIN_S)

#: field (and ddk) directions, reduced coordinates; runs: gs, ddk1, efield1, ddk2, efield2, ddk3, efield3
DIRECTIONS = (1, 2, 3)

#: settings that only set how tightly (or by which path) a step converges: they may change
#: between structures of one dataset (each frame records its own), unlike the physics ones
TOLERANCE_KEYS = ("tolvrs_gs", "tolwfr_ddk", "tolvrs_efield", "tolvrs_efield_atoms", "nstep", "diemac")

#: ABINIT's own default of ``diemac`` (a metal's model dielectric constant), which every
#: frame made before ``AbinitSettings.diemac`` existed ran with
ABINIT_DEFAULT_DIEMAC = 1.0e6


@dataclass(frozen=True)
class AbinitSettings:
    """Numerical settings of one DFPT calculation.

    Attributes
    ----------
    ecut_Ha : float
        Plane-wave cutoff in Hartree.
    kpt_density : float
        k-point density in points per Å⁻¹ (ASE's ``kptdensity2monkhorstpack``
        convention, n_i = ceil(kpt_density · 2π |b_i|)); 3.6 (production) gives
        6x6x6 for a 3.85 Å cubic cell and 5x3x5 for the 20-atom Pnma cell, 2.4 gives
        4x4x4 and 3x2x3.
    kshift : tuple of float
        Monkhorst–Pack shift (``shiftk``); (0.5, 0.5, 0.5) is the standard
        shifted grid (time-reversal compatible).
    ixc : int
        Exchange–correlation functional (-116133 = libxc PBEsol).
    tolvrs_gs, tolwfr_ddk, tolvrs_efield : float
        Convergence tolerances of the three steps.
    tolvrs_efield_atoms : int
        ``tolvrs_efield`` holds per this many atoms: a cell of N atoms runs its E-field steps
        to ``tolvrs_efield * max(1, N / tolvrs_efield_atoms)`` (:meth:`efield_tolvrs`).
        ABINIT's ``vres2`` is a sum over the FFT grid, so it grows with the cell (measured:
        the second E-field iteration's ``vres2`` is 4.9x larger in the 20-atom cells than in
        the 5-atom ones); 5 keeps the residual per volume of the convergence study's 5-atom
        cell.  0: no scaling (every frame made before session 41; a settings record without
        this key reads as 0).
    nstep : int
        Maximum SCF iterations per step.
    diemac : float
        ABINIT ``diemac``: the macroscopic dielectric constant of the model that
        preconditions the SCF residual (ground state and E-field steps).  It sets how fast
        the SCF converges, not what it converges to.  ABINIT's default (1e6,
        :data:`ABINIT_DEFAULT_DIEMAC`) is a metal's; a record without this key (every
        frame made before session 42) ran with it.
    psp_dir : str
        Pseudopotential directory.
    pseudopotentials : dict
        Element → psp file name.
    """

    # production settings chosen by the convergence study (data/dft/README.md): 30 Ha is within
    # 0.4 % (Z*) of 50 Ha; the k-mesh is what limits Z*: 6x6x6 (3.6) is within 0.6 % of the
    # extrapolated dense-mesh limit, 5x5x5 within 1.7 %, 4x4x4 within 4.9 %
    ecut_Ha: float = 30.0
    kpt_density: float = 3.6
    kshift: tuple[float, float, float] = (0.5, 0.5, 0.5)
    ixc: int = -116133
    tolvrs_gs: float = 1e-12
    # ddk 1e-12 / E-field 1e-6 instead of 1e-20 / 1e-8 (point ecut30_k4_loose): max |ΔZ*| 1.1e-4 e,
    # Δε∞ 2e-4, and 19 instead of 25-31 ddk and 12 instead of 20 E-field iterations
    tolwfr_ddk: float = 1e-12
    tolvrs_efield: float = 1e-6
    # session 41: pnma20_0006's efield1 stalled at vres2 3e-6 to 6e-5 for 12+ iterations
    # (1.7 min each) short of 1e-6, a 4x stricter target per volume than a 5-atom cell's
    tolvrs_efield_atoms: int = 5
    nstep: int = 80
    diemac: float = ABINIT_DEFAULT_DIEMAC
    psp_dir: str = str(DEFAULT_PSP_DIR)
    pseudopotentials: Mapping[str, str] = field(default_factory=lambda: dict(DEFAULT_PSEUDOPOTENTIALS))

    def __post_init__(self) -> None:
        for name in ("ecut_Ha", "kpt_density", "tolvrs_gs", "tolwfr_ddk", "tolvrs_efield", "diemac"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise ValueError(f"ABINIT setting {name} must be a positive number, got {value!r}")
        if self.diemac < 1.0:
            raise ValueError(f"ABINIT setting diemac (a dielectric constant) must be >= 1, got {self.diemac!r}")
        if not (isinstance(self.nstep, int) and self.nstep >= 1):
            raise ValueError(f"ABINIT setting nstep must be a positive integer, got {self.nstep!r}")
        if not (isinstance(self.tolvrs_efield_atoms, int) and self.tolvrs_efield_atoms >= 0):
            raise ValueError("ABINIT setting tolvrs_efield_atoms must be a non-negative integer, "
                             f"got {self.tolvrs_efield_atoms!r}")

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["kshift"] = list(self.kshift)
        d["pseudopotentials"] = dict(self.pseudopotentials)
        return d

    @classmethod
    def from_dict(cls, d: Mapping) -> AbinitSettings:
        """Settings from :meth:`to_dict`'s form; a record without ``tolvrs_efield_atoms``
        (written before it existed) ran its E-field steps unscaled and reads as 0, one
        without ``diemac`` ran with ABINIT's default (:data:`ABINIT_DEFAULT_DIEMAC`)."""
        d = dict(d)
        d.setdefault("tolvrs_efield_atoms", 0)
        d.setdefault("diemac", ABINIT_DEFAULT_DIEMAC)
        if "kshift" in d:
            d["kshift"] = tuple(d["kshift"])
        unknown = set(d) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ValueError(f"unknown ABINIT settings: {sorted(unknown)}")
        return cls(**d)

    def efield_tolvrs(self, natoms: int) -> float:
        """``tolvrs`` of the E-field steps of a cell of ``natoms`` atoms (:attr:`tolvrs_efield_atoms`)."""
        if self.tolvrs_efield_atoms == 0:
            return self.tolvrs_efield
        return self.tolvrs_efield * max(1.0, natoms / self.tolvrs_efield_atoms)

    def kmesh(self, atoms: Atoms) -> list[int]:
        """Monkhorst–Pack mesh for ``atoms`` from :attr:`kpt_density`."""
        return [int(n) for n in kptdensity2monkhorstpack(atoms, kptdensity=self.kpt_density, even=False)]


def pseudo_valence(path: str | os.PathLike) -> float:
    """Valence charge ``zion`` from the header of a psp8 file (second line)."""
    with open(path) as fh:
        fh.readline()
        return float(fh.readline().split()[1])


def _species(atoms: Atoms, settings: AbinitSettings) -> tuple[list[str], list[Path]]:
    symbols = list(dict.fromkeys(atoms.get_chemical_symbols()))  # order of appearance
    paths = []
    for s in symbols:
        if s not in settings.pseudopotentials:
            raise ValueError(
                f"no pseudopotential configured for element {s!r}; known: {sorted(settings.pseudopotentials)}"
            )
        p = Path(settings.psp_dir) / settings.pseudopotentials[s]
        if not p.is_file():
            raise FileNotFoundError(f"pseudopotential for {s} not found: {p} (apt-get install abinit-data)")
        paths.append(p)
    return symbols, paths


def n_occupied_bands(atoms: Atoms, settings: AbinitSettings) -> int:
    """Number of occupied bands (valence electrons / 2); raises for odd electron counts."""
    symbols, paths = _species(atoms, settings)
    zion = dict(zip(symbols, (pseudo_valence(p) for p in paths)))
    nelec = sum(zion[s] for s in atoms.get_chemical_symbols())
    if abs(nelec - round(nelec)) > 1e-8 or round(nelec) % 2:
        raise ValueError(f"{nelec} valence electrons: occupied-bands-only DFPT needs an even count")
    return round(nelec) // 2


def _fmt_rows(arr: np.ndarray) -> str:
    return "\n".join("  " + " ".join(f"{x: .14f}" for x in row) for row in np.atleast_2d(arr))


def make_inputs(atoms: Atoms, settings: AbinitSettings) -> dict[str, str]:
    """ABINIT input texts for the three steps of one structure.

    Returns
    -------
    dict
        ``{"gs", "ddk1", "ddk2", "ddk3", "efield1", "efield2", "efield3", "efield"}`` to
        input text; file names used inside: the GS writes ``gs_o_WFK``; ddk direction
        ``d`` reads it through ``in_WFK`` and writes ``ddk{d}_o_1WF{3*natom+d}``;
        ``efield{d}`` (field along reduced direction ``d``) reads ``in_WFK`` and
        ``in_1WF*`` (symlinks made by :func:`run_structure`) and writes
        ``ef{d}_o_DDB``; ``efield`` (all three directions in one run, the older
        layout) writes the printed tables parsed from its ``.abo``.
    """
    if atoms.cell.rank != 3 or not atoms.pbc.all():
        raise ValueError("ABINIT DFPT needs a fully periodic structure with a 3D cell")
    det = np.linalg.det(atoms.cell.array)
    if abs(det) < 1e-6:
        raise ValueError("singular cell")
    if det < 0:
        raise ValueError("left-handed cell (negative triple product): ABINIT requires right-handed lattice vectors")
    symbols, paths = _species(atoms, settings)
    znucl = [int(atoms.numbers[atoms.get_chemical_symbols().index(s)]) for s in symbols]
    typat = [symbols.index(s) + 1 for s in atoms.get_chemical_symbols()]
    kmesh = settings.kmesh(atoms)
    common = f"""# ase_born DFPT input (Born charges + epsilon_inf from the electric-field response)
acell 3*1.0
rprim
{_fmt_rows(atoms.cell.array / BOHR_A)}
natom {len(atoms)}
ntypat {len(symbols)}
typat {' '.join(map(str, typat))}
znucl {' '.join(map(str, znucl))}
xred
{_fmt_rows(atoms.get_scaled_positions(wrap=False))}
pp_dirpath "{settings.psp_dir}"
pseudos "{', '.join(p.name for p in paths)}"
ixc {settings.ixc}
ecut {settings.ecut_Ha}
nband {n_occupied_bands(atoms, settings)}
occopt 1
ngkpt {' '.join(map(str, kmesh))}
nshiftk 1
shiftk {' '.join(f'{s:g}' for s in settings.kshift)}
tolsym 1.0e-8
chksymbreak 0
nstep {settings.nstep}
diemac {float(settings.diemac)!r}
"""
    gs = common + f"""
# step 1: ground state
chkexit 1
kptopt 1
tolvrs {settings.tolvrs_gs:.3e}
optforces 1
optstress 1
prtwf 1
prtden 1
outdata_prefix "gs_o"
"""
    ddk = {
        f"ddk{d + 1}": common
        + f"""
# step 2: d/dk (non-self-consistent), direction {d + 1} of 3
kptopt 2
iscf -3
rfelfd 2
rfdir {' '.join('1' if i == d else '0' for i in range(3))}
tolwfr {settings.tolwfr_ddk:.3e}
irdwfk 1
indata_prefix "in"
outdata_prefix "ddk{d + 1}_o"
prtwf 1
prtden 0
"""
        for d in range(3)
    }
    def efield(rfdir: str, prefix: str, what: str) -> str:
        return common + f"""
# step 3: homogeneous electric field (no phonon perturbation), {what}
kptopt 2
rfelfd 3
rfphon 0
rfdir {rfdir}
tolvrs {settings.efield_tolvrs(len(atoms)):.3e}
irdwfk 1
irdddk 1
indata_prefix "in"
outdata_prefix "{prefix}"
prtwf 0
prtden 0
"""

    per_direction = {
        f"efield{d + 1}": efield(" ".join("1" if i == d else "0" for i in range(3)), f"ef{d + 1}_o",
                                 f"direction {d + 1} of 3")
        for d in range(3)
    }
    return {"gs": gs, **ddk, **per_direction, "efield": efield("1 1 1", "ef_o", "all directions")}


class StepInterrupted(Exception):
    """A step was stopped on request (not a failure of the structure)."""


class StructurePaused(Exception):
    """A structure stopped before a step that its ``before_step`` callback declined (too
    long for the time left), or its ground state was cut at ABINIT's time limit
    (``cut=True``, wavefunctions kept in :data:`PARTIAL_WFK`); finished steps and the run
    directory are kept."""

    def __init__(self, step: str, cut: bool = False):
        super().__init__(f"{step} cut early, wavefunctions kept" if cut else f"paused before {step}")
        self.step = step
        self.cut = cut


class StepCut(Exception):
    """ABINIT left a step's SCF loop at its ``--timelimit`` ("Approaching time limit") or
    on request (:data:`EXIT_FILE`): the step ended cleanly but unconverged; ``seconds`` is
    its wall time."""

    def __init__(self, step: str, seconds: float, reason: str = "at the time limit"):
        super().__init__(f"{step}: SCF loop left {reason} after {seconds:.0f} s")
        self.step = step
        self.seconds = seconds
        self.reason = reason


def timelimit_arg(seconds: float) -> str:
    """ABINIT's ``--timelimit`` value (Slurm notation ``hours:minutes:seconds``) for
    ``seconds`` (at least 1 s)."""
    total = max(1, int(seconds))
    return f"{total // 3600}:{total % 3600 // 60:02d}:{total % 60:02d}"


class AbinitError(RuntimeError):
    """An ABINIT run failed; ``reason`` says why in one line."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


def mpi_command(ranks: int) -> list[str]:
    """Command prefix running ABINIT on ``ranks`` MPI processes (serial when 1)."""
    exe = shutil.which("abinit")
    if exe is None:
        raise AbinitError("abinit executable not found (apt-get install abinit abinit-data libopenblas0-serial)")
    if ranks <= 1:
        return [exe]
    mpirun = shutil.which("mpirun")
    if mpirun is None:
        raise AbinitError("mpirun not found (apt-get install openmpi-bin)")
    cmd = [mpirun, "-np", str(ranks)]
    if os.geteuid() == 0:
        cmd += ["--allow-run-as-root"]
    return cmd + ["--oversubscribe", exe]


def check_environment(structures: Sequence[Atoms], settings: AbinitSettings, ranks: int) -> None:
    """Fail before any structure runs when ABINIT, ``mpirun`` (``ranks > 1``) or the
    pseudopotential of an element of ``structures`` is missing.

    A setup problem would otherwise fail every structure in turn and be recorded as each
    one's failure (``failures.json``), skipping the plan after ``max_attempts`` calls.

    Raises
    ------
    AbinitError
        No ``abinit`` / ``mpirun`` executable.
    FileNotFoundError, ValueError
        A pseudopotential file missing, or none configured for an element.
    """
    mpi_command(ranks)
    elements = sorted({s for atoms in structures for s in atoms.get_chemical_symbols()})
    if elements:
        _species(Atoms(elements), settings)


#: ``prctl`` option: signal delivered to a process when the thread that started it exits
_PR_SET_PDEATHSIG = 1


@functools.lru_cache(maxsize=1)
def _prctl() -> Callable[..., int] | None:
    """libc's ``prctl`` (Linux), or None where it is unavailable."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
    prctl.restype = ctypes.c_int
    return prctl


def _die_with_parent() -> Callable[[], None] | None:
    """A ``preexec_fn`` that makes the child receive SIGTERM when its parent dies (Linux
    ``PR_SET_PDEATHSIG``); None where ``prctl`` is unavailable (no-op there).

    The signal survives the ``exec`` of ``nice`` and ``mpirun``; it is sent when the *thread*
    that started the child exits, which for :func:`run_step` is never before the step ends
    (it waits for the child).  Between ``fork`` and ``exec`` the function only calls the
    prepared ``prctl``, ``getppid`` and ``_exit``: it imports nothing and takes no lock.  A
    parent killed in the instant between ``prctl`` and ``exec`` can still be missed.
    """
    prctl = _prctl()
    if prctl is None:
        return None
    parent, sigterm = os.getpid(), int(signal.SIGTERM)

    def preexec() -> None:
        prctl(_PR_SET_PDEATHSIG, sigterm, 0, 0, 0)
        if os.getppid() != parent:  # the parent died before prctl: no signal would come
            os._exit(128 + sigterm)

    return preexec


def _session_members(sid: int) -> list[int]:
    """PIDs of the processes in session ``sid`` (Linux ``/proc``; empty elsewhere)."""
    members = []
    try:
        entries = os.listdir("/proc")
    except OSError:
        return members
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as fh:
                stat = fh.read()
        except OSError:
            continue  # exited meanwhile
        fields = stat[stat.rfind(b")") + 2 :].split()  # after "pid (comm) ": state ppid pgrp session
        if len(fields) > 3 and fields[3] == str(sid).encode():
            members.append(int(entry))
    return members


def kill_step(pid: int) -> None:
    """SIGKILL every process of the ABINIT step whose ``nice``/``mpirun`` process is ``pid``.

    ``pid`` leads its own session and process group (``start_new_session``).  OpenMPI
    puts each rank into a process group of its own inside that session, so ``killpg(pid)``
    reaches ``mpirun`` only; the ranks are found by their session ID in ``/proc`` and
    killed too (where ``/proc`` is missing, only the process group is).
    """
    for member in _session_members(pid):
        try:
            os.kill(member, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def run_step(
    directory: Path,
    step: str,
    ranks: int,
    timeout_s: float | None,
    nice: int = 19,
    stop_event: threading.Event | None = None,
    timelimit_s: float | None = None,
    graceful: threading.Event | None = None,
) -> float:
    """Run one ABINIT input ``<step>.abi`` (``gs``, ``ddk1``-``ddk3``, ``eps_ddk1``-``eps_ddk3``,
    ``efield1``-``efield3``, ``efield``) in ``directory``.

    Returns the wall seconds.

    The child (``nice``, which execs ``mpirun`` or ``abinit``) starts a new session; a
    timeout, a set ``stop_event`` or an exception kills every process of that session,
    ``mpirun`` and each MPI rank (:func:`kill_step`).  On Linux the child also gets
    SIGTERM when this process dies (``PR_SET_PDEATHSIG``; ``mpirun`` then terminates its
    ranks), so a pipeline killed with SIGKILL does not leave ABINIT running.  Raises
    :class:`AbinitError` on failure and :class:`StepInterrupted` when stopped.  The
    ``timeout_s`` clock does not run while the step is paused (its leader stopped, as
    ``scripts/dft_pause.sh stop`` leaves it); the returned seconds include pauses.  A ddk-type
    step (``ddk{d}``, ``eps_ddk{c}``) that used up ``nstep`` is accepted as ABINIT
    accepts it (non-self-consistent, bounded by ``tolwfr``); any other step is not.
    ``timelimit_s`` is passed as ABINIT's ``--timelimit``: a run whose SCF loop stopped
    there raises :class:`StepCut` (its output files are complete but unconverged).  When
    ``stop_event`` is set while ``graceful`` is too, a ground state (``gs``, whose input has
    ``chkexit 1``) is asked to end cleanly (:data:`EXIT_FILE`) and given
    :data:`GS_EXIT_WAIT_S` to do so (then :class:`StepCut`); past that, or once ``graceful``
    is cleared (a second signal), it is killed (:class:`StepInterrupted`).
    """
    cmd = ["nice", "-n", str(nice)] + mpi_command(ranks) + [f"{step}.abi"]
    if timelimit_s is not None:
        cmd += ["--timelimit", timelimit_arg(timelimit_s)]
    t0 = time.time()
    with open(directory / f"{step}.log", "w") as log:
        # preexec_fn with threads (PLW1509): safe here, it only calls the prepared prctl, getppid
        # and _exit, takes no lock and imports nothing between fork and exec
        proc = subprocess.Popen(cmd, cwd=directory, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True, preexec_fn=_die_with_parent())  # noqa: PLW1509
        active, last = 0.0, time.time()  # wall seconds while not paused (dft_pause.sh: SIGSTOP)
        exit_asked = None  # when EXIT_FILE was written (graceful stop)
        try:
            while True:
                try:
                    rc = proc.wait(timeout=1.0)
                    break
                except subprocess.TimeoutExpired:
                    now = time.time()
                    if stop_event is not None and stop_event.is_set():
                        if not (step == "gs" and graceful is not None and graceful.is_set()):
                            raise StepInterrupted(f"{step}: stopped on request") from None
                        if exit_asked is None:
                            (directory / EXIT_FILE).touch()  # ABINIT ends after this SCF iteration
                            exit_asked = now
                        elif now - exit_asked > GS_EXIT_WAIT_S:
                            raise StepInterrupted(f"{step}: stopped on request (it did not end within "
                                                  f"{GS_EXIT_WAIT_S:.0f} s of {EXIT_FILE})") from None
                    if not _stopped(proc.pid):
                        active += now - last
                    last = now
                    if timeout_s is not None and active > timeout_s:
                        raise AbinitError(f"{step}: wall-clock limit of {timeout_s:.0f} s exceeded") from None
        except BaseException:
            kill_step(proc.pid)  # before the wait: the session's ID stays that of its leader
            proc.wait()
            raise
    if rc != 0:
        raise AbinitError(f"{step}: abinit exited with code {rc}; {_first_error(directory / f'{step}.log')}")
    abo = directory / f"{step}.abo"
    if not abo.is_file():
        raise AbinitError(f"{step}: no output file {abo.name}")
    text = abo.read_text(errors="replace")
    if "Calculation completed" not in text:
        raise AbinitError(f"{step}: output incomplete; {_first_error(directory / f'{step}.log')}")
    if f'Exit has been requested from file "{EXIT_FILE}"' in text:
        raise StepCut(step, time.time() - t0, "on a stop request")
    if "Approaching time limit" in text:
        raise StepCut(step, time.time() - t0)
    if not step.removeprefix("eps_").startswith("ddk") and "not enough SCF cycles to converge" in text:
        raise AbinitError(f"{step}: SCF not converged in nstep iterations")
    return time.time() - t0


def _scf_summary(abo: Path) -> str:
    """"N SCF iterations, vres2 X" of a ground-state output (:func:`read_scf_history`)."""
    rows = read_scf_history(abo)
    return f"{len(rows)} SCF iterations, vres2 {rows[-1][2]:.3E}" if rows else "no SCF iteration"


def _stopped(pid: int) -> bool:
    """Whether process ``pid`` is stopped (SIGSTOP / job control), from ``/proc`` (Linux;
    False elsewhere or when it is gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2:][:1] in ("T", "t")


def _first_error(log: Path) -> str:
    try:
        lines = log.read_text(errors="replace").splitlines()
    except OSError:
        return "no log"
    for i, line in enumerate(lines):
        if "--- !ERROR" in line or "--- !BUG" in line:
            msg = [ln.strip() for ln in lines[i + 1 : i + 12] if ln.strip() and not ln.startswith(("src_", "mpi_"))]
            return " ".join(msg)[:300]
    return lines[-1][:300] if lines else "empty log"


def _link(directory: Path, target: str, name: str) -> None:
    link = directory / name
    if link.is_symlink() or link.exists():
        link.unlink()
    link.symlink_to(target)


def run_structure(
    atoms: Atoms,
    settings: AbinitSettings,
    directory: str | os.PathLike,
    ranks: int = 2,
    timeout_s: float | None = None,
    nice: int = 19,
    cleanup: bool = True,
    stop_event: threading.Event | None = None,
    on_direction=None,
    before_step=None,
    complete_epsilon: bool = True,
    log: Callable[[str], None] | None = None,
    time_left: Callable[[], float | None] | None = None,
    graceful: threading.Event | None = None,
) -> dict[str, float]:
    """Compute one structure, resuming at the first unfinished step.

    Each finished run leaves ``<run>.done`` (containing its wall seconds).  A
    direction whose ``efield{d}.done`` and ``efield{d}.ddb`` exist (also when they
    were carried over from another session) is not computed again.  On success (and
    ``cleanup=True``) the restart files (WFK, DEN, 1WF, POT, raw DDB) are deleted;
    the ``.abo`` outputs and ``efield{d}.ddb`` stay for parsing and provenance.
    ``on_direction(d)`` is called after each finished field direction;
    ``before_step(name)`` before each step still to run (``gs``, ``ddk{d}``,
    ``efield{d}``): when it returns False, :class:`StructurePaused` is raised and the
    run directory (wavefunctions included) is left for a later call.

    A direction ``c`` finished on another ground state (carried over from another
    session) has no ddk wavefunctions on this one, so a later field direction ``d > c``
    could not give ε∞[d, c].  Before the ddk of the first direction run on a ground
    state, the ddk of each such ``c`` is therefore run again (``eps_ddk{c}``: the
    ``ddk{c}`` input, same output files) when ``complete_epsilon`` is true; these
    steps are optional: when ``before_step("eps_ddk{c}")`` returns False, or the run
    fails (:class:`AbinitError`; its output wavefunctions are deleted), the step is
    skipped with a message to ``log`` (the ε∞ elements stay unknown), not paused or failed.

    ``time_left()`` (seconds until the running step would be killed, e.g. a work session's
    end; None: no limit) sets the ground state's ``--timelimit`` that many seconds minus
    :data:`GS_TIMELIMIT_MARGIN_S` ahead: a ground state cut there keeps its wavefunctions
    (:data:`PARTIAL_WFK`, seconds so far in ``gs.partial``) and raises
    :class:`StructurePaused` (``cut=True``); the next try continues from them (``irdwfk
    1``) and its marker counts the seconds of every try.  A restart that fails drops the
    partial wavefunctions (the try after starts afresh).  ``graceful`` (with ``stop_event``:
    :func:`run_step`) ends a running ground state the same way when the stop comes.

    Returns
    -------
    dict
        Wall seconds per cost group ``gs``, ``ddk``, ``efield`` (runs done in an
        earlier, interrupted call are read back from their markers).
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    inputs = make_inputs(atoms, settings)
    natom = len(atoms)

    def out_prefix(name: str) -> str:
        """``outdata_prefix`` of step ``name`` (:func:`abinit_inputs`); ``eps_ddk{c}`` reruns ddk{c}."""
        base = name.removeprefix("eps_")
        return "gs" if base == "gs" else "ef" + base[6:] if base.startswith("efield") else base

    def execute(name: str, text: str) -> float:
        """Run input ``text`` as ``<name>.abi`` and leave its done marker; wall seconds.

        The step's earlier outputs (of a failed or killed try) are removed first, so that
        a file it did not write this time (e.g. the WFK of an unconverged ground state) is
        never taken for its result; a field step's DDB is copied to ``efield{d}.ddb``
        before its marker is written.  The ground state continues a cut one (its
        docstring above)."""
        partial = directory / PARTIAL_WFK
        restart = name == "gs" and partial.is_file()
        if restart:
            text += '\n# continue the ground state cut early (time limit or stop request)\nirdwfk 1\nindata_prefix "in"\n'
            _link(directory, PARTIAL_WFK, "in_WFK")
        (directory / f"{name}.abi").write_text(text)
        for stale in directory.glob(f"{name}.abo*"):
            stale.unlink()  # ABINIT renames instead of overwriting; keep one output
        for stale in directory.glob(f"{out_prefix(name)}_o_*"):
            stale.unlink()
        (directory / EXIT_FILE).unlink(missing_ok=True)  # a stop request of an earlier try
        left = time_left() if name == "gs" and time_left is not None else None
        extra = {} if left is None else {"timelimit_s": gs_timelimit_s(left)}
        if graceful is not None:
            extra["graceful"] = graceful
        spent = directory / PARTIAL_SECONDS
        earlier = read_marker(spent) if name == "gs" and spent.is_file() else 0.0  # of cut tries
        try:
            seconds = run_step(directory, name, ranks, timeout_s, nice, stop_event, **extra)
        except StepCut as cut:
            so_far = earlier + cut.seconds
            wfk = directory / "gs_o_WFK"
            if not wfk.is_file():
                raise AbinitError(f"{name}: cut {cut.reason} without writing {wfk.name}") from None
            os.replace(wfk, partial)
            _write_marker(spent, so_far)
            if log is not None:
                log(f"{name} cut {cut.reason} ({_scf_summary(directory / f'{name}.abo')}, "
                    f"{so_far / 60:.0f} min so far): its wavefunctions are kept, the next try continues from them")
            raise StructurePaused(name, cut=True) from None
        except AbinitError:
            if restart:  # the kept wavefunctions may be the cause: the next try starts afresh
                partial.unlink(missing_ok=True)
                spent.unlink(missing_ok=True)
            raise
        if restart:
            seconds += earlier
            partial.unlink()
            spent.unlink(missing_ok=True)
        if name.startswith("efield") and name[6:].isdigit():
            ddb = directory / f"ef{name[6:]}_o_DDB"
            if not ddb.is_file():
                raise AbinitError(f"{name}: no derivative database ({ddb.name}) written")
            tmp = directory / f".{name}.ddb.tmp"
            shutil.copyfile(ddb, tmp)
            os.replace(tmp, directory / f"{name}.ddb")
        _write_marker(directory / f"{name}.done", seconds)
        return seconds

    def run_once(name: str) -> float:
        marker = directory / f"{name}.done"
        if marker.is_file():
            return read_marker(marker)
        if before_step is not None and not before_step(name):
            raise StructurePaused(name)
        return execute(name, inputs[name])

    def _link_wfk() -> None:
        _link(directory, "gs_o_WFK", "in_WFK")

    def ddk_file(d: int) -> str | None:
        """The ddk wavefunctions of direction ``d`` on this ground state, if any."""
        ipert = 3 * natom + d  # ddk = perturbation natom+1: files 1WF{3*natom+1..3}
        for source in (f"ddk{d}_o_1WF{ipert}", f"ddk_o_1WF{ipert}"):  # per direction; one run (oldest layout)
            if (directory / source).is_file():
                return source
        return None

    def link_ddk(directions) -> None:
        for old in directory.glob("in_1WF*"):
            old.unlink()
        for d in directions:
            source = ddk_file(d)
            if source is not None:
                _link(directory, source, f"in_1WF{3 * natom + d}")

    eps_failed: set[int] = set()  # optional ddk runs that failed in this call: not tried again

    def refresh_ddk(d: int) -> float:
        """Optional ddk runs (``eps_ddk{c}``) for the directions ``c < d`` finished on another
        ground state, so that the field runs from ``d`` on also give ε∞[d, c]; wall seconds.
        A failed run is skipped: the structure goes on without ε∞[d, c]."""
        seconds = 0.0
        for c in range(1, d):
            if ddk_file(c) is not None or not (directory / f"efield{c}.done").is_file() or c in eps_failed:
                continue
            name = f"eps_ddk{c}"
            if before_step is None or before_step(name):
                try:
                    seconds += execute(name, inputs[f"ddk{c}"])
                except AbinitError as exc:
                    eps_failed.add(c)
                    for partial in directory.glob(f"ddk{c}_o_*"):  # never read half-written ddk files
                        partial.unlink()
                    if log is not None:
                        log(f"skip {name} (optional, for ε∞ only): it failed ({exc}); ε∞ elements "
                            f"with direction {c} stay unknown")
        return seconds

    legacy = (directory / "ddk.done").is_file() or (directory / "efield.done").is_file()
    if legacy:
        field_runs_left = not (directory / "efield.done").is_file()
    else:
        field_runs_left = any(not (directory / f"efield{d}.done").is_file() for d in DIRECTIONS)
    if (directory / "gs.done").is_file() and not (directory / "gs_o_WFK").is_file() and field_runs_left:
        (directory / "gs.done").unlink()  # ground state carried over from another session: wavefunctions needed again
    timings = {"gs": run_once("gs")}
    if legacy:
        # older layout: all ddk directions first, then one efield run with rfdir 1 1 1
        timings["ddk"] = read_marker(directory / "ddk.done")
        if not (directory / "efield.done").is_file():
            _link_wfk()
            link_ddk(DIRECTIONS)
        timings["efield"] = run_once("efield")
    else:
        timings["ddk"] = timings["efield"] = 0.0
        for d in DIRECTIONS:
            if not (directory / f"efield{d}.done").is_file():
                _link_wfk()
                if complete_epsilon:
                    timings["ddk"] += refresh_ddk(d)
                timings["ddk"] += run_once(f"ddk{d}")
                # the ddk files of directions 1..d that exist (all of them unless earlier
                # directions were finished in another session): field-field elements (d, j<=d)
                link_ddk(range(1, d + 1))
            elif (directory / f"ddk{d}.done").is_file():
                timings["ddk"] += read_marker(directory / f"ddk{d}.done")
            seconds = run_once(f"efield{d}")  # copies ef{d}_o_DDB to efield{d}.ddb when it runs
            if not (directory / f"efield{d}.ddb").is_file():
                raise AbinitError(f"efield{d}: no derivative database (ef{d}_o_DDB) written")
            timings["efield"] += seconds
            if on_direction is not None:
                on_direction(d)
    if cleanup:
        cleanup_restart_files(directory)
    return timings


def read_marker(marker: Path) -> float:
    """Wall seconds recorded in a run's done marker."""
    return float(marker.read_text().strip() or 0.0)


def _write_marker(marker: Path, seconds: float) -> None:
    tmp = marker.with_name(f".{marker.name}.tmp")
    tmp.write_text(f"{seconds:.1f}\n")
    os.replace(tmp, marker)


def cleanup_restart_files(directory: str | os.PathLike) -> None:
    """Delete wavefunctions/densities/potentials once a structure is finished."""
    directory = Path(directory)
    for pattern in ("*_WFK", "*_1WF*", "*_DEN*", "*_POT*", "in_*", "*_EIG", "*.nc", "*_DDB", "*_EBANDS.agr"):
        for p in directory.glob(pattern):
            if p.is_symlink() or p.is_file():
                p.unlink()
