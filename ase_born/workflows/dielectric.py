"""Dielectric tensor of a crystal vs temperature from field MD (seed Fig. 5), plus its 0 K value.

Protocol (:func:`run_dielectric`)
---------------------------------
1. **Structure.** Load the unit cell (default: 20-atom Pnma CaTiO3), relax it with the force
   field (positions and cell), build the MD supercell; the relaxed supercell is the
   reference of the field calculator (``u = 0``) for every run, saved in ``reference.extxyz``
   and in every checkpoint (never re-picked).
2. **0 K.** On the relaxed unit cell: the harmonic ionic tensor ``ε_ion = Zᵀ Φ⁺ Z/(Ω ε0)``
   (:func:`~ase_born.workflows.harmonic.harmonic_dielectric`, same force field, same Z*) and a
   static linear-response check: positions relaxed at zero field and in the field ``E ê_c``
   for each axis (same tolerance), ``ε_static[:, c] = (P_E − P_0)/(ε0 E)``; its ratio to the harmonic value measures the 0 K
   nonlinearity at the field used by the MD.
3. **Per temperature** (Langevin BAOAB, NpT by default, :mod:`ase_born.workflows.md`):
   equilibration at zero field (continuing from the previous temperature), then production
   runs from the same equilibrated state at zero field and with ``E`` along x, y, z (and
   along −x, −y, −z with ``plus_minus``).  With ``correlated`` (default) all production runs of
   a temperature share the initial state *and* the random numbers, so the field response is
   measured on top of the same thermal noise (correlated sampling): the paired difference
   ``P_E(t) − P_0(t)`` has a much smaller variance than either series.  With ``prepolarize``
   (default) a field run starts displaced by the 0 K harmonic static response ``Φ⁺ Z E``
   (tiled from the unit cell), which removes most of the switch-on transient; the first
   ``discard_steps`` of every production run are not used by the finite-field estimator.
4. **Estimators** (CONVENTIONS.md "Dielectric tensor", errors from :mod:`.stats`):

   * finite field: ``ε_ion[b, c] = (⟨P_b⟩_{E ê_c} − ⟨P_b⟩_0)/(ε0 E)`` (with ``plus_minus``:
     ``(⟨P⟩_{+E} − ⟨P⟩_{−E})/(2 ε0 E)``, which cancels even-order nonlinearity, and the
     difference of the +E and −E slopes is reported as a linearity check); block-averaged
     standard errors (of the paired differences when correlated);
   * fluctuation (zero-field run, NpT form): ``ε_ion[b, c] = ⟨δd_b δd_c⟩/(⟨Ω⟩ ε0 k_B T)``,
     error: the larger of the block jackknife and Bartlett's formula for the sample covariance
     (:func:`.stats.covariance_error`; the jackknife alone is too small when the blocks are
     not much longer than the dipole's correlation time); all samples of the zero-field run
     (it starts equilibrated, so none are discarded; its ``n_samples`` is reported with it);
   * total ``ε = ε∞ + ε_ion`` when ε∞ is known (argument, or the Born model's ``epsilon_inf``);
     when it was asked for and ε∞ is missing, a warning is issued and only ε_ion is reported.

Outputs in ``out`` (CSV/JSON/PNG, trajectories in extxyz, written as they go)
-----------------------------------------------------------------------------
``settings.json``, ``checkpoint.json``, ``relaxed_unit_cell.extxyz``, ``reference.extxyz``,
``harmonic.json``, ``md_<T>_<run>.csv`` (per sampled step: time, T, volume, pressure, ionic
P in e/Å², ionic dipole in e·Å, energy), ``traj_<T>_<run>.extxyz``,
``state_<T>_equilibrated.json``, ``dielectric.json`` (everything), ``dielectric.csv``
(one row per temperature, estimator and tensor component) and ``dielectric.png`` (ε_xx, ε_yy,
ε_zz vs T, 0 K harmonic values as open circles).  ``<T>`` is e.g. ``300K``, ``<run>`` one of
``equil``, ``E0``, ``Ex+``, ``Ey+``, ``Ez+``, ``Ex-``, ...

Resuming: call again with the same ``out`` and settings; it continues from the last checkpoint
(``checkpoint_every`` steps), restoring atoms, momenta, cell, integrator and random-number
state, and the calculator's reference and field, so the continued run is the same as an
uninterrupted one.  Different settings raise
:class:`~ase_born.workflows.rundir.IncompatibleSettingsError`.

CPU-sized defaults vs the paper
-------------------------------
:data:`CPU_DEFAULTS` (this dataclass's defaults) fit the README main job on 2 CPU cores with a
small MACE (~0.1 s per force call for the 20-atom cell, ~0.3 s for 80 atoms): one temperature,
the 40-atom ``(1, 1, 2)`` Pnma cell, 2 fs steps, 300 equilibration steps and 4 × 600
production steps, a 1e8 V/m field (inside the linear regime of seed Fig. 3, checked by the 0 K
static test), harmonic 0 K tensor by phonopy.  The fluctuation estimate has a large error at
this length (tens of %), and the report says so.  :data:`PAPER_PRESET` (``--paper``, for a GPU):
the 640-atom ``(4, 2, 4)`` cell, 300–1500 K in 200 K steps, 1 fs, 20 ps equilibration and
100 ps per field direction, E = 5e7 V/m (the seed's), ±E.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from ase_born import physics
from ase_born.calculators.field import check_mode_settings
from ase_born.conventions import (
    C_PER_M2_PER_E_PER_A2,
    EPSILON0,
    field_to_V_per_m,
    validate_field,
)
from ase_born.workflows import md
from ase_born.workflows.common import (
    ConfigMixin,
    check_positive,
    check_temperatures,
    epsilon_inf_matrix,
    integrator_settings,
    load_state_file,
    make_field_calculator,
    md_atoms,
    md_state,
    open_run_directory,
    reference_from_config,
    resolve_fix_com,
    resume_md,
    save_state_file,
    tensor_to_list,
    write_frame,
)
from ase_born.workflows.models import resolve
from ase_born.workflows.rundir import RunDirectory, format_value, read_csv
from ase_born.workflows.stats import (
    fluctuation_epsilon,
    independent_epsilon_column,
    integrated_time,
    paired_epsilon_column,
)
from ase_born.workflows.structures import parse_supercell

MD_COLUMNS = (
    "step",
    "time_fs",
    "temperature_K",
    "volume_A3",
    "pressure_GPa",
    "Px_e_per_A2",
    "Py_e_per_A2",
    "Pz_e_per_A2",
    "dx_eA",
    "dy_eA",
    "dz_eA",
    "energy_eV",
)
_AXES = "xyz"


def _tag(temperature: float) -> str:
    """A temperature's part of the run names (``300K``; 6 significant digits)."""
    return f"{temperature:g}K"


@dataclass(frozen=True)
class DielectricConfig(ConfigMixin):
    """Settings of :func:`run_dielectric` (defaults: the CPU-sized main job, module docstring).

    Units are in the names: K, fs, V/Å, GPa, eV/Å, Å.  ``epsilon_inf``: 1, 3 or 9 numbers
    (isotropic, diagonal, full) or ``None``.  ``fix_com``: remove the centre-of-mass momentum
    after every step; ``None`` (default) does so exactly when the force field is translation
    invariant (for springs to lattice sites, which pin the centre of mass themselves, fixing
    it would constrain the polar response).
    """

    structure: str | None = None
    supercell: tuple[int, int, int] = (1, 1, 2)
    relax: bool = True
    relax_cell: bool = True
    relax_fmax_eV_per_A: float = 1e-3
    relax_steps: int = 300
    temperatures_K: tuple[float, ...] = (300.0,)
    timestep_fs: float = 2.0
    equilibration_steps: int = 300
    production_steps: int = 600
    discard_steps: int = 60
    field_V_per_A: float = 0.01
    plus_minus: bool = False
    correlated: bool = True
    ensemble: str = "npt"
    pressure_GPa: float = 0.0
    thermostat_time_fs: float = 100.0
    barostat_time_fs: float = 1000.0
    sample_every: int = 1
    n_blocks: int = 10
    traj_every: int = 50
    checkpoint_every: int = 100
    harmonic: bool = True
    harmonic_delta_A: float = 0.01
    harmonic_method: str = "auto"
    static_check: bool = True
    prepolarize: bool = True
    static_fmax_eV_per_A: float = 5e-5
    epsilon_inf: tuple[float, ...] | None = None
    total_epsilon: bool = True
    mode: str = "direct"
    born_update_every: int = 1
    fix_com: bool | None = None
    allow_large_field: bool = False
    seed: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "supercell", parse_supercell(self.supercell))
        temps = check_temperatures(self.temperatures_K)
        if len(set(temps)) != len(temps):
            raise ValueError(f"temperatures_K must be distinct, got {list(temps)}")
        tags = [_tag(t) for t in temps]  # the runs' file names
        if len(set(tags)) != len(tags):
            raise ValueError(f"temperatures_K {list(temps)} give the same run names {tags}: they must "
                             "differ in their first 6 significant digits")
        object.__setattr__(self, "temperatures_K", temps)
        for name in (
            "timestep_fs",
            "thermostat_time_fs",
            "barostat_time_fs",
            "relax_fmax_eV_per_A",
            "harmonic_delta_A",
            "static_fmax_eV_per_A",
        ):
            check_positive(getattr(self, name), name)
        for name in (
            "production_steps",
            "sample_every",
            "traj_every",
            "checkpoint_every",
            "born_update_every",
            "relax_steps",
        ):
            check_positive(getattr(self, name), name, integer=True)
        for name in ("equilibration_steps", "discard_steps"):
            check_positive(getattr(self, name), name, integer=True, allow_zero=True)
        if self.n_blocks < 2:
            raise ValueError(f"n_blocks must be >= 2, got {self.n_blocks}")
        n_used = (self.production_steps - self.discard_steps) // self.sample_every
        if n_used < 2 * self.n_blocks:
            raise ValueError(
                f"production_steps - discard_steps = {self.production_steps - self.discard_steps} steps give "
                f"{n_used} samples, fewer than 2 * n_blocks = {2 * self.n_blocks}"
            )
        if not float(self.field_V_per_A) > 0:
            raise ValueError(
                f"field_V_per_A must be a positive magnitude (V/Å), got {self.field_V_per_A!r}"
            )
        validate_field(
            [self.field_V_per_A, 0, 0],
            allow_large_field=self.allow_large_field,
            name="field_V_per_A",
        )
        if self.ensemble not in ("npt", "nvt"):
            raise ValueError(f"ensemble must be 'npt' or 'nvt', got {self.ensemble!r}")
        # the calculator's rules, checked here before anything is written
        check_mode_settings(self.mode, self.born_update_every)
        if self.harmonic_method not in ("auto", "central", "phonopy"):
            raise ValueError(
                f"harmonic_method must be auto, central or phonopy, got {self.harmonic_method!r}"
            )
        if self.epsilon_inf is not None:
            m = epsilon_inf_matrix(self.epsilon_inf)
            object.__setattr__(self, "epsilon_inf", tuple(float(x) for x in m.reshape(-1)))

    @property
    def run_names(self) -> tuple[str, ...]:
        """Production runs per temperature, in order."""
        runs = ["E0"] + [f"E{c}+" for c in _AXES]
        if self.plus_minus:
            runs += [f"E{c}-" for c in _AXES]
        return tuple(runs)


#: defaults of :class:`DielectricConfig`: the CPU-sized README main job
CPU_DEFAULTS = DielectricConfig()

#: the seed paper's size (``--paper``): run it on a GPU
PAPER_PRESET = {
    "supercell": (4, 2, 4),
    "temperatures_K": (300.0, 500.0, 700.0, 900.0, 1100.0, 1300.0, 1500.0),
    "timestep_fs": 1.0,
    "equilibration_steps": 20000,
    "production_steps": 100000,
    "discard_steps": 5000,
    "field_V_per_A": 0.005,
    "plus_minus": True,
    "sample_every": 5,
    "n_blocks": 20,
    "traj_every": 1000,
    "checkpoint_every": 2000,
}


def _field_of_run(run: str, magnitude: float) -> np.ndarray:
    f = np.zeros(3)
    if run.startswith("E") and run != "E0":
        f[_AXES.index(run[1])] = magnitude if run[2] == "+" else -magnitude
    return f


def _harmonic_stage(
    rd: RunDirectory,
    cfg: DielectricConfig,
    unit: Any,
    force_field: Any,
    born_model: Any,
    device: str,
    progress: bool,
    log: Callable[[str], None],
) -> dict[str, Any]:
    """0 K harmonic tensor and static field check on the relaxed unit cell (cached in harmonic.json)."""
    import json

    from ase_born.workflows.harmonic import harmonic_dielectric, relax

    f = rd.file("harmonic.json")
    if f.exists():
        return json.loads(f.read_text())
    out: dict[str, Any] = {"n_atoms": len(unit), "volume_A3": float(unit.get_volume())}
    ff = resolve(force_field, unit)
    bm = resolve(born_model, unit)
    z = physics.asr_project(np.asarray(bm.get_born_charges(unit), dtype=float))
    if cfg.harmonic:
        log(f"0 K harmonic dielectric tensor of the relaxed {len(unit)}-atom cell")
        t0 = time.perf_counter()
        det = harmonic_dielectric(
            unit,
            z,
            calculator=ff,
            delta=cfg.harmonic_delta_A,
            method=cfg.harmonic_method,
            return_details=True,
            progress=progress,
        )
        np.save(rd.file("force_constants_unit_cell.npy"), det["force_constants"])
        np.save(rd.file("born_charges_unit_cell.npy"), z)
        out["harmonic"] = {
            "epsilon_ion": det["epsilon_ion"].tolist(),
            "frequencies_THz": det["frequencies_THz"].tolist(),
            "method": det["method"],
            "n_force_calls": det["n_force_calls"],
            "project_translations": det["project_translations"],
            "max_residual_force_eV_per_A": det["max_residual_force"],
            "wall_time_s": time.perf_counter() - t0,
        }
    if cfg.static_check:
        log(f"0 K static check: relaxing at E = 0 and in E = {cfg.field_V_per_A:g} V/Å along x, y, z")
        t0 = time.perf_counter()

        def relaxed_polarization(run: str) -> tuple[np.ndarray, dict[str, Any]]:
            calc = make_field_calculator(
                ff, bm, unit, mode="direct", device=device, allow_large_field=cfg.allow_large_field
            )
            calc.set(field=_field_of_run(run, cfg.field_V_per_A))
            a = unit.copy()
            res = relax(a, calc, fmax=cfg.static_fmax_eV_per_A, steps=1000)
            return np.asarray(calc.get_property("ionic_polarization", a), dtype=float), res

        # the zero-field relaxation to the same tolerance: the unit cell is relaxed only to
        # relax_fmax, and P_E − P_0 removes what its residual forces would add to every column
        p0, res0 = relaxed_polarization("E0")
        eps_static = np.zeros((3, 3))
        info = [res0]
        for c in range(3):
            p, res = relaxed_polarization(f"E{_AXES[c]}+")
            eps_static[:, c] = (p - p0) / (EPSILON0 * cfg.field_V_per_A)
            info.append(res)
        out["static"] = {
            "field_V_per_A": cfg.field_V_per_A,
            "epsilon_ion": eps_static.tolist(),
            "ionic_polarization_zero_field": p0.tolist(),
            "relaxations": info,
            "wall_time_s": time.perf_counter() - t0,
        }
        if "harmonic" in out:
            h = np.diag(np.asarray(out["harmonic"]["epsilon_ion"]))
            out["static"]["ratio_to_harmonic_diagonal"] = (np.diag(eps_static) / h).tolist()
    rd.write_json("harmonic.json", out)
    return out


def _prepolarization(rd: RunDirectory, field_vec: np.ndarray, n_super: int) -> np.ndarray:
    """Harmonic static displacements ``Φ⁺ Z E`` of the unit cell, tiled onto the supercell (Å).

    Starting a field run at the 0 K static response removes most of the switch-on transient
    (for a harmonic crystal with correlated sampling, all of it).  Zero when the harmonic
    stage was skipped.
    """
    import json

    from ase_born.workflows.harmonic import static_displacements

    f_phi, f_z = rd.file("force_constants_unit_cell.npy"), rd.file("born_charges_unit_cell.npy")
    if not (f_phi.exists() and f_z.exists()):
        return np.zeros((n_super, 3))
    info = json.loads(rd.file("harmonic.json").read_text())["harmonic"]
    u = static_displacements(
        np.load(f_phi),
        np.load(f_z),
        field_vec,
        project_translations=bool(info["project_translations"]),
    )
    if n_super % len(u):
        return np.zeros((n_super, 3))
    return np.tile(u, (n_super // len(u), 1))  # ase.Atoms.repeat order: images of the whole cell


def _analyze_temperature(
    rd: RunDirectory, cfg: DielectricConfig, temperature: float
) -> dict[str, Any]:
    """Estimators for one temperature from its CSV files (module docstring)."""
    tag = _tag(temperature)
    data = {run: read_csv(rd.file(f"md_{tag}_{run}.csv")) for run in cfg.run_names}
    keys = ("Px_e_per_A2", "Py_e_per_A2", "Pz_e_per_A2")
    first = cfg.discard_steps
    series = {}
    for run, d in data.items():
        sel = d["step"] > first
        series[run] = np.stack([d[k][sel] for k in keys], axis=1)
    e = cfg.field_V_per_A
    nb = cfg.n_blocks
    column = paired_epsilon_column if cfg.correlated else independent_epsilon_column
    ff_val = np.zeros((3, 3))
    ff_err = np.zeros((3, 3))
    lin = None
    for c, ax in enumerate(_AXES):
        if cfg.plus_minus:
            v, err = column(series[f"E{ax}+"], series[f"E{ax}-"], 2 * e, nb)
        else:
            v, err = column(series[f"E{ax}+"], series["E0"], e, nb)
        ff_val[:, c], ff_err[:, c] = v, err
    if cfg.plus_minus:
        lin = {
            "epsilon_plus": np.zeros((3, 3)),
            "epsilon_minus": np.zeros((3, 3)),
            "difference": np.zeros((3, 3)),
            "difference_error": np.zeros((3, 3)),
        }
        for c, ax in enumerate(_AXES):
            vp, _ = column(series[f"E{ax}+"], series["E0"], e, nb)
            vm, _ = column(series["E0"], series[f"E{ax}-"], e, nb)
            # (P+ + P- - 2 P0)/E: the even-order (quadratic) response, with its error
            dv, derr = column(series[f"E{ax}+"] + series[f"E{ax}-"], 2 * series["E0"], e, nb)
            lin["epsilon_plus"][:, c], lin["epsilon_minus"][:, c] = vp, vm
            lin["difference"][:, c], lin["difference_error"][:, c] = dv, derr
        lin = {k: v.tolist() for k, v in lin.items()}
    d0 = data["E0"]
    dip = np.stack([d0["dx_eA"], d0["dy_eA"], d0["dz_eA"]], axis=1)
    fl_val, fl_err = fluctuation_epsilon(dip, d0["volume_A3"], temperature, nb)
    p0_mean, p0_err = physics.block_average(series["E0"], nb)
    out = {
        "temperature_K": temperature,
        "mean_temperature_K": float(np.mean(d0["temperature_K"])),
        "mean_volume_A3": float(np.mean(d0["volume_A3"])),
        "mean_pressure_GPa": float(np.nanmean(d0["pressure_GPa"]))
        if np.any(np.isfinite(d0["pressure_GPa"]))
        else None,
        "n_samples_per_run": len(series["E0"]),
        "zero_field_polarization_C_per_m2": (p0_mean * C_PER_M2_PER_E_PER_A2).tolist(),
        "zero_field_polarization_error_C_per_m2": (p0_err * C_PER_M2_PER_E_PER_A2).tolist(),
        "epsilon_ion": {
            "finite_field": {
                "value": ff_val.tolist(),
                "error": ff_err.tolist(),
                "field_V_per_A": e,
                "field_V_per_m": float(field_to_V_per_m(e)),
                "method": (
                    "(P(+E) - P(-E))/(2 eps0 E)" if cfg.plus_minus else "(P(E) - P(0))/(eps0 E)"
                )
                + (
                    ", paired differences (correlated sampling)"
                    if cfg.correlated
                    else ", independent runs"
                ),
            },
            "fluctuation": {
                "value": fl_val.tolist(),
                "error": fl_err.tolist(),
                "method": "<dd dd>/(<V> eps0 kB T), zero-field run, error max(block jackknife, Bartlett)",
                "n_samples": len(dip),
                # of the dipole, in samples: the value is biased low by ~2τ/N (not corrected)
                "integrated_time_samples": integrated_time(dip),
            },
        },
    }
    if lin is not None:
        out["linearity"] = lin
    return out


def _totals(results: dict[str, Any], eps_inf: np.ndarray | None) -> None:
    if eps_inf is None:
        return
    for tr in results["temperatures"]:
        tr["epsilon_total"] = {
            k: {"value": (eps_inf + np.asarray(v["value"])).tolist(), "error": v["error"]}
            for k, v in tr["epsilon_ion"].items()
        }
    h = results.get("zero_kelvin", {}).get("harmonic")
    if h is not None:
        h["epsilon_total"] = (eps_inf + np.asarray(h["epsilon_ion"])).tolist()


def write_outputs(rd: RunDirectory, results: dict[str, Any]) -> None:
    """``dielectric.json``, ``dielectric.csv`` and ``dielectric.png``."""
    rd.write_json("dielectric.json", results, strict=True)
    lines = ["temperature_K,quantity,estimator,component,value,error"]
    h = results.get("zero_kelvin", {}).get("harmonic")
    comps = [f"{_AXES[b]}{_AXES[c]}" for b in range(3) for c in range(3)]
    if h is not None:
        for q in ("epsilon_ion", "epsilon_total"):
            if q in h:
                m = np.asarray(h[q])
                for j, comp in enumerate(comps):
                    lines.append(f"0,{q},harmonic,{comp},{format_value(m.reshape(-1)[j])},0.0")
    for tr in results["temperatures"]:
        for q in ("epsilon_ion", "epsilon_total"):
            for est, v in tr.get(q, {}).items():
                val = np.asarray(v["value"]).reshape(-1)
                err = np.asarray(v["error"]).reshape(-1)
                for j, comp in enumerate(comps):
                    lines.append(",".join([format_value(tr["temperature_K"]), q, est, comp, format_value(val[j]), format_value(err[j])]))
    rd.file("dielectric.csv").write_text("\n".join(lines) + "\n")
    from ase_born.workflows.plots import plot_dielectric

    plot_dielectric(results, rd.file("dielectric.png"))


def format_tensor(value: Any, error: Any | None = None, digits: int = 1) -> str:
    """A 3x3 tensor as text rows, ``value ± error``."""
    v = np.asarray(value, dtype=float)
    rows = []
    for b in range(3):
        cells = []
        for c in range(3):
            if error is None:
                cells.append(f"{v[b, c]:10.{digits}f}")
            else:
                e = np.asarray(error, dtype=float)[b, c]
                cells.append(f"{v[b, c]:9.{digits}f} ± {e:<7.{digits}f}")
        rows.append("  [" + "  ".join(cells) + "]")
    return "\n".join(rows)


def format_report(results: dict[str, Any]) -> str:
    """Human-readable summary: 0 K tensor, and per temperature the MD tensors with errors."""
    q = "epsilon_total" if results.get("epsilon_inf") is not None else "epsilon_ion"
    name = "total ε = ε∞ + ε_ion" if q == "epsilon_total" else "ionic ε_ion (no ε∞ given)"
    out = [f"Dielectric tensor ({name}), rows b = P direction, columns c = field direction"]
    zk = results.get("zero_kelvin", {})
    h = zk.get("harmonic")
    if h is not None:
        out.append(f"0 K harmonic (Zᵀ Φ⁺ Z / Ω ε0, {zk.get('n_atoms')}-atom relaxed cell):")
        out.append(format_tensor(h.get(q, h["epsilon_ion"])))
    s = zk.get("static")
    if s is not None and "ratio_to_harmonic_diagonal" in s:
        r = ", ".join(f"{x:.3f}" for x in s["ratio_to_harmonic_diagonal"])
        out.append(
            f"0 K static relaxation at E = {s['field_V_per_A']:g} V/Å: diagonal / harmonic = {r} "
            "(1 = linear regime)"
        )
    for tr in results["temperatures"]:
        t = tr["temperature_K"]
        for est, v in tr.get(q, tr["epsilon_ion"]).items():
            val, err = np.asarray(v["value"]), np.asarray(v["error"])
            diag = np.diag(val)
            rel = np.abs(np.diag(err) / np.where(diag != 0, diag, np.nan))
            label = "finite field" if est == "finite_field" else "fluctuation (zero field)"
            # the fluctuation estimator uses the whole E0 run (its ε_ion entry counts them)
            n = tr["epsilon_ion"].get(est, {}).get("n_samples", tr["n_samples_per_run"])
            out.append(
                f"{t:g} K, {label} ({n} samples/run; relative error of the diagonal "
                f"{', '.join(f'{100 * x:.0f}%' for x in rel)}):"
            )
            out.append(format_tensor(val, err))
            tau = tr["epsilon_ion"].get(est, {}).get("integrated_time_samples")
            if est == "fluctuation" and tau is not None and np.isfinite(tau) and n < 20 * tau:
                out.append(
                    f"  NOTE: the dipole's integrated correlation time is {tau:.0f} samples: "
                    f"{n} samples hold ~{n / (2 * tau):.0f} independent ones; the fluctuation "
                    f"value is biased low by ~{200 * tau / n:.0f}% and its error bar is too small "
                    "(want N > 20τ: a longer run)"
                )
            if np.nanmax(rel) > 0.2:
                out.append(
                    "  NOTE: statistical error above 20% — too short/small a run for this estimator; "
                    "longer runs or the --paper preset (GPU) reduce it"
                )
        if "linearity" in tr:
            d = np.diag(np.asarray(tr["linearity"]["difference"]))
            de = np.diag(np.asarray(tr["linearity"]["difference_error"]))
            out.append(
                "  even-order response (P+E + P-E - 2 P0)/(eps0 E), diagonal: "
                + ", ".join(f"{x:.2f} ± {y:.2f}" for x, y in zip(d, de))
                + " (0 = linear)"
            )
    for note in results.get("notes", []):
        out.append(f"note: {note}")
    return "\n".join(out)


def run_dielectric(
    config: DielectricConfig,
    force_field: Any,
    born_model: Any,
    out: str,
    *,
    model_info: dict[str, Any] | None = None,
    device: str = "cpu",
    progress: bool = True,
    overwrite: bool = False,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Run (or resume) the dielectric workflow; returns the results dict of ``dielectric.json``.

    Parameters
    ----------
    config : DielectricConfig
        Settings (module docstring).
    force_field : ASE calculator or callable(atoms) -> calculator
        Zero-field force field (a factory is called with each structure it is needed for).
    born_model : Born-charge model or callable(atoms) -> model
        Z* model (``get_born_charges``).
    out : path
        Output directory (created; resumed when it holds a checkpoint).
    model_info : dict, optional
        Identity of the models (e.g. file paths), stored in ``settings.json`` so that a
        resume with other models is refused; default: class names.
    device : str
        Torch device of the field calculator's conservative mode.
    progress : bool
        tqdm progress bars.
    overwrite : bool
        Discard an existing run in ``out``.
    log : callable
        Receives progress messages.
    """
    from tqdm.auto import tqdm

    t_start = time.perf_counter()
    cfg = config
    rd = open_run_directory(
        "dielectric", cfg, out, force_field, born_model,
        model_info=model_info, device=device, overwrite=overwrite, log=log,
    )
    with rd:  # the directory stays locked to this run until it returns or raises
        notes: list[str] = []

        # ---- structure, 0 K
        unit, reference = reference_from_config(rd, cfg, force_field, born_model, log=log)
        zero_k = _harmonic_stage(rd, cfg, unit, force_field, born_model, device, progress, log)
        eps_inf = epsilon_inf_matrix(cfg.epsilon_inf)
        eps_inf_source = "settings" if eps_inf is not None else None
        if eps_inf is None:
            bm_ref = resolve(born_model, reference)
            if getattr(bm_ref, "epsilon_inf", None) is not None:
                eps_inf = epsilon_inf_matrix(bm_ref.epsilon_inf)
                eps_inf_source = f"Born model ({type(bm_ref).__name__}.epsilon_inf)"
        if not cfg.total_epsilon:  # ε_ion only, whatever ε∞ the settings or the Born model carry
            eps_inf = eps_inf_source = None
        if cfg.total_epsilon and eps_inf is None:
            msg = (
                "total ε = ε∞ + ε_ion was asked for but ε∞ is not known (give epsilon_inf / "
                "--epsilon-inf); reporting ε_ion only"
            )
            warnings.warn(msg, stacklevel=2)
            notes.append(msg)

        # ---- MD
        fix_com = resolve_fix_com(cfg.fix_com, reference, force_field)
        runs = ("equil",) + cfg.run_names
        steps_of = {
            r: (cfg.equilibration_steps if r == "equil" else cfg.production_steps) for r in runs
        }
        keys = [f"{_tag(t)}_{r}" for t in cfg.temperatures_K for r in runs]
        ckpt = rd.checkpoint or {}
        completed: list[str] = list(ckpt.get("completed", []))
        current = ckpt.get("current")
        total = sum(steps_of[k.split("_", 1)[1]] for k in keys)
        done = sum(steps_of[k.split("_", 1)[1]] for k in completed) + (
            current["step"] if current else 0
        )
        bar = tqdm(
            total=total, initial=done, desc="MD", unit="step", disable=not progress, smoothing=0.05
        )
        results: dict[str, Any] = {
            "workflow": "dielectric",
            "n_atoms": len(reference),
            "supercell": list(cfg.supercell),
            "zero_kelvin": zero_k,
            "epsilon_inf": tensor_to_list(eps_inf),
            "epsilon_inf_source": eps_inf_source,
            "fix_com": fix_com,
            "temperatures": [],
            "notes": notes,
        }
        try:
            for i, temp in enumerate(cfg.temperatures_K):
                tag = _tag(temp)
                for j, run in enumerate(runs):
                    key = f"{tag}_{run}"
                    if key in completed:
                        continue
                    _run_one(
                        rd,
                        cfg,
                        key,
                        i,
                        j,
                        temp,
                        run,
                        reference,
                        force_field,
                        born_model,
                        device,
                        current if current and current["key"] == key else None,
                        completed,
                        bar,
                        fix_com,
                    )
                    current = None
                results["temperatures"].append(_analyze_temperature(rd, cfg, temp))
                _totals(results, eps_inf)
                write_outputs(rd, results)  # partial results after every temperature
        finally:
            bar.close()
            rd.close()
        _totals(results, eps_inf)
        results["wall_time_s_this_process"] = time.perf_counter() - t_start
        write_outputs(rd, results)
        return results


def _run_one(
    rd: RunDirectory,
    cfg: DielectricConfig,
    key: str,
    i: int,
    j: int,
    temp: float,
    run: str,
    reference: Any,
    force_field: Any,
    born_model: Any,
    device: str,
    resume: dict[str, Any] | None,
    completed: list[str],
    bar: Any,
    fix_com: bool,
) -> None:
    """One MD run (equilibration or production) with checkpoints."""
    tag = _tag(temp)
    n_steps = cfg.equilibration_steps if run == "equil" else cfg.production_steps
    atoms, calc = md_atoms(cfg, force_field, born_model, reference, device)
    integ_kw = integrator_settings(cfg, temperature_K=temp, ensemble=cfg.ensemble)
    if resume is not None:
        dyn, start = resume_md(atoms, calc, resume, **integ_kw)
    else:
        start = 0
        p_eps = None
        if run == "equil":
            if i == 0:
                md.thermalize(atoms, temp, np.random.default_rng([cfg.seed, i, 0, 1]))
            else:
                prev = load_state_file(
                    rd, f"state_{_tag(cfg.temperatures_K[i - 1])}_equilibrated.json"
                )
                md.restore_atoms(atoms, prev["atoms"])
                calc.set_state(prev["calculator"])
                p_eps = prev["integrator"].get("p_eps")
            rng = np.random.default_rng([cfg.seed, i, 0])
        else:
            eq = load_state_file(rd, f"state_{tag}_equilibrated.json")
            md.restore_atoms(atoms, eq["atoms"])
            calc.set_state(eq["calculator"])
            p_eps = eq["integrator"].get("p_eps")
            rng = np.random.default_rng([cfg.seed, i, 1] if cfg.correlated else [cfg.seed, i, 1, j])
        field_vec = _field_of_run(run, cfg.field_V_per_A)
        calc.set(field=tuple(field_vec))
        if run not in ("equil", "E0") and cfg.prepolarize:
            atoms.positions += _prepolarization(rd, field_vec, len(reference))
        dyn = md.make_integrator(atoms, rng=rng, **integ_kw)
        if p_eps is not None and dyn.externalstress is not None:
            pe = np.asarray(p_eps, dtype=float)
            dyn.p_eps = float(pe) if pe.ndim == 0 else pe
    csv_name, traj_name = f"md_{key}.csv", f"traj_{key}.extxyz"
    log_csv = rd.csv(csv_name, MD_COLUMNS)
    traj, _ = rd.open_append(traj_name)
    field = calc.get_field()
    bar.set_postfix_str(key)
    for s in range(start, n_steps):
        md.step(dyn, fix_com)
        s1 = s + 1
        if s1 % cfg.sample_every == 0:
            p = calc.get_property("ionic_polarization", atoms)
            d = calc.get_property("ionic_dipole", atoms)
            stress = calc.results.get("stress")
            log_csv.write(
                [
                    s1,
                    s1 * cfg.timestep_fs,
                    md.temperature_K(atoms, fix_com),
                    atoms.get_volume(),
                    md.pressure_GPa(atoms, stress) if stress is not None else float("nan"),
                    *map(float, p),
                    *map(float, d),
                    float(calc.get_property("energy", atoms)),
                ]
            )
        if s1 % cfg.traj_every == 0:
            write_frame(
                traj,
                atoms,
                {
                    "step": s1,
                    "time_fs": s1 * cfg.timestep_fs,
                    "temperature_K": temp,
                    "field_V_per_A": field.tolist(),
                    "run": key,
                },
            )
        if s1 % cfg.checkpoint_every == 0 and s1 < n_steps:
            rd.save_checkpoint(
                {
                    "completed": completed,
                    "current": {"key": key, "step": s1, **md_state(atoms, dyn, calc)},
                }
            )
        bar.update(1)
    if run == "equil":
        save_state_file(rd, f"state_{tag}_equilibrated.json", atoms, dyn, calc)
    rd.close([csv_name, traj_name])
    completed.append(key)
    rd.save_checkpoint({"completed": completed, "current": None})


__all__ = [
    "CPU_DEFAULTS",
    "MD_COLUMNS",
    "PAPER_PRESET",
    "DielectricConfig",
    "format_report",
    "format_tensor",
    "run_dielectric",
    "write_outputs",
]
