"""NpT heating run with structural analysis (seed Fig. 4): lattice parameters, tilts, phases.

Protocol (:func:`run_heating`)
------------------------------
1. Load the unit cell (default 20-atom Pnma CaTiO3), relax it with the force field, build the
   supercell (axes named in :data:`~ase_born.workflows.structures.AXIS_NAMES`); it is the
   reference of the field calculator and of the tilt analysis.
2. Langevin NpT with anisotropic cell fluctuations (:mod:`ase_born.workflows.md` explains the
   choice of ASE's ``LangevinBAOAB``): ``equilibration_steps`` at the first temperature, then a
   linear ramp to the last one over ``ramp_steps`` (or at ``heating_rate_K_per_ps``), with an
   optional constant field (its stress enters the barostat through the calculator's stress).
   A ramp down (cooling, e.g. for hysteresis against a heating run) works the same way; its
   phase changes are reported in the order the run met them.
3. Every ``log_every`` steps ``heat_log.csv`` gets: target and kinetic T, pressure and stress
   (GPa), cell lengths and angles, pseudo-cubic lattice parameters ``a_p, b_p, c_p`` (Pnma:
   ``a/√2, b/2, c/√2`` per 20-atom cell), volume per formula unit, the in-phase (M3+) and
   out-of-phase (R4+) octahedral tilt amplitudes about the three pseudo-cubic axes
   (:class:`~ase_born.workflows.analysis.TiltAnalyzer`), the ionic polarization (C/m²) and the
   energy.  Every ``traj_every`` steps a frame goes to ``trajectory.extxyz``.
4. Analysis (:func:`analyze_heating`, also callable on a finished or partial directory):
   temperature windows of at most ``window_K`` (the ramp's range split evenly: 300 → 1800 K
   with 200 K gives eight windows of 187.5 K); per window the mean lattice parameters, the mean
   signed tilt amplitudes → Glazer pattern and phase (:func:`~.analysis.classify_tilts`), and
   the spglib space group of the window's time-averaged structure (accumulated at every logged step);
   transition temperatures where the phase changes, and where the M and R amplitudes vanish.
   Outputs ``heat_windows.csv``, ``heat_phases.json``, ``heat.png`` (lattice parameters vs T with
   the experimental 1512 K and 1635 K transitions marked, and tilt amplitudes vs T).

Resume after a kill by calling again with the same ``out`` (at most ``checkpoint_every`` steps
are lost; the continuation is identical to an uninterrupted run).

Sizes
-----
Defaults (CPU): the 80-atom ``(2, 1, 2)`` cell, 300 → 1800 K in 3000 steps of 2 fs (a 250 K/ps
ramp: a quick look, far from the paper's quasi-static heating).  The paper
(:data:`PAPER_PRESET`, ``--paper``): ``(4, 2, 4)`` = 640 atoms (and ``(4, 4, 4)`` = 1280 atoms in a
second run), 300 → 1800 K at 1 K/ps (750 000 steps of 2 fs), on a GPU.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ase_born.calculators.field import check_mode_settings
from ase_born.conventions import C_PER_M2_PER_E_PER_A2, validate_field
from ase_born.workflows import md
from ase_born.workflows.analysis import (
    EXPERIMENTAL_TRANSITIONS_K,
    TiltAnalyzer,
    classify_tilts,
    estimate_transitions,
    order_parameter_vanishing,
    pseudocubic_lattice,
    space_group,
)
from ase_born.workflows.common import (
    ConfigMixin,
    check_positive,
    check_structure_file,
    check_temperatures,
    integrator_settings,
    md_atoms,
    md_state,
    open_run_directory,
    reference_from_config,
    resolve_fix_com,
    resume_md,
    write_frame,
)
from ase_born.workflows.rundir import read_csv
from ase_born.workflows.structures import (
    AXIS_NAMES,
    load_structure,
    make_supercell,
    parse_supercell,
)

LOG_COLUMNS = (
    "step",
    "time_ps",
    "temperature_target_K",
    "temperature_K",
    "pressure_GPa",
    "sxx_GPa",
    "syy_GPa",
    "szz_GPa",
    "syz_GPa",
    "sxz_GPa",
    "sxy_GPa",
    "a_A",
    "b_A",
    "c_A",
    "alpha_deg",
    "beta_deg",
    "gamma_deg",
    "a_p_A",
    "b_p_A",
    "c_p_A",
    "v_per_fu_A3",
    "Mx_deg",
    "My_deg",
    "Mz_deg",
    "Rx_deg",
    "Ry_deg",
    "Rz_deg",
    "Px_C_per_m2",
    "Py_C_per_m2",
    "Pz_C_per_m2",
    "energy_eV",
)


@dataclass(frozen=True)
class HeatingConfig(ConfigMixin):
    """Settings of :func:`run_heating` (defaults: a CPU-sized run; module docstring).

    ``temperatures_K``: (start, end) of the ramp, or one temperature (isothermal run).
    Give ``ramp_steps`` or ``heating_rate_K_per_ps`` (the rate wins when given).
    ``field_V_per_A``: constant field vector (V/Å) or ``None``.
    """

    structure: str | None = None
    supercell: tuple[int, int, int] = (2, 1, 2)
    relax: bool = True
    relax_cell: bool = True
    relax_fmax_eV_per_A: float = 1e-3
    relax_steps: int = 300
    temperatures_K: tuple[float, ...] = (300.0, 1800.0)
    heating_rate_K_per_ps: float | None = None
    ramp_steps: int = 3000
    equilibration_steps: int = 200
    timestep_fs: float = 2.0
    field_V_per_A: tuple[float, float, float] | None = None
    pressure_GPa: float = 0.0
    thermostat_time_fs: float = 100.0
    barostat_time_fs: float = 1000.0
    hydrostatic: bool = False
    log_every: int = 10
    traj_every: int = 100
    checkpoint_every: int = 500
    window_K: float = 50.0
    tilt_threshold_deg: float = 2.0
    symprec: float = 0.1
    mode: str = "direct"
    born_update_every: int = 1
    fix_com: bool | None = None
    allow_large_field: bool = False
    seed: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "supercell", parse_supercell(self.supercell))
        temps = check_temperatures(self.temperatures_K)
        if len(temps) not in (1, 2):
            raise ValueError(
                f"temperatures_K must be (start, end) or one temperature, got {list(temps)}"
            )
        object.__setattr__(self, "temperatures_K", temps)
        for name in (
            "timestep_fs",
            "thermostat_time_fs",
            "barostat_time_fs",
            "window_K",
            "relax_fmax_eV_per_A",
            "symprec",
        ):
            check_positive(getattr(self, name), name)
        for name in (
            "log_every",
            "traj_every",
            "checkpoint_every",
            "born_update_every",
            "relax_steps",
        ):
            check_positive(getattr(self, name), name, integer=True)
        check_positive(
            self.equilibration_steps, "equilibration_steps", integer=True, allow_zero=True
        )
        check_positive(self.tilt_threshold_deg, "tilt_threshold_deg", allow_zero=True)
        if self.heating_rate_K_per_ps is not None:
            check_positive(self.heating_rate_K_per_ps, "heating_rate_K_per_ps")
            if len(temps) == 1:
                raise ValueError("a heating rate needs two temperatures (start, end)")
        else:
            check_positive(self.ramp_steps, "ramp_steps", integer=True)
        if self.field_V_per_A is not None:
            arr = np.asarray(self.field_V_per_A, dtype=float)
            if arr.shape != (3,):
                raise ValueError(
                    "field_V_per_A must be a 3-vector in V/Å (a magnitude needs a direction: "
                    "ase_born.workflows.common.field_vector(magnitude, 'z'))"
                )
            validate_field(arr, allow_large_field=self.allow_large_field, name="field_V_per_A")
            object.__setattr__(self, "field_V_per_A", tuple(float(x) for x in arr))
        # the calculator's rules, checked here before anything is written
        check_mode_settings(self.mode, self.born_update_every)

    @property
    def n_ramp_steps(self) -> int:
        """Steps of the ramp (from the rate when given)."""
        if self.heating_rate_K_per_ps is not None:
            dt_ps = self.timestep_fs / 1000.0
            return max(
                1,
                round(
                    abs(self.temperatures_K[-1] - self.temperatures_K[0])
                    / self.heating_rate_K_per_ps
                    / dt_ps
                ),
            )
        return int(self.ramp_steps)

    @property
    def total_steps(self) -> int:
        return int(self.equilibration_steps) + self.n_ramp_steps

    def target_temperature(self, step: int) -> float:
        """Thermostat temperature (K) used for the step ``step → step + 1``."""
        t0, t1 = self.temperatures_K[0], self.temperatures_K[-1]
        k = step - self.equilibration_steps
        if k < 0:
            return t0
        return t0 + (t1 - t0) * min(k + 1, self.n_ramp_steps) / self.n_ramp_steps

    @property
    def rate_K_per_ps(self) -> float:
        return abs(self.temperatures_K[-1] - self.temperatures_K[0]) / (
            self.n_ramp_steps * self.timestep_fs / 1000.0
        )


#: the seed paper's heating run (``--paper``), on a GPU; run it again with supercell (4, 4, 4)
PAPER_PRESET = {
    "supercell": (4, 2, 4),
    "temperatures_K": (300.0, 1800.0),
    "heating_rate_K_per_ps": 1.0,
    "equilibration_steps": 10000,
    "timestep_fs": 2.0,
    "log_every": 250,
    "traj_every": 2500,
    "checkpoint_every": 10000,
    "window_K": 25.0,
}


def window_edges(cfg: HeatingConfig) -> np.ndarray:
    """Edges (K) of the analysis windows over the ramp (one window for an isothermal run).

    The range is split into ``ceil(range / window_K)`` equal windows, none wider than
    ``window_K``.
    """
    t0, t1 = cfg.temperatures_K[0], cfg.temperatures_K[-1]
    lo, hi = min(t0, t1), max(t0, t1)
    if hi > lo:
        return np.linspace(lo, hi, max(1, math.ceil((hi - lo) / cfg.window_K - 1e-9)) + 1)
    return np.array([lo - 0.5, lo + 0.5])


def window_index(edges: np.ndarray, temperature: float) -> int:
    """Index of the window holding ``temperature`` (the last window includes its upper edge)."""
    k = int(np.searchsorted(edges, temperature, side="right")) - 1
    return min(max(k, 0), len(edges) - 2)


def _range_key(lo: float, hi: float) -> tuple[float, float]:
    """A window's temperature range as a dictionary key (rounded to 1 mK)."""
    return (round(float(lo), 3), round(float(hi), 3))


class WindowAverager:
    """Running time average of the structure within a temperature window (exact restart state).

    At every logged step after equilibration the fractional coordinates relative to the
    reference sites (minimum image, rigid shift removed) and the cell are accumulated; when the
    temperature leaves the window the average structure is appended to
    ``window_structures.extxyz`` (info: ``window``, ``range_K``, ``n_samples``).  Many more
    samples than trajectory frames enter, so spglib sees a well-averaged structure.
    """

    def __init__(
        self, reference: Any, edges: np.ndarray, state: dict[str, Any] | None = None
    ) -> None:
        self.reference = reference
        self.s0 = reference.get_scaled_positions(wrap=False)
        self.edges = edges
        self.index = -1
        self.n = 0
        self.sum_s = np.zeros_like(self.s0)
        self.sum_cell = np.zeros((3, 3))
        if state:
            self.index = int(state["index"])
            self.n = int(state["n"])
            self.sum_s = np.asarray(state["sum_s"], dtype=float)
            self.sum_cell = np.asarray(state["sum_cell"], dtype=float)

    def state(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "n": self.n,
            "sum_s": self.sum_s.tolist(),
            "sum_cell": self.sum_cell.tolist(),
        }

    def add(self, atoms: Any, temperature: float, fh: Any) -> None:
        k = window_index(self.edges, temperature)
        if k != self.index:
            self.flush(fh)
            self.index = k
        ds = atoms.get_scaled_positions(wrap=False) - self.s0
        ds -= np.rint(ds) * atoms.pbc
        ds -= ds.mean(0)
        self.sum_s += ds
        self.sum_cell += atoms.cell.array
        self.n += 1

    def flush(self, fh: Any) -> None:
        if self.n == 0 or self.index < 0:
            self.n = 0
            return
        import ase.io

        avg = self.reference.copy()
        avg.calc = None
        avg.set_cell(self.sum_cell / self.n, scale_atoms=False)
        avg.set_scaled_positions(self.s0 + self.sum_s / self.n)
        avg.info.update(
            window=self.index,
            n_samples=self.n,
            range_K=[float(self.edges[self.index]), float(self.edges[self.index + 1])],
        )
        ase.io.write(fh, avg, format="extxyz")
        self.n = 0
        self.sum_s[:] = 0.0
        self.sum_cell[:] = 0.0


def _cell_row(atoms: Any, cell_pc: np.ndarray, n_fu: int) -> list[float]:
    par = atoms.cell.cellpar()
    ap = pseudocubic_lattice(atoms.cell.array, cell_pc)
    return [*map(float, par), *map(float, ap), float(atoms.get_volume() / n_fu)]


def run_heating(
    config: HeatingConfig,
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
    """Run (or resume) a heating run; returns :func:`analyze_heating`'s result.

    Parameters are those of :func:`ase_born.workflows.dielectric.run_dielectric`.

    Raises
    ------
    ValueError
        The supercell cannot represent the tilt patterns of the reference (e.g. a 5-atom
        cubic cell not doubled), or breaks the Born model's mapping.
    """
    from tqdm.auto import tqdm

    t_start = time.perf_counter()
    cfg = config
    if overwrite or not (Path(out) / "settings.json").exists():
        # a supercell that cannot hold the tilt patterns fails before anything is written (or
        # removed, with overwrite), so the same out directory can be used with a better one
        # (relaxing never changes this)
        check_structure_file(cfg.structure)
        unit0 = load_structure(cfg.structure)
        _analyzer(make_supercell(unit0, cfg.supercell), cfg.supercell, len(unit0))
    rd = open_run_directory(
        "heat", cfg, out, force_field, born_model,
        model_info=model_info, device=device, overwrite=overwrite, log=log,
    )
    with rd:  # the directory stays locked to this run until it returns or raises
        unit, reference = reference_from_config(rd, cfg, force_field, born_model, log=log)
        analyzer = _analyzer(reference, cfg.supercell, len(unit))
        n_fu = len(analyzer.b_idx)
        fix_com = resolve_fix_com(cfg.fix_com, reference, force_field)

        ckpt = rd.checkpoint or {}
        total = cfg.total_steps
        if not ckpt.get("done"):
            atoms, calc = md_atoms(cfg, force_field, born_model, reference, device)
            integ_kw = integrator_settings(cfg, ensemble="npt", hydrostatic=cfg.hydrostatic)
            cur = ckpt.get("current")
            if cur is not None:
                dyn, start = resume_md(
                    atoms, calc, cur, temperature_K=cfg.target_temperature(cur["step"]), **integ_kw
                )
            else:
                if cfg.field_V_per_A is not None:
                    calc.set(field=cfg.field_V_per_A)
                md.thermalize(atoms, cfg.temperatures_K[0], np.random.default_rng([cfg.seed, 0, 1]))
                dyn = md.make_integrator(
                    atoms,
                    temperature_K=cfg.temperatures_K[0],
                    rng=np.random.default_rng([cfg.seed, 0]),
                    **integ_kw,
                )
                start = 0
            log_csv = rd.csv("heat_log.csv", LOG_COLUMNS)
            traj, _ = rd.open_append("trajectory.extxyz")
            wfh, _ = rd.open_append("window_structures.extxyz")
            averager = WindowAverager(
                reference, window_edges(cfg), cur.get("averager") if cur else None
            )
            bar = tqdm(
                total=total,
                initial=start,
                desc="heating",
                unit="step",
                disable=not progress,
                smoothing=0.05,
            )
            try:
                for s in range(start, total):
                    t_target = cfg.target_temperature(s)
                    if dyn.temperature_K != t_target:
                        dyn.set_temperature(t_target)
                    md.step(dyn, fix_com)
                    s1 = s + 1
                    if s1 % cfg.log_every == 0 or s1 == total:
                        log_csv.write(
                            _log_row(atoms, calc, analyzer, cfg, s1, t_target, n_fu, fix_com)
                        )
                        if s1 > cfg.equilibration_steps:  # isothermal runs too
                            averager.add(atoms, t_target, wfh)
                    if s1 % cfg.traj_every == 0:
                        write_frame(
                            traj,
                            atoms,
                            {
                                "step": s1,
                                "time_ps": s1 * cfg.timestep_fs / 1000.0,
                                "temperature_target_K": t_target,
                            },
                        )
                    if s1 % cfg.checkpoint_every == 0 and s1 < total:
                        rd.save_checkpoint(
                            {
                                "done": False,
                                "current": {
                                    "step": s1,
                                    **md_state(atoms, dyn, calc),
                                    "averager": averager.state(),
                                },
                            }
                        )
                    if s1 % 50 == 0:
                        bar.set_postfix_str(f"T={t_target:.0f} K")
                    bar.update(1)
                averager.flush(wfh)
                rd.save_checkpoint({"done": True, "current": None})
            finally:
                bar.close()
                rd.close()
        result = analyze_heating(rd.path, cfg, reference=reference, analyzer=analyzer)
        result["fix_com"] = fix_com
        result["wall_time_s_this_process"] = time.perf_counter() - t_start
        rd.write_json("heat_phases.json", result, strict=True)
        return result


def _analyzer(reference: Any, supercell: Any, n_unit: int) -> TiltAnalyzer:
    try:
        ana = TiltAnalyzer(reference)
    except ValueError as exc:
        raise ValueError(
            f"supercell {tuple(supercell)} of the {n_unit}-atom structure cannot be analysed "
            f"as a perovskite: {exc}"
        ) from exc
    if not ana.commensurate["R"].all():
        raise ValueError(
            f"supercell {tuple(supercell)} of the {n_unit}-atom structure breaks the reference's tilt "
            "patterns: the out-of-phase (R-point) tilts need an even number of pseudo-cubic cells along every "
            f"axis (cell vectors in pseudo-cubic units: {ana.cell_in_pseudocubic.tolist()}); use even repeats"
        )
    return ana


def _log_row(atoms, calc, analyzer, cfg, s1, t_target, n_fu, fix_com) -> list[float]:
    stress = np.asarray(calc.get_property("stress", atoms), dtype=float)
    op = analyzer.order_parameters(atoms)
    p = (
        np.asarray(calc.get_property("ionic_polarization", atoms), dtype=float)
        * C_PER_M2_PER_E_PER_A2
    )
    return [
        s1,
        s1 * cfg.timestep_fs / 1000.0,
        t_target,
        md.temperature_K(atoms, fix_com),
        md.pressure_GPa(atoms, stress),
        *(stress * md.EV_PER_A3_IN_GPA),
        *_cell_row(atoms, analyzer.cell_in_pseudocubic, n_fu),
        *map(float, op["M"]),
        *map(float, op["R"]),
        *map(float, p),
        float(calc.get_property("energy", atoms)),
    ]


def _window_tilt(
    data: dict[str, np.ndarray], kind: str, sel: np.ndarray
) -> tuple[list[float], float]:
    """Window-mean tilt per axis and the RMS length of the tilt vector over the window's rows.

    The mean keeps the sign, so it classifies an ordered tilt pattern; the RMS,
    ``sqrt(<Σ_axis θ_axis²>)`` over the logged rows, is the tilt amplitude whatever its axis or
    sign (NaN components, axes the cell cannot hold, count as zero; NaN when none is finite).
    """
    comps = np.stack([data[f"{kind}{x}_deg"][sel] for x in "xyz"], axis=1)
    finite = np.isfinite(comps)
    mean = [
        float(np.mean(comps[finite[:, j], j])) if finite[:, j].any() else float("nan")
        for j in range(3)
    ]
    if not finite.any():
        return mean, float("nan")
    length2 = np.sum(np.where(finite, comps, 0.0) ** 2, axis=1)
    return mean, float(np.sqrt(np.mean(length2)))


def _tilt_order(mean: list[float], rms: float) -> float:
    """``|<θ>| / RMS``: length of the window-mean tilt vector over its RMS length.

    Near 1 for an ordered tilt of any pattern (a−a−a− too); towards 0 when the axis or the
    sign of the tilt changes within the window (axis hopping, domains, or the thermal tilt
    fluctuations of a dynamically disordered phase).  NaN without a finite, nonzero RMS.
    """
    if not np.isfinite(rms) or rms == 0.0:
        return float("nan")
    return float(np.sqrt(np.nansum(np.square(mean)))) / rms


def analyze_heating(
    out: str,
    config: HeatingConfig,
    *,
    reference: Any = None,
    analyzer: TiltAnalyzer | None = None,
) -> dict[str, Any]:
    """Temperature windows, phases and transitions of a (finished or partial) heating run.

    Reads ``heat_log.csv`` and ``window_structures.extxyz`` (time-averaged structure of each
    completed window) in ``out``; writes ``heat_windows.csv``, ``heat_phases.json`` and
    ``heat.png``.

    Returns
    -------
    dict
        ``windows`` (per window: ``temperature_K``, ``n_log``, ``n_averaged``, ``a_p_A``, ``b_p_A``,
        ``c_p_A``, ``v_per_fu_A3``, ``M_deg``, ``R_deg`` (window means per axis),
        ``M_rms_deg``, ``R_rms_deg`` (RMS tilt-vector length over the window, any axis or sign),
        ``M_order``, ``R_order`` (``|<θ>|``/RMS: 1 ordered, towards 0 when the tilt's axis or
        sign changes within the window), ``disordered_tilts`` (``"M"``/``"R"`` when that tilt is
        present, RMS above the threshold, but its order is under 0.5), ``glazer``, ``phase``,
        ``spglib_symbol``/``spglib_number`` of the time-averaged structure, or ``None``),
        ``ramp`` (``"heating"``, ``"cooling"`` or ``"isothermal"``), ``transitions`` (phase
        changes between windows, in the order the run met them: from high to low temperature
        in a cooling run; ``windows`` are always by increasing temperature),
        ``M_vanishes_K``/``R_vanishes_K``
        (where the in-/out-of-phase tilts disappear), ``experimental_transitions_K``,
        ``axis_names``, ``n_atoms``.
    """
    import ase.io

    from ase_born.workflows.plots import plot_heating

    cfg = config
    from pathlib import Path

    path = Path(out)
    if reference is None:
        reference = ase.io.read(path / "reference.extxyz", format="extxyz")
    ana = analyzer if analyzer is not None else TiltAnalyzer(reference)
    logfile = path / "heat_log.csv"
    if not logfile.exists():
        raise FileNotFoundError(f"{logfile} not found: no heating run in {path}")
    data = read_csv(logfile)
    # averaged structures by their temperature range: a config with other windows than the
    # run's finds none for its windows rather than another window's
    averaged: dict[tuple[float, float], Any] = {}
    wfile = path / "window_structures.extxyz"
    if wfile.exists() and wfile.stat().st_size:
        frames = ase.io.iread(wfile, index=":", format="extxyz")
        while True:
            try:
                f = next(frames)
            except StopIteration:
                break
            except (RuntimeError, ValueError, OSError):  # ASE's errors on a torn last frame
                break  # (still being written by a running run, or cut by a kill)
            averaged[_range_key(*np.ravel(f.info["range_K"]))] = f
    t_log = data["temperature_target_K"]
    edges = window_edges(cfg)
    ramp = data["step"] > cfg.equilibration_steps  # production rows (isothermal runs too)
    windows = []
    for k in range(len(edges) - 1):
        a, b = edges[k], edges[k + 1]
        last = k == len(edges) - 2
        sel = ramp & (t_log >= a) & ((t_log <= b) if last else (t_log < b))
        if not np.any(sel):
            continue
        m, m_rms = _window_tilt(data, "M", sel)
        r, r_rms = _window_tilt(data, "R", sel)
        m_order, r_order = _tilt_order(m, m_rms), _tilt_order(r, r_rms)
        cls = classify_tilts(m, r, threshold_deg=cfg.tilt_threshold_deg)
        w = {
            "temperature_K": float(np.mean(t_log[sel])),
            "range_K": [float(a), float(b)],
            "n_log": int(sel.sum()),
            "a_p_A": float(np.mean(data["a_p_A"][sel])),
            "b_p_A": float(np.mean(data["b_p_A"][sel])),
            "c_p_A": float(np.mean(data["c_p_A"][sel])),
            "v_per_fu_A3": float(np.mean(data["v_per_fu_A3"][sel])),
            "pressure_GPa": float(np.mean(data["pressure_GPa"][sel])),
            "M_deg": m,
            "R_deg": r,
            "M_rms_deg": m_rms,
            "R_rms_deg": r_rms,
            "M_order": m_order,
            "R_order": r_order,
            # present (RMS above the threshold) but under half ordered: the label understates it
            "disordered_tilts": [
                kind
                for kind, rms, order in (("M", m_rms, m_order), ("R", r_rms, r_order))
                if rms > cfg.tilt_threshold_deg and order < 0.5
            ],
            "glazer": cls["glazer"],
            "phase": cls["phase"],
            "space_group_number": cls["space_group_number"],
            "spglib_symbol": None,
            "spglib_number": None,
            "n_averaged": 0,
        }
        avg = averaged.get(_range_key(a, b))
        if avg is not None:
            avg.calc = None
            sym, num = space_group(avg, symprec=cfg.symprec)
            op = ana.order_parameters(avg)
            w.update(
                spglib_symbol=sym,
                spglib_number=num,
                n_averaged=int(avg.info.get("n_samples", 0)),
                averaged_structure_M_deg=[float(x) for x in op["M"]],
                averaged_structure_R_deg=[float(x) for x in op["R"]],
            )
        windows.append(w)
    temps = [w["temperature_K"] for w in windows]
    m_amp = [
        np.nanmax(np.abs(w["M_deg"])) if np.any(np.isfinite(w["M_deg"])) else 0.0 for w in windows
    ]
    r_amp = [
        np.nanmax(np.abs(w["R_deg"])) if np.any(np.isfinite(w["R_deg"])) else 0.0 for w in windows
    ]
    t_first, t_last = cfg.temperatures_K[0], cfg.temperatures_K[-1]
    ramp_kind = "heating" if t_last > t_first else "cooling" if t_last < t_first else "isothermal"
    # phase changes in the order the run met them (a cooling run goes down the windows)
    visited = windows[::-1] if ramp_kind == "cooling" else windows
    result = {
        "workflow": "heat",
        "ramp": ramp_kind,
        "n_atoms": len(reference),
        "supercell": list(cfg.supercell),
        "axis_names": [n.split(" ")[0] + "_p" for n in AXIS_NAMES],
        "supercell_axes": list(AXIS_NAMES),
        "pseudocubic_axes": ana.axes.tolist(),
        "cell_in_pseudocubic": ana.cell_in_pseudocubic.tolist(),
        "heating_rate_K_per_ps": cfg.rate_K_per_ps if len(cfg.temperatures_K) == 2 else 0.0,
        "tilt_threshold_deg": cfg.tilt_threshold_deg,
        "symprec": cfg.symprec,
        "windows": windows,
        "transitions": estimate_transitions(
            [w["temperature_K"] for w in visited], [w["phase"] for w in visited]
        ),
        "M_vanishes_K": order_parameter_vanishing(temps, m_amp, cfg.tilt_threshold_deg),
        "R_vanishes_K": order_parameter_vanishing(temps, r_amp, cfg.tilt_threshold_deg),
        "experimental_transitions_K": EXPERIMENTAL_TRANSITIONS_K,
    }
    lines = [
        (
            "temperature_K,n_log,n_averaged,a_p_A,b_p_A,c_p_A,v_per_fu_A3,Mx_deg,My_deg,Mz_deg,Rx_deg,Ry_deg,"
            "Rz_deg,M_rms_deg,R_rms_deg,M_order,R_order,glazer,phase,spglib_symbol"
        )
    ]
    for w in windows:
        lines.append(
            ",".join(
                str(x)
                for x in (
                    w["temperature_K"],
                    w["n_log"],
                    w["n_averaged"],
                    w["a_p_A"],
                    w["b_p_A"],
                    w["c_p_A"],
                    w["v_per_fu_A3"],
                    *w["M_deg"],
                    *w["R_deg"],
                    w["M_rms_deg"],
                    w["R_rms_deg"],
                    w["M_order"],
                    w["R_order"],
                    w["glazer"],
                    w["phase"],
                    w["spglib_symbol"],
                )
            )
        )
    (path / "heat_windows.csv").write_text("\n".join(lines) + "\n")
    from ase_born.workflows.rundir import write_json

    write_json(path / "heat_phases.json", result, strict=True)
    plot_heating(data, result, path / "heat.png")
    return result


def stored_heating_config(out: str | Path) -> HeatingConfig:
    """The :class:`HeatingConfig` a heating run in ``out`` was started with (its
    ``settings.json``), e.g. to analyse it again (:func:`analyze_heating`) with other windows.

    Raises
    ------
    FileNotFoundError
        ``out`` holds no ``settings.json``.
    ValueError
        It is the settings file of another workflow.
    """
    import json

    from ase_born.workflows.rundir import SETTINGS_FILE

    path = Path(out) / SETTINGS_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: no heating run in {out}")
    stored = json.loads(path.read_text())
    if stored.get("workflow") != "heat":
        raise ValueError(f"{out} holds a {stored.get('workflow')!r} run, not a heating run")
    return HeatingConfig(**stored["settings"]["config"])


def format_heating_report(result: dict[str, Any]) -> str:
    """Text summary: phases per window and transition estimates."""
    kind = {"cooling": "Cooling", "isothermal": "Isothermal"}.get(result.get("ramp"), "Heating")
    out = [
        (
            f"{kind} run, {result['n_atoms']} atoms, supercell {tuple(result['supercell'])}, "
            f"{result['heating_rate_K_per_ps']:.3g} K/ps"
        )
    ]
    out.append(
        "  T (K)   a_p     b_p     c_p  (Å)  |M|max |R|max  M rms R rms  M ord R ord  Glazer   phase"
        "   spglib(avg)"
    )
    nan = float("nan")
    for w in result["windows"]:
        mm = np.nanmax(np.abs(w["M_deg"])) if np.any(np.isfinite(w["M_deg"])) else nan
        rr = np.nanmax(np.abs(w["R_deg"])) if np.any(np.isfinite(w["R_deg"])) else nan
        # heat_phases.json files of older versions have no RMS/order columns
        rms = [w.get(k, nan) for k in ("M_rms_deg", "R_rms_deg", "M_order", "R_order")]
        out.append(
            f"  {w['temperature_K']:6.0f}  {w['a_p_A']:.4f}  {w['b_p_A']:.4f}  {w['c_p_A']:.4f}  "
            f"{mm:6.2f} {rr:6.2f}  {rms[0]:5.2f} {rms[1]:5.2f}  {rms[2]:5.2f} {rms[3]:5.2f}"
            f"  {w['glazer']:8s} {w['phase']:7s} {w['spglib_symbol'] or '-'}"
        )
    out.append(
        "  |M|max, |R|max: largest window-mean tilt; rms: RMS tilt-vector length (degrees); ord ="
        "\n  |mean| / rms (1: ordered; towards 0: the axis or sign changes within the window, "
        "and the\n  label from the window means understates the tilt)"
    )
    if result["transitions"]:
        for tr in result["transitions"]:
            out.append(f"  transition {tr['from']} -> {tr['to']} at ~{tr['temperature_K']:.0f} K")
    else:
        out.append("  no phase change in the simulated range")
    out.append(
        f"  in-phase (M) tilts vanish at: {result['M_vanishes_K']} K; out-of-phase (R): {result['R_vanishes_K']} K"
    )
    out.append("  experiment: Pnma -> I4/mcm 1512 K, I4/mcm -> Pm-3m 1635 K")
    return "\n".join(out)


__all__ = [
    "LOG_COLUMNS",
    "PAPER_PRESET",
    "HeatingConfig",
    "analyze_heating",
    "format_heating_report",
    "run_heating",
    "stored_heating_config",
]
