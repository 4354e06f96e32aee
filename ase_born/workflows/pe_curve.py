"""Static polarization vs field by relaxation in the field (seed Fig. 3).

Protocol (:func:`run_pe_curve`)
-------------------------------
1. Load the unit cell (default 20-atom Pnma CaTiO3), relax it at zero field (positions and
   cell), build the supercell (default the unit cell itself: a static Γ-point response needs
   nothing bigger); it is the field calculator's reference (``P = 0`` at ``E = 0``).
2. For each field direction (x, y, z by default) and each field magnitude in increasing order
   (default 0 … 1e8 V/m in 1e7 V/m steps), relax the positions (and, with ``relax_cell``, the
   cell under the field stress) in the field, starting from the previous field's structure,
   and record the ionic polarization (direct mode, seed eqs. 1–2).
3. Per direction, on ``ΔP = P(E) − P(0)`` (the zero-field point of that direction, if the
   fields include 0; ``P(0)`` is not exactly zero because the reference is relaxed less
   tightly than the points): the small-field slope ``χ = ΔP(E₁)/E₁`` at the smallest nonzero
   field and a polynomial fit ``ΔP = χ₁E + χ₂E² + χ₃E³`` through the origin; the static
   ionic dielectric tensor ``ε_static[b, c] = χ_bc/ε0`` from the fit's linear term; the onset
   of nonlinearity, the smallest field where ``|ΔP∥ − χE|`` exceeds
   ``nonlinearity_tol · |χE|``.  Optionally the 0 K harmonic tensor for comparison
   (``harmonic``; force-constant finite-difference step ``harmonic_delta_A``, Å: a strongly
   anharmonic force field needs a small one: an on-site ``β|u|⁴`` adds ``4βδ²`` to the
   force constants a central difference of step ``δ`` sees).

Outputs: ``pe_curve.csv`` (one row per relaxed point: direction, field in V/m and V/Å,
polarization in C/m² and e/Å², energy, final max force, optimizer steps, converged),
``pe_curve.json``, ``pe_curve.png``, ``relaxed_<dir>_<i>.extxyz`` is not written; the
structures go to ``structures.extxyz`` (one frame per point).  Resumable: a kill loses at most
the relaxation in progress.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from ase_born import physics
from ase_born.conventions import C_PER_M2_PER_E_PER_A2, EPSILON0, field_from_V_per_m, validate_field
from ase_born.workflows import md
from ase_born.workflows.common import (
    ConfigMixin,
    check_positive,
    make_field_calculator,
    open_run_directory,
    parse_direction,
    reference_from_config,
)
from ase_born.workflows.models import resolve
from ase_born.workflows.rundir import read_csv
from ase_born.workflows.structures import parse_supercell

COLUMNS = (
    "direction",
    "index",
    "field_V_per_m",
    "field_V_per_A",
    "Px_C_per_m2",
    "Py_C_per_m2",
    "Pz_C_per_m2",
    "Px_e_per_A2",
    "Py_e_per_A2",
    "Pz_e_per_A2",
    "energy_eV",
    "fmax_eV_per_A",
    "steps",
    "converged",
)


def default_fields_V_per_m(max_V_per_m: float = 1e8, n: int = 11) -> tuple[float, ...]:
    """``n`` evenly spaced fields from 0 to ``max_V_per_m`` (V/m)."""
    return tuple(float(x) for x in np.linspace(0.0, float(max_V_per_m), int(n)))


def _direction_label(direction: Any) -> str:
    """A direction as a comma-free label that :func:`parse_direction` reads back."""
    if isinstance(direction, str):
        return " ".join(direction.replace(",", " ").split())
    return " ".join(f"{float(x)!r}" for x in direction)


@dataclass(frozen=True)
class PECurveConfig(ConfigMixin):
    """Settings of :func:`run_pe_curve` (module docstring); fields in V/m as in the seed's Fig. 3.

    ``fmax_eV_per_A`` must be far below the field force ``|Z* E|`` at the smallest nonzero
    field (~0.005 eV/Å for 1e7 V/m): the residual force error is a relative error of the
    small-field slope of about ``fmax/|Z* E|`` (1e-5 eV/Å: ~0.2 %; use a float64 force field).
    """

    structure: str | None = None
    supercell: tuple[int, int, int] = (1, 1, 1)
    relax: bool = True
    relax_fmax_eV_per_A: float = 1e-3
    relax_steps: int = 300
    fields_V_per_m: tuple[float, ...] = default_fields_V_per_m()
    directions: tuple[str, ...] = ("x", "y", "z")
    relax_cell: bool = False
    pressure_GPa: float = 0.0
    fmax_eV_per_A: float = 1e-5
    max_steps: int = 1000
    nonlinearity_tol: float = 0.02
    harmonic: bool = True
    harmonic_delta_A: float = 0.01
    mode: str = "direct"
    allow_large_field: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "supercell", parse_supercell(self.supercell))
        f = tuple(float(x) for x in self.fields_V_per_m)
        if not f or any(not np.isfinite(x) or x < 0 for x in f):
            raise ValueError(
                f"fields_V_per_m must be non-negative field magnitudes (V/m), got {list(f)}"
            )
        f = tuple(sorted(set(f)))
        if f[0] != 0.0:
            f = (0.0, *f)
        if len(f) < 2:
            raise ValueError("fields_V_per_m needs at least one nonzero field")
        validate_field(
            [field_from_V_per_m(f[-1]), 0, 0],
            allow_large_field=self.allow_large_field,
            name="largest field",
        )
        object.__setattr__(self, "fields_V_per_m", f)
        if not self.directions:
            raise ValueError("directions is empty")
        for d in self.directions:
            parse_direction(d)
        # labels without commas: they are CSV fields ("1,1,0" -> "1 1 0", same direction)
        object.__setattr__(self, "directions", tuple(_direction_label(d) for d in self.directions))
        for name in ("fmax_eV_per_A", "relax_fmax_eV_per_A", "nonlinearity_tol", "harmonic_delta_A"):
            check_positive(getattr(self, name), name)
        for name in ("max_steps", "relax_steps"):
            check_positive(getattr(self, name), name, integer=True)


PAPER_PRESET = {"supercell": (1, 1, 1), "fields_V_per_m": default_fields_V_per_m(1e8, 21)}


def _analyze(cfg: PECurveConfig, rows: dict[str, np.ndarray]) -> dict[str, Any]:
    out_dirs = []
    eps_static = np.full((3, 3), np.nan)
    columns: dict[int, list[np.ndarray]] = {}
    for d in cfg.directions:
        unit = parse_direction(d)
        sel = rows["direction"] == d
        e_vm = rows["field_V_per_m"][sel]
        order = np.argsort(e_vm)
        e_vm = e_vm[order]
        p_raw = np.stack([rows[f"P{x}_C_per_m2"][sel][order] for x in "xyz"], axis=1)
        # the response is P(E) - P(0): the reference is relaxed to relax_fmax_eV_per_A, the
        # points to the tighter fmax_eV_per_A, so P(0) is small but not zero (with
        # |Z*E| ~ 3e-3 eV/Å at 1e7 V/m it biased the small-field slope by percents)
        zero = e_vm == 0
        p0 = p_raw[np.nonzero(zero)[0][0]] if zero.any() else np.zeros(3)
        p = p_raw - p0
        p_par = p @ unit
        nz = e_vm > 0
        entry: dict[str, Any] = {
            "direction": d,
            "unit_vector": unit.tolist(),
            "field_V_per_m": e_vm.tolist(),
            "P_C_per_m2": p_raw.tolist(),
            "P_at_zero_field_C_per_m2": p0.tolist() if zero.any() else None,
            "P_parallel_C_per_m2": p_par.tolist(),
        }
        if np.any(nz):
            i1 = int(np.nonzero(nz)[0][0])
            chi_small = p[i1] / e_vm[i1]  # C/m² per V/m, vector
            slope = float(chi_small @ unit)
            # polynomial through the origin up to E³ (as many terms as points allow)
            deg = int(min(3, nz.sum()))
            scale = float(e_vm.max())
            a = np.stack([(e_vm[nz] / scale) ** k for k in range(1, deg + 1)], axis=1)
            coef, *_ = np.linalg.lstsq(a, p[nz], rcond=None)  # (deg, 3), in C/m² per (E/E_max)^k
            coef = coef / (scale ** np.arange(1, deg + 1))[:, None]  # C/m² per (V/m)^k
            chi_fit = coef[0]
            dev = np.abs(p_par[nz] - slope * e_vm[nz]) / np.abs(slope * e_vm[nz])
            bad = np.nonzero(dev > cfg.nonlinearity_tol)[0]
            onset = float(e_vm[nz][bad[0]]) if len(bad) else None
            eps0_si = EPSILON0 * C_PER_M2_PER_E_PER_A2 * 1e-10  # e/(V Å) -> C/(V m)
            eps_col_small = chi_small / eps0_si
            eps_col_fit = chi_fit / eps0_si
            entry.update(
                slope_C_per_m2_per_V_per_m=slope,
                epsilon_ion_column_small_field=eps_col_small.tolist(),
                epsilon_ion_column_fit=eps_col_fit.tolist(),
                polynomial_C_per_m2=coef.tolist(),
                relative_deviation_from_linear=dev.tolist(),
                nonlinearity_onset_V_per_m=onset,
            )
            n = parse_direction(d)
            axis = int(np.argmax(np.abs(n)))
            if np.count_nonzero(n) == 1:  # ±x/y/z (or a/b/c): the fit is ε·n = ±(column)
                columns.setdefault(axis, []).append(n[axis] * eps_col_fit)
        out_dirs.append(entry)
    for axis, cols in columns.items():  # x and -x both given: the mean of the two fits
        eps_static[:, axis] = np.mean(cols, axis=0)
    return {"directions": out_dirs, "epsilon_ion_static": eps_static.tolist()}


def run_pe_curve(
    config: PECurveConfig,
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
    """Run (or resume) the static P(E) workflow; returns the content of ``pe_curve.json``.

    Parameters are those of :func:`ase_born.workflows.dielectric.run_dielectric`.
    """
    from tqdm.auto import tqdm

    from ase_born.workflows.harmonic import harmonic_dielectric, relax

    t_start = time.perf_counter()
    cfg = config
    rd = open_run_directory(
        "pe-curve", cfg, out, force_field, born_model,
        model_info=model_info, device=device, overwrite=overwrite, log=log,
    )
    with rd:  # the directory stays locked to this run until it returns or raises
        # the reference cell is relaxed too (cfg.relax_cell is about the relaxations in the field)
        unit, reference = reference_from_config(
            rd, cfg, force_field, born_model, relax_cell=True, log=log
        )
        ckpt = rd.checkpoint or {}
        done: list[str] = list(ckpt.get("done", []))
        last = ckpt.get("last")  # structure of the last relaxed point, per direction
        points = [(d, i) for d in cfg.directions for i in range(len(cfg.fields_V_per_m))]
        writer = rd.csv("pe_curve.csv", COLUMNS)
        sfh, _ = rd.open_append("structures.extxyz")
        bar = tqdm(
            total=len(points),
            initial=len(done),
            desc="P(E) relaxations",
            unit="point",
            disable=not progress,
        )
        calc = make_field_calculator(
            force_field,
            born_model,
            reference,
            mode=cfg.mode,
            device=device,
            allow_large_field=cfg.allow_large_field,
        )
        if ckpt.get("calculator"):
            calc.set_state(ckpt["calculator"])  # the saved reference, never re-picked
        try:
            for d, i in points:
                key = f"{d}:{i}"
                if key in done:
                    continue
                e_vm = cfg.fields_V_per_m[i]
                atoms = reference.copy()
                if i > 0 and last is not None and last.get("direction") == d:
                    md.restore_atoms(atoms, last["atoms"])
                calc.set(field=tuple(field_from_V_per_m(e_vm) * parse_direction(d)))
                atoms.calc = calc
                res = relax(
                    atoms, calc, fmax=cfg.fmax_eV_per_A, steps=cfg.max_steps,
                    relax_cell=cfg.relax_cell, pressure_GPa=cfg.pressure_GPa,
                )
                if i > 0 and res["steps"] == 0:
                    msg = (f"pe-curve {d} at {e_vm:g} V/m: the relaxation took no step (the field "
                           f"forces are below fmax {cfg.fmax_eV_per_A:g} eV/Å), so this point adds "
                           "nothing to the slope: fields given in V/Å instead of V/m?")
                    warnings.warn(msg, stacklevel=2)
                    log(msg)
                p = np.asarray(calc.get_property("ionic_polarization", atoms), dtype=float)
                writer.write(
                    [
                        d,
                        i,
                        e_vm,
                        float(field_from_V_per_m(e_vm)),
                        *(p * C_PER_M2_PER_E_PER_A2),
                        *p,
                        float(calc.get_property("energy", atoms)),
                        res["fmax"],
                        res["steps"],
                        int(res["converged"]),
                    ]
                )
                from ase_born.workflows.common import write_frame

                atoms.set_momenta(np.zeros_like(atoms.positions))
                write_frame(sfh, atoms, {"direction": d, "field_V_per_m": e_vm})
                done.append(key)
                last = {"direction": d, "atoms": md.atoms_state(atoms)}
                rd.save_checkpoint({"done": done, "last": last, "calculator": calc.get_state()})
                bar.update(1)
        finally:
            bar.close()
            rd.close()
        result = {
            "workflow": "pe-curve",
            "n_atoms": len(reference),
            "supercell": list(cfg.supercell),
            **_analyze(cfg, read_csv(rd.file("pe_curve.csv"))),
        }
        if cfg.harmonic:
            zfile = rd.file("harmonic.json")
            if zfile.exists():
                import json

                result["epsilon_ion_harmonic"] = json.loads(zfile.read_text())["epsilon_ion"]
            else:
                z = physics.asr_project(
                    np.asarray(resolve(born_model, unit).get_born_charges(unit), dtype=float)
                )
                eps = harmonic_dielectric(unit, z, calculator=resolve(force_field, unit), delta=cfg.harmonic_delta_A)
                rd.write_json("harmonic.json", {"epsilon_ion": eps.tolist()})
                result["epsilon_ion_harmonic"] = eps.tolist()
        result["wall_time_s_this_process"] = time.perf_counter() - t_start
        rd.write_json("pe_curve.json", result, strict=True)
        from ase_born.workflows.plots import plot_pe_curve

        plot_pe_curve(result, rd.file("pe_curve.png"))
        return result


def format_pe_report(result: dict[str, Any]) -> str:
    """Text summary: slopes, static ε and onset of nonlinearity per direction."""
    from ase_born.workflows.dielectric import format_tensor

    out = [f"Static P(E), {result['n_atoms']}-atom cell"]
    for d in result["directions"]:
        on = d.get("nonlinearity_onset_V_per_m")
        out.append(
            f"  E ∥ {d['direction']}: slope {d.get('slope_C_per_m2_per_V_per_m', float('nan')):.4g} C/m² per V/m; "
            f"onset of nonlinearity: {'none in range' if on is None else f'{on:.3g} V/m'}"
        )
    out.append("  static ε_ion (linear term of the fit), columns = field direction:")
    out.append(format_tensor(result["epsilon_ion_static"]))
    if "epsilon_ion_harmonic" in result:
        out.append("  0 K harmonic ε_ion:")
        out.append(format_tensor(result["epsilon_ion_harmonic"]))
    return "\n".join(out)


__all__ = [
    "PAPER_PRESET",
    "PECurveConfig",
    "default_fields_V_per_m",
    "format_pe_report",
    "run_pe_curve",
]
