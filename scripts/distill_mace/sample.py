#!/usr/bin/env python
"""Sample CaTiO3 configurations and label them with SevenNet-0 (the distillation teacher).

Runs in the teacher's own environment (``scripts/distill_mace/make_venv.sh`` creates
``.venv-sevenn``; SevenNet needs e3nn >= 0.5, the project's MACE stack pins e3nn 0.4.4)::

    nice -n 5 .venv-sevenn/bin/python scripts/distill_mace/sample.py --out runs/distill/data

What is sampled (``config_type`` in the output; cells named by atom count)
-------------------------------------------------------------------------
* ``pnma_rattle``   20-atom Pnma (experimental and teacher-relaxed cells), Gaussian rattles;
* ``pnma_strain``   20-atom Pnma under random strains (|e_ij| <= 3 %, shear included) + rattle;
* ``cubic_5``       5-atom Pm-3m, a = 3.78-3.98 Å, rattled;
* ``cubic_strain``  40-atom 2x2x2 cubic, strained + rattled;
* ``tilted``        40-atom 2x2x2 cubic with Glazer octahedral tilts (a-a-a-, a0a0c-, a+b-b-,
                    a0b-b-, a+a+a+, random) of 0-14 degrees, strained + rattled;
* ``polar``         40-atom cubic/tilted and 20-atom Pnma cells with Ti (and Ca) off-centred
                    against O by 0-0.2 Å along a random direction (what a field does), rattled;
* ``md_pnma_20``, ``md_pnma_80``, ``md_pnma_160``, ``md_cubic_135``, ``md_tilted_40``:
  snapshots of short Langevin MD with the teacher at 300-1900 K (cells expanded by a linear
  thermal expansion of 1.2e-5 /K from the teacher's 0 K cell), started from thermal rattles
  and Maxwell-Boltzmann velocities so that short equilibration suffices;
* ``srtio3`` / ``batio3`` (only with ``--with-ba-sr``): a few rattled/strained/tilted cells;
* ``close_pair``    20-atom Pnma / 40-atom cubic cells (rattled 0.03 Å) with one nearest-neighbour
                    pair (O-O, Ti-O, Ca-O, Ca-Ti, Ti-Ti, Ca-Ca in turn) pushed together to a random
                    distance between a floor (O-O 1.2, Ti-O 1.3, Ca-O 1.5, cation pairs 2.2 Å) and
                    0.85 of its equilibrium length: the repulsive wall that thermal MD rarely
                    visits.  Without it the first distilled model had a false O-O minimum near
                    1.4 Å and collapsed after 4 ps of NpT at 1800 K;
* ``hot_rattle``    20-atom Pnma with large Gaussian rattles (σ 0.15-0.25 Å).

Labels (ASE units): ``info["REF_energy"]`` eV, ``arrays["REF_forces"]`` eV/Å,
``info["REF_stress"]`` eV/Å³ in ASE's sign and Voigt order (xx, yy, zz, yz, xz, xy).
MACE's recommended ``REF_*`` names keep the trainer from confusing labels with the results
of an attached calculator.

Outputs in ``--out``: ``all.xyz``, ``train.xyz``, ``valid.xyz``, ``test.xyz`` (split by frame,
stratified by ``config_type``; ``test.xyz`` is never used in training), ``e0s.json``
(teacher's isolated-atom energies, used as MACE's E0s), ``teacher_reference.json``
(teacher-relaxed Pnma and cubic cells) and ``summary.json`` (counts and timings).

Deterministic: every task draws from ``numpy.random.default_rng([seed, task_index])`` and
torch runs one thread per worker, so the result does not depend on the worker count.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import multiprocessing as mp
import time
import warnings
from pathlib import Path

import numpy as np
from ase import Atoms, units
from ase.filters import FrechetCellFilter
from ase.io import read, write
from ase.md.langevin import Langevin
from ase.md.velocitydistribution import MaxwellBoltzmannDistribution, Stationary
from ase.optimize import BFGS
from ase.spacegroup import crystal

TEACHER = "7net-0"
# Experimental Pnma CaTiO3 (REFERENCE.md, "CaTiO3 structures"); b is the long axis.
PNMA_CELL = (5.4423, 7.6401, 5.3796)
PNMA_BASIS = [
    ("Ca", (0.03442, 0.25, 0.99349)),
    ("Ti", (0.5, 0.0, 0.0)),
    ("O", (0.48394, 0.25, 0.07113)),
    ("O", (0.28887, 0.03716, 0.71056)),
]
LINEAR_EXPANSION_PER_K = 1.2e-5
EINSTEIN_K_EV_PER_A2 = 5.0  # spring constant for thermal starting displacements
MAX_FORCE_EV_PER_A = 25.0  # frames above this are dropped (MD blow-up guard)

_CALC = None


# --------------------------------------------------------------------------- structures
def pnma_experimental() -> Atoms:
    """20-atom Pnma CaTiO3 at the experimental lattice (a, b, c) = (5.4423, 7.6401, 5.3796) Å."""
    symbols, basis = zip(*PNMA_BASIS)
    return crystal(
        list(symbols), basis=list(basis), spacegroup=62, cellpar=[*PNMA_CELL, 90, 90, 90]
    )


def cubic(a: float, a_site: str = "Ca") -> Atoms:
    """5-atom Pm-3m ABO3 perovskite (B = Ti at the origin, A at the body centre)."""
    return Atoms(
        [a_site, "Ti", "O", "O", "O"],
        scaled_positions=[(0.5, 0.5, 0.5), (0, 0, 0), (0.5, 0, 0), (0, 0.5, 0), (0, 0, 0.5)],
        cell=np.eye(3) * a,
        pbc=True,
    )


GLAZER = {  # per-axis tilt type: "+" in-phase, "-" anti-phase, "0" none
    "a-a-a-": "---",
    "a0a0c-": "00-",
    "a+b-b-": "+--",
    "a0b-b-": "0--",
    "a+a+a+": "+++",
    "a0a0c+": "00+",
}


def tilted(a: float, angles_deg, pattern: str, a_site: str = "Ca") -> Atoms:
    """2x2x2 (40-atom) cubic perovskite with octahedral tilts (first order in the angles).

    Each O between two Ti along axis j moves by ``phi_k s_k(Ti) e_k x (r_O - r_Ti)`` for every
    tilt axis k != j, with ``s_k = (-1)^(sum of Ti indices across k)`` times
    ``(-1)^(index along k)`` for anti-phase ("-") tilts; this is the same from both Ti neighbours
    of the O, so the octahedra stay corner-sharing.
    """
    atoms = cubic(a, a_site).repeat((2, 2, 2))
    phi = np.radians(np.asarray(angles_deg, dtype=float))
    pos = atoms.get_positions()
    ti = [i for i, s in enumerate(atoms.get_chemical_symbols()) if s == "Ti"]
    ti_idx = {tuple(np.rint(pos[i] / a).astype(int) % 2): i for i in ti}
    for i, s in enumerate(atoms.get_chemical_symbols()):
        if s != "O":
            continue
        frac = pos[i] / a
        j = int(np.argmax(np.abs(frac - np.rint(frac))))  # the axis on which O sits mid-bond
        n = np.rint(frac - 0.5 * np.eye(3)[j]).astype(int)  # Ti neighbour at r_O - a/2 e_j
        r_rel = pos[i] - n * a
        delta = np.zeros(3)
        for k in range(3):
            if k == j or pattern[k] == "0":
                continue
            perp = [m for m in range(3) if m != k]
            sgn = (-1) ** int(n[perp[0]] + n[perp[1]])
            if pattern[k] == "-":
                sgn *= (-1) ** int(n[k])
            delta += phi[k] * sgn * np.cross(np.eye(3)[k], r_rel)
        pos[i] += delta
        assert tuple(n % 2) in ti_idx
    atoms.set_positions(pos)
    return atoms


def random_strain(rng: np.random.Generator, max_strain: float) -> np.ndarray:
    """Symmetric strain tensor with components uniform in [-max, max]."""
    e = rng.uniform(-max_strain, max_strain, size=(3, 3))
    return 0.5 * (e + e.T)


def strained(atoms: Atoms, eps: np.ndarray) -> Atoms:
    out = atoms.copy()
    out.set_cell(out.cell @ (np.eye(3) + eps), scale_atoms=True)
    return out


def rattled(atoms: Atoms, rng: np.random.Generator, sigma: float) -> Atoms:
    out = atoms.copy()
    out.positions += rng.normal(0.0, sigma, size=out.positions.shape)
    return out


#: (species A, species B, closest distance sampled in Å) for ``close_pair``
CLOSE_PAIRS = (("O", "O", 1.2), ("Ti", "O", 1.3), ("Ca", "O", 1.5),
               ("Ca", "Ti", 2.2), ("Ti", "Ti", 2.2), ("Ca", "Ca", 2.2))


def close_pair(atoms: Atoms, rng: np.random.Generator, pair: tuple[str, str, float]) -> Atoms:
    """Push a random A atom and its nearest B neighbour together (both move, along the bond)."""
    sp_a, sp_b, floor = pair
    out = atoms.copy()
    sym = np.array(out.get_chemical_symbols())
    i = int(rng.choice(np.flatnonzero(sym == sp_a)))
    js = [j for j in np.flatnonzero(sym == sp_b) if j != i]
    d = out.get_distances(i, js, mic=True)
    j = int(js[int(np.argmin(d))])
    v = out.get_distance(i, j, mic=True, vector=True)
    r = float(np.linalg.norm(v))
    target = rng.uniform(floor, max(floor, 0.85 * r))
    shift = 0.5 * (r - target) * v / r
    out.positions[i] += shift
    out.positions[j] -= shift
    return out


def polar_shift(atoms: Atoms, rng: np.random.Generator, amplitude: float) -> Atoms:
    """Off-centre cations against O along a random direction (a uniform polar distortion)."""
    out = atoms.copy()
    d = rng.normal(size=3)
    d /= np.linalg.norm(d)
    sym = np.array(out.get_chemical_symbols())
    shift = np.zeros((len(out), 3))
    shift[sym == "Ti"] = amplitude * d
    shift[(sym != "Ti") & (sym != "O")] = 0.5 * amplitude * rng.uniform(0, 1) * d
    out.positions += shift
    return out


def thermal_sigma(temperature_K: float) -> float:
    """Per-axis RMS displacement of an Einstein oscillator, sqrt(kT/k) in Å."""
    return float(np.sqrt(units.kB * temperature_K / EINSTEIN_K_EV_PER_A2))


def expanded(atoms: Atoms, temperature_K: float) -> Atoms:
    out = atoms.copy()
    out.set_cell(
        out.cell * (1 + LINEAR_EXPANSION_PER_K * (temperature_K - 300.0)), scale_atoms=True
    )
    return out


# --------------------------------------------------------------------------- teacher
def _init_worker() -> None:
    global _CALC
    import torch

    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")
    from sevenn.calculator import SevenNetCalculator

    _CALC = SevenNetCalculator(TEACHER, device="cpu")


def label(atoms: Atoms, config_type: str, **info) -> Atoms | None:
    """Evaluate the teacher and return a calculator-free copy with REF_* labels."""
    if atoms.calc is None:
        atoms = atoms.copy()
        atoms.calc = _CALC
    e = float(atoms.get_potential_energy())
    f = np.array(atoms.get_forces())
    s = np.array(atoms.get_stress(voigt=True))
    if not np.isfinite(e) or np.abs(f).max() > MAX_FORCE_EV_PER_A:
        return None
    out = Atoms(
        atoms.get_chemical_symbols(), positions=atoms.get_positions(), cell=atoms.cell[:], pbc=True
    )
    out.info["config_type"] = config_type
    out.info["REF_energy"] = e
    out.info["REF_stress"] = s
    out.info.update(info)
    out.arrays["REF_forces"] = f
    return out


# --------------------------------------------------------------------------- tasks
def task_static(spec: dict, rng: np.random.Generator) -> list[Atoms]:
    kind, n = spec["kind"], spec["n"]
    ref = spec["ref"]
    frames = []
    for _ in range(n):
        if kind == "pnma_rattle":
            base = pnma_experimental() if rng.uniform() < 0.5 else ref["pnma"].copy()
            a = rattled(base, rng, rng.uniform(0.02, 0.15))
        elif kind == "pnma_strain":
            base = pnma_experimental() if rng.uniform() < 0.5 else ref["pnma"].copy()
            a = rattled(strained(base, random_strain(rng, 0.03)), rng, rng.uniform(0.01, 0.08))
        elif kind == "cubic_5":
            a = rattled(cubic(rng.uniform(3.78, 3.98)), rng, rng.uniform(0.0, 0.12))
        elif kind == "cubic_strain":
            a = cubic(rng.uniform(3.82, 3.94)).repeat((2, 2, 2))
            a = rattled(strained(a, random_strain(rng, 0.03)), rng, rng.uniform(0.02, 0.12))
        elif kind == "tilted":
            a = _random_tilted(rng, spec.get("a_site", "Ca"), spec.get("a0", ref["a_cubic"]))
        elif kind == "polar":
            if rng.uniform() < 0.3:
                base = ref["pnma"].copy()
            elif rng.uniform() < 0.5:
                base = cubic(ref["a_cubic"] * rng.uniform(0.98, 1.02)).repeat((2, 2, 2))
            else:
                base = _random_tilted(rng, "Ca", ref["a_cubic"], rattle=False)
            a = rattled(
                polar_shift(base, rng, rng.uniform(0.02, 0.20)), rng, rng.uniform(0.01, 0.06)
            )
        elif kind == "close_pair":
            base = pnma_experimental() if rng.uniform() < 0.5 else cubic(ref["a_cubic"]).repeat((2, 2, 2))
            a = close_pair(rattled(base, rng, 0.03), rng, CLOSE_PAIRS[int(rng.integers(len(CLOSE_PAIRS)))])
        elif kind == "hot_rattle":
            base = pnma_experimental() if rng.uniform() < 0.5 else ref["pnma"].copy()
            a = rattled(base, rng, rng.uniform(0.15, 0.25))
        elif kind in ("srtio3", "batio3"):
            site, a0 = ("Sr", 3.905) if kind == "srtio3" else ("Ba", 4.00)
            if rng.uniform() < 0.5:
                a = cubic(a0, site).repeat((2, 2, 2))
                a = rattled(strained(a, random_strain(rng, 0.03)), rng, rng.uniform(0.02, 0.12))
            else:
                a = _random_tilted(rng, site, a0, max_angle=8.0)
        else:
            raise ValueError(kind)
        fr = label(a, spec["config_type"])
        if fr is not None:
            frames.append(fr)
    return frames


def _random_tilted(
    rng, a_site: str, a0: float, rattle: bool = True, max_angle: float = 14.0
) -> Atoms:
    name = (
        list(GLAZER)[rng.integers(len(GLAZER) + 1) % len(GLAZER)] if rng.uniform() < 0.8 else None
    )
    if name is None:  # random per-axis types
        pattern = "".join(rng.choice(list("0+-"), size=3))
    else:
        pattern = GLAZER[name]
    angles = rng.uniform(0.0, max_angle, size=3) * np.array([c != "0" for c in pattern])
    a = tilted(a0 * rng.uniform(0.98, 1.01), angles, pattern, a_site)
    if rattle:
        a = rattled(strained(a, random_strain(rng, 0.03)), rng, rng.uniform(0.01, 0.08))
    return a


def task_md(spec: dict, rng: np.random.Generator) -> list[Atoms]:
    """Langevin NVT with the teacher; snapshots every ``every`` steps after ``n_eq`` steps."""
    ref, T = spec["ref"], spec["T"]
    if spec["cell"] == "pnma":
        atoms = ref["pnma"].repeat(tuple(spec["repeat"]))
    elif spec["cell"] == "cubic":
        atoms = cubic(ref["a_cubic"]).repeat(tuple(spec["repeat"]))
    elif spec["cell"] == "tilted":
        atoms = tilted(ref["a_cubic"] * 0.99, [8.0, 8.0, 8.0], "---")
    else:
        raise ValueError(spec["cell"])
    atoms = rattled(expanded(atoms, T), rng, thermal_sigma(T))
    atoms.calc = _CALC
    MaxwellBoltzmannDistribution(atoms, temperature_K=T, rng=rng)
    Stationary(atoms)
    dyn = Langevin(
        atoms,
        spec.get("timestep_fs", 2.0) * units.fs,
        temperature_K=T,
        friction=0.02 / units.fs,
        rng=rng,
    )
    frames = []
    dyn.run(spec["n_eq"])
    for _ in range(spec["n_snap"]):
        dyn.run(spec["every"])
        fr = label(
            atoms,
            spec["config_type"],
            temperature_K=float(T),
            md_temperature_inst_K=float(atoms.get_temperature()),
        )
        if fr is None:
            break
        frames.append(fr)
    return frames


def _cache_file(cache: Path, idx: int, seed: int, spec: dict) -> Path:
    key = json.dumps({k: v for k, v in spec.items() if k != "ref"}, sort_keys=True, default=str)
    digest = hashlib.sha1(f"{seed}|{idx}|{key}".encode()).hexdigest()[:12]
    return cache / f"task{idx:03d}_{spec['config_type']}_{digest}.xyz"


def run_task(args: tuple[int, int, dict, str]) -> tuple[int, list[Atoms], float]:
    """Run one task, or read its cached frames (``OUT/cache``) from an interrupted run."""
    idx, seed, spec, cache = args
    path = _cache_file(Path(cache), idx, seed, spec)
    t0 = time.perf_counter()
    if path.exists():
        return idx, read(path, ":"), 0.0
    rng = np.random.default_rng([seed, idx])
    frames = task_md(spec, rng) if spec["kind"] == "md" else task_static(spec, rng)
    dt = time.perf_counter() - t0
    write(path.with_suffix(".tmp"), frames, format="extxyz")
    path.with_suffix(".tmp").rename(path)
    return idx, frames, dt


# --------------------------------------------------------------------------- plan
def build_tasks(ref: dict, scale: float, with_ba_sr: bool) -> list[dict]:
    def n(x):
        return max(1, round(x * scale))

    tasks: list[dict] = []
    # static sets, split into chunks of <= 20 frames so the pool balances
    static = {
        "pnma_rattle": 60,
        "pnma_strain": 60,
        "cubic_5": 40,
        "cubic_strain": 20,
        "tilted": 60,
        "polar": 30,
    }
    if with_ba_sr:
        static.update({"srtio3": 15, "batio3": 15})
    for kind, count in static.items():
        count = n(count)
        for start in range(0, count, 20):
            tasks.append({"kind": kind, "config_type": kind, "n": min(20, count - start)})
    md = [  # (config_type, cell, repeat, temperatures, n_eq, n_snap, every)
        ("md_pnma_20", "pnma", (1, 1, 1), (300, 700, 1100, 1500, 1900), 10, 5, 6),
        ("md_tilted_40", "tilted", None, (300, 800, 1400), 10, 4, 6),
        ("md_pnma_80", "pnma", (2, 1, 2), (300, 800, 1300, 1900), 10, 3, 6),
        ("md_cubic_135", "cubic", (3, 3, 3), (1700,), 8, 2, 6),
        ("md_pnma_160", "pnma", (2, 2, 2), (1200,), 8, 2, 6),
    ]
    for ct, cell, rep, temps, n_eq, n_snap, every in md:
        for T in temps:
            tasks.append(
                {
                    "kind": "md",
                    "config_type": ct,
                    "cell": cell,
                    "repeat": rep,
                    "T": T,
                    "n_eq": n_eq,
                    "n_snap": n(n_snap),
                    "every": every,
                }
            )
    # added after the first model (appended so the earlier tasks keep their indices and caches)
    for kind, count in {"close_pair": 60, "hot_rattle": 30}.items():
        count = n(count)
        for start in range(0, count, 20):
            tasks.append({"kind": kind, "config_type": kind, "n": min(20, count - start)})
    for t in tasks:
        t["ref"] = ref
    return tasks


def task_cost(t: dict) -> float:
    """Rough teacher cost in atom-evaluations (for ordering the pool, largest first)."""
    if t["kind"] != "md":
        return 30.0 * t["n"]
    natoms = {"pnma": 20, "cubic": 5, "tilted": 40}[t["cell"]] * (
        int(np.prod(t["repeat"])) if t["repeat"] else 1
    )
    return natoms * (t["n_eq"] + t["n_snap"] * t["every"])


# --------------------------------------------------------------------------- reference
def teacher_reference() -> tuple[dict, dict, dict]:
    """Teacher-relaxed Pnma cell, cubic lattice constant and isolated-atom energies."""
    _init_worker()
    pnma = pnma_experimental()
    pnma.calc = _CALC
    t0 = time.perf_counter()
    BFGS(FrechetCellFilter(pnma), logfile=None).run(fmax=0.005, steps=300)
    abc = pnma.cell.cellpar()[:3]
    a_grid = np.linspace(3.80, 3.98, 10)
    e_grid = []
    for a in a_grid:
        c = cubic(a)
        c.calc = _CALC
        e_grid.append(c.get_potential_energy())
    p = np.polyfit(a_grid, e_grid, 3)
    roots = [r.real for r in np.roots(np.polyder(p)) if abs(r.imag) < 1e-12 and 3.7 < r.real < 4.1]
    a_cubic = float(min(roots, key=lambda r: np.polyval(p, r)))
    e0s = {}
    for sym in ("Ca", "Ti", "O", "Sr", "Ba"):
        iso = Atoms(sym, positions=[(0, 0, 0)], cell=np.eye(3) * 20.0, pbc=True)
        iso.calc = _CALC
        e0s[int(iso.numbers[0])] = float(iso.get_potential_energy())
    tilt_scan = tilt_energy_scan(a_cubic, _CALC)
    pnma_plain = Atoms(
        pnma.get_chemical_symbols(), positions=pnma.get_positions(), cell=pnma.cell[:], pbc=True
    )
    info = {
        "teacher": TEACHER,
        "pnma_abc_A": [float(x) for x in abc],
        "pnma_energy_eV_per_atom": float(pnma.get_potential_energy()) / len(pnma),
        "a_cubic_A": a_cubic,
        "e0s_eV": e0s,
        "tilt_scan": tilt_scan,
        "time_s": time.perf_counter() - t0,
    }
    return {"pnma": pnma_plain, "a_cubic": a_cubic}, e0s, info


TILT_SCAN_DEG = (0.0, 2.0, 4.0, 6.0, 8.0, 10.0, 12.0)


def tilt_energy_scan(a_cubic: float, calc) -> dict:
    """Energy (meV per 5-atom formula unit, relative to 0 deg) of frozen R (a0a0c-) and
    M (a0a0c+) tilts of the 40-atom cubic cell at the given lattice constant."""
    scan = {"angles_deg": list(TILT_SCAN_DEG), "a_A": a_cubic}
    for name, pattern in (("R_a0a0c-", "00-"), ("M_a0a0c+", "00+")):
        energies = []
        for phi in TILT_SCAN_DEG:
            atoms = tilted(a_cubic, [0.0, 0.0, phi], pattern)
            atoms.calc = calc
            energies.append(atoms.get_potential_energy())
        e = np.asarray(energies)
        scan[name + "_meV_per_fu"] = ((e - e[0]) / 8 * 1000).tolist()
    return scan


# --------------------------------------------------------------------------- split / main
def split(frames: list[Atoms], seed: int, valid_fraction: float, test_fraction: float):
    rng = np.random.default_rng([seed, 999])
    train, valid, test = [], [], []
    types = sorted({f.info["config_type"] for f in frames})
    for ct in types:
        idx = [i for i, f in enumerate(frames) if f.info["config_type"] == ct]
        idx = list(rng.permutation(idx))
        n_test = max(1, round(test_fraction * len(idx)))
        n_valid = max(1, round(valid_fraction * len(idx)))
        test += idx[:n_test]
        valid += idx[n_test : n_test + n_valid]
        train += idx[n_test + n_valid :]
    return ([frames[i] for i in sorted(s)] for s in (train, valid, test))


def write_split(frames, out: Path, seed: int, valid_fraction: float, test_fraction: float):
    train, valid, test = split(frames, seed, valid_fraction, test_fraction)
    for name, fr in (("train", train), ("valid", valid), ("test", test)):
        write(out / f"{name}.xyz", fr, format="extxyz")
    return train, valid, test


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="runs/distill/data")
    ap.add_argument("--seed", type=int, default=20240611)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument(
        "--scale", type=float, default=1.0, help="multiply frame counts (0.05: smoke test)"
    )
    ap.add_argument("--with-ba-sr", action="store_true", help="add a few SrTiO3/BaTiO3 cells")
    ap.add_argument("--valid-fraction", type=float, default=0.1)
    ap.add_argument("--test-fraction", type=float, default=0.1)
    ap.add_argument(
        "--resplit",
        action="store_true",
        help="only re-split an existing OUT/all.xyz (no teacher calls)",
    )
    args = ap.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.resplit:
        frames = read(out / "all.xyz", ":")
        tr, va, te = write_split(frames, out, args.seed, args.valid_fraction, args.test_fraction)
        print(f"re-split {len(frames)} frames: {len(tr)} train, {len(va)} valid, {len(te)} test")
        return

    t_start = time.perf_counter()
    if (out / "teacher_reference.json").exists() and (out / "teacher_pnma_relaxed.xyz").exists():
        ref_info = json.loads((out / "teacher_reference.json").read_text())  # interrupted run
        e0s = {int(k): v for k, v in ref_info["e0s_eV"].items()}
        ref = {"pnma": read(out / "teacher_pnma_relaxed.xyz"), "a_cubic": ref_info["a_cubic_A"]}
    else:
        ref, e0s, ref_info = teacher_reference()
    print(
        f"teacher reference ({ref_info['time_s']:.1f} s): Pnma abc = "
        f"{np.round(ref_info['pnma_abc_A'], 4).tolist()} Å, cubic a = {ref['a_cubic']:.4f} Å",
        flush=True,
    )
    (out / "teacher_reference.json").write_text(json.dumps(ref_info, indent=2))
    (out / "e0s.json").write_text(json.dumps(e0s, indent=2))
    write(out / "teacher_pnma_relaxed.xyz", ref["pnma"], format="extxyz")

    tasks = build_tasks(ref, args.scale, args.with_ba_sr)
    cache = out / "cache"
    cache.mkdir(exist_ok=True)
    jobs = [(i, args.seed, t, str(cache)) for i, t in enumerate(tasks)]
    jobs.sort(key=lambda j: -task_cost(j[2]))
    results: dict[int, list[Atoms]] = {}
    timings = []
    ctx = mp.get_context("fork")
    with ctx.Pool(args.workers, initializer=_init_worker) as pool:
        for idx, frames, dt in pool.imap_unordered(run_task, jobs, chunksize=1):
            results[idx] = frames
            t = tasks[idx]
            natoms = sum(len(f) for f in frames)
            timings.append(
                {
                    "task": idx,
                    "config_type": t["config_type"],
                    "T": t.get("T"),
                    "frames": len(frames),
                    "atoms": natoms,
                    "time_s": dt,
                }
            )
            print(
                f"[{len(results):3d}/{len(tasks)}] {t['config_type']:<14s} T={t.get('T', '-')!s:>5} "
                f"{len(frames):3d} frames {dt:7.1f} s",
                flush=True,
            )
    frames = [f for i in range(len(tasks)) for f in results[i]]
    write(out / "all.xyz", frames, format="extxyz")
    train, valid, test = write_split(
        frames, out, args.seed, args.valid_fraction, args.test_fraction
    )
    counts = {}
    for f in frames:
        c = counts.setdefault(f.info["config_type"], {"frames": 0, "atoms": 0})
        c["frames"] += 1
        c["atoms"] += len(f)
    summary = {
        "seed": args.seed,
        "scale": args.scale,
        "workers": args.workers,
        "with_ba_sr": args.with_ba_sr,
        "n_frames": len(frames),
        "n_train": len(train),
        "n_valid": len(valid),
        "n_test": len(test),
        "n_atoms_train": sum(len(f) for f in train),
        "counts": counts,
        "wall_time_s": time.perf_counter() - t_start,
        "teacher_cpu_time_s": sum(t["time_s"] for t in timings),
        "tasks": timings,
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    print(json.dumps({k: v for k, v in summary.items() if k != "tasks"}, indent=2))


if __name__ == "__main__":
    main()
