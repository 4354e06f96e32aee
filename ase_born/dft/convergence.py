"""Convergence study of the DFPT settings on a 5-atom CaTiO3 cell.

The test structure ``conv_cubic`` is ideal cubic CaTiO3 (Pm-3m, a = 3.85 Å).  Its
full symmetry makes every grid point several times cheaper than a displaced cell
(4 instead of 32 irreducible k-points on the 4x4x4 mesh, one field direction), and
its Z* are directly the literature's cubic-CaTiO3 values.  The plane-wave and
k-point errors of Z* and ε∞ are properties of the basis and the Brillouin-zone
sampling, not of the symmetry, so the chosen settings carry over to the sampled
(symmetry-free) production cells.

Each grid point is one :func:`~ase_born.dft.abinit.run_structure` call in its own
directory (so the study is resumable exactly like the production pipeline).
Errors are measured against the most converged point of each axis:

* cutoff axis at the production k-mesh, reference = highest ``ecut_Ha``;
* k axis at a cheaper cutoff (k convergence hardly depends on the cutoff),
  reference = densest mesh, and the dense-mesh limit extrapolated from the three
  densest meshes (:func:`k_limit`);
* tolerance points against the point with the same cutoff and mesh at the study's
  tight tolerances (:data:`STUDY_TOLERANCES`; every point starts from them, not from
  the production defaults, which were loosened by the study itself).

Reported per point: max relative error of the diagonal Z* (|ΔZ_ii| / |Z_ii|),
max absolute error of all Z* components, max relative error of ε∞ diagonal,
the raw sum-rule violation max |Σ_k Z*_k| and the wall time.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from ase import Atoms
from ase.units import GPa

from ase_born.dft.abinit import AbinitSettings, run_structure
from ase_born.dft.pipeline import read_run_directory
from ase_born.dft.sampler import cubic_catio3

#: tolerances of every grid point unless it overrides them (the production defaults
#: were 1e-20 / 1e-8 when the study ran and are looser now)
STUDY_TOLERANCES: dict[str, float] = {"tolvrs_gs": 1e-12, "tolwfr_ddk": 1e-20, "tolvrs_efield": 1e-8}


def point_settings(overrides: dict) -> AbinitSettings:
    """The full settings of a grid point: the production defaults, the study's tolerances, ``overrides``."""
    return dataclasses.replace(AbinitSettings(), **{**STUDY_TOLERANCES, **overrides})


#: (axis, label, overrides) in the order they are run (cheap and most informative first)
DEFAULT_GRID: tuple[tuple[str, str, dict], ...] = (
    ("ecut", "ecut30_k4", {"ecut_Ha": 30.0, "kpt_density": 2.4}),
    ("ecut", "ecut40_k4", {"ecut_Ha": 40.0, "kpt_density": 2.4}),
    ("ecut", "ecut50_k4", {"ecut_Ha": 50.0, "kpt_density": 2.4}),
    ("ecut", "ecut35_k4", {"ecut_Ha": 35.0, "kpt_density": 2.4}),
    ("kpts", "ecut30_k3", {"ecut_Ha": 30.0, "kpt_density": 1.8}),
    ("kpts", "ecut30_k5", {"ecut_Ha": 30.0, "kpt_density": 3.0}),
    ("kpts", "ecut30_k6", {"ecut_Ha": 30.0, "kpt_density": 3.6}),
    ("tol", "ecut40_k4_tol1e-6", {"ecut_Ha": 40.0, "kpt_density": 2.4, "tolvrs_efield": 1e-6, "tolvrs_gs": 1e-10}),
    # the ddk step costs 70-85 % of a structure: is its wavefunction tolerance too strict?
    ("tol", "ecut30_k4_ddk1e-16", {"ecut_Ha": 30.0, "kpt_density": 2.4, "tolwfr_ddk": 1e-16}),
    # on symmetry-free cells the E-field step costs as much as the ddk step: both looser
    ("tol", "ecut30_k4_loose", {"ecut_Ha": 30.0, "kpt_density": 2.4, "tolwfr_ddk": 1e-12, "tolvrs_efield": 1e-6}),
)


def convergence_structure() -> Atoms:
    """The study's cell: ideal cubic CaTiO3 (Pm-3m), a = 3.85 Å."""
    atoms = cubic_catio3(3.85)
    atoms.info["structure_id"] = "conv_cubic"
    return atoms


def _point_result(directory: Path) -> dict:
    f = read_run_directory(directory)
    z = f.arrays["born_effective_charges"]
    return {
        "born_effective_charges": z.tolist(),
        "epsilon_inf": np.asarray(f.info["epsilon_inf"]).tolist(),
        "acoustic_sum": np.asarray(f.info["acoustic_sum"]).tolist(),
        "energy_eV": float(f.get_potential_energy()),
        "forces": f.get_forces().tolist(),
        "stress": f.get_stress().tolist(),
    }


def read_results(path: str | os.PathLike) -> dict:
    """The convergence study's results file (``data/dft/convergence.json``); a file that is
    not one is a ``ValueError`` naming it."""
    try:
        res = json.loads(Path(path).read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path} is not a convergence results file (JSON: {exc})") from exc
    if not isinstance(res, dict):
        raise ValueError(f"{path} is not a convergence results file (a JSON object expected)")  # noqa: TRY004 - bad file content
    return res


def run_convergence(
    workdir: str | os.PathLike = "dft_runs/convergence",
    output: str | os.PathLike = "data/dft/convergence.json",
    grid: Sequence[tuple[str, str, dict]] = DEFAULT_GRID,
    ranks: int = 2,
    nice: int = 19,
    timeout_s: float | None = 4 * 3600.0,
    log: Callable[[str], None] = print,
    runner: Callable[..., dict] = run_structure,
    structure: Atoms | None = None,
) -> dict:
    """Run (or resume) every grid point and write the results JSON after each point.

    ``runner`` (default :func:`~ase_born.dft.abinit.run_structure`) and ``structure``
    (default :func:`convergence_structure`) are parameters so tests can replay outputs.
    """
    workdir, output = Path(workdir), Path(output)
    atoms = convergence_structure() if structure is None else structure
    results = read_results(output) if output.is_file() else {}
    points = results.setdefault("points", {})
    for axis, label, over in grid:
        if label in points:
            continue
        settings = point_settings(over)
        log(f"convergence point {label} ({axis}): {over}")
        timings = runner(atoms, settings, workdir / label, ranks=ranks, timeout_s=timeout_s, nice=nice)
        res = _point_result(workdir / label)
        res.update(axis=axis, settings=over, abinit_settings=settings.to_dict(), kmesh=settings.kmesh(atoms), wall_s=timings, ranks=ranks)
        points[label] = res
        _store(results, points, output)
    if points and json.dumps(results.get("analysis")) != json.dumps(analyse(points)):
        _store(results, points, output)  # an analysis stored by an older version is refreshed
    return results


def _store(results: dict, points: dict, output: Path) -> None:
    """Analyse ``points`` into ``results`` and write them atomically to ``output``."""
    results["analysis"] = analyse(points)
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = output.with_suffix(".tmp")
    tmp.write_text(json.dumps(results, indent=1))
    os.replace(tmp, output)


def export_frame(
    label: str,
    output: str | os.PathLike,
    workdir: str | os.PathLike = "dft_runs/convergence",
    results: str | os.PathLike = "data/dft/convergence.json",
    split: str = "train",
    structure: Atoms | None = None,
) -> Atoms:
    """Append one finished grid point to ``output`` as a dataset frame.

    The frame has the same keys and provenance as the production frames
    (:func:`ase_born.dft.pipeline.frame_from_run`), ``structure_id`` ``conv_cubic``,
    ``kind`` ``cubic5_ideal`` and ``info["convergence_point"] = label``.  The ideal cubic
    cell is not in the plan; exporting the point computed at the production settings adds
    the exact Pm-3m Z* to a training set at no extra DFT cost.

    Raises
    ------
    ValueError
        When ``output`` already holds a ``conv_cubic`` frame (checked under the same lock
        as the pipeline's appends, :func:`ase_born.dft.pipeline.append_frame`): exported
        once, never twice.
    """
    from ase_born.dft.pipeline import append_frame, finished_ids, frame_from_run

    res = read_results(results)
    if label not in res.get("points", {}):
        raise ValueError(f"convergence point {label!r} is not finished (have {sorted(res.get('points', {}))})")
    point = res["points"][label]
    if "abinit_settings" in point:
        settings = AbinitSettings.from_dict(point["abinit_settings"])
    else:  # points run before full settings were stored
        settings = point_settings(point["settings"])
    if "conv_cubic" in finished_ids(output):  # fail before parsing anything
        raise ValueError(f"{output} already holds the convergence frame (structure_id conv_cubic): not appended again")
    atoms = convergence_structure() if structure is None else structure.copy()
    atoms.info.update(structure_id="conv_cubic", kind="cubic5_ideal", split=split, sampling="ideal Pm-3m, a = 3.85 Å (convergence study)")
    frame = frame_from_run(atoms, Path(workdir) / label, settings, point["wall_s"], point["ranks"])
    frame.info["convergence_point"] = label
    if not append_frame(output, frame, log=lambda m: None):  # appended meanwhile by another process
        raise ValueError(f"{output} already holds the convergence frame (structure_id conv_cubic): not appended again")
    return frame


def _errors(p: dict, ref: dict) -> dict:
    z, zr = np.array(p["born_effective_charges"]), np.array(ref["born_effective_charges"])
    e, er = np.array(p["epsilon_inf"]), np.array(ref["epsilon_inf"])
    diag = np.einsum("kii->ki", z)
    diag_r = np.einsum("kii->ki", zr)
    return {
        "max_rel_err_Z_diag": float(np.max(np.abs(diag - diag_r) / np.abs(diag_r))),
        "max_abs_err_Z": float(np.max(np.abs(z - zr))),
        "max_rel_err_eps_diag": float(np.max(np.abs(np.diag(e) - np.diag(er)) / np.diag(er))),
    }


def _aitken(x0: np.ndarray, x1: np.ndarray, x2: np.ndarray, tiny: float = 1e-3) -> np.ndarray:
    """Geometric (Aitken Δ²) limit of three successive values, elementwise.

    Where the sequence is not geometric-convergent (changes below ``tiny`` or a ratio
    outside (0, 1)), the last value is taken as converged.
    """
    d1, d2 = x1 - x0, x2 - x1
    with np.errstate(divide="ignore", invalid="ignore"):
        r = d2 / d1
        ok = (np.abs(d1) > tiny) & (np.abs(d2) > tiny / 10) & (r > 0) & (r < 1)
        limit = np.where(ok, x2 + d2 * r / (1 - r), x2)
    return limit


def _k_axis(points: dict) -> list[str]:
    """The k-axis points (30 Ha, not tolerance points), coarsest mesh first."""
    return sorted((lbl for lbl in points if points[lbl]["settings"].get("ecut_Ha") == 30.0
                   and points[lbl]["axis"] != "tol"), key=lambda lbl: np.prod(points[lbl]["kmesh"]))


def k_limit(points: dict) -> dict | None:
    """Dense-mesh limit of Z* and ε∞ extrapolated from the three densest 30 Ha meshes.

    The k error of Z* decays roughly geometrically with the mesh (measured ratios ≈ 0.4
    per step from 4x4x4 to 6x6x6), so the densest mesh itself is not the converged value;
    the Aitken Δ² limit of the last three meshes estimates it.
    """
    k_pts = _k_axis(points)
    if len(k_pts) < 3:
        return None
    seq = [points[lbl] for lbl in k_pts[-3:]]
    return {
        "from": k_pts[-3:],
        "born_effective_charges": _aitken(*(np.array(p["born_effective_charges"]) for p in seq)).tolist(),
        "epsilon_inf": _aitken(*(np.array(p["epsilon_inf"]) for p in seq)).tolist(),
    }


def analyse(points: dict) -> dict:
    """Errors of each point against the most converged point of its axis.

    Keys: the label (cutoff axis, vs the highest cutoff), ``label@k`` (k axis at 30 Ha,
    vs the densest mesh) and ``label@kinf`` (k axis, vs the extrapolated dense-mesh
    limit of :func:`k_limit`).
    """
    out = {}
    ecut_pts = [lbl for lbl in points if points[lbl]["axis"] == "ecut" and points[lbl]["kmesh"] == [4, 4, 4]]
    if ecut_pts:
        ref = max(ecut_pts, key=lambda lbl: points[lbl]["settings"]["ecut_Ha"])
        for lbl in ecut_pts:
            out[lbl] = {"reference": ref, **_errors(points[lbl], points[ref])}
    # a tolerance point against the point with the same cutoff and mesh at the tight tolerances
    for lbl in (lbl for lbl in points if points[lbl]["axis"] == "tol"):
        base = [b for b in ecut_pts if points[b]["settings"]["ecut_Ha"] == points[lbl]["settings"]["ecut_Ha"]
                and points[b]["kmesh"] == points[lbl]["kmesh"]]
        if base:
            out[lbl] = {"reference": base[0], **_errors(points[lbl], points[base[0]])}
    k_pts = _k_axis(points)
    if len(k_pts) > 1:
        ref = k_pts[-1]  # the densest mesh
        for lbl in k_pts:
            out.setdefault(f"{lbl}@k", {"reference": ref, **_errors(points[lbl], points[ref])})
    limit = k_limit(points)
    if limit is not None:
        for lbl in k_pts:
            out[f"{lbl}@kinf"] = {"reference": "k-limit (Aitken, " + "/".join(limit["from"]) + ")",
                                  **_errors(points[lbl], limit)}
    for lbl, p in points.items():
        out.setdefault(lbl, {})
        out[lbl]["pressure_GPa"] = -float(np.mean(p["stress"][:3])) / GPa
        out[lbl]["max_abs_asr_violation_e"] = float(np.abs(np.array(p["acoustic_sum"])).max())
        out[lbl]["wall_min"] = round(sum(p["wall_s"].values()) / 60.0, 1)
    return out


def pulay_stress(ecut_Ha: float, points: dict) -> float:
    """Isotropic basis-set (Pulay) stress of a cutoff, from the cutoff axis of the study.

    A plane-wave basis of fixed ``ecut`` gives a spurious isotropic stress that converges
    much more slowly with the cutoff than Z* (measured on ``conv_cubic``: the
    pressure is -10.7 GPa at 30 Ha, -1.8 at 40 and -1.7 at 50).  Returned: the mean normal
    stress at ``ecut_Ha`` minus that at the highest cutoff (ASE sign, eV/Å³; 0 at or above
    it).  Subtract it from the diagonal of stresses computed at ``ecut_Ha`` (same
    pseudopotentials and composition; its change with the volume and structure of the
    sampled cells is neglected).

    Raises
    ------
    ValueError
        When the study has no cutoff-axis point at ``ecut_Ha``.
    """
    ecut = {lbl: p for lbl, p in points.items() if p["axis"] == "ecut"}
    if not ecut:
        raise ValueError("the convergence study has no cutoff-axis points")
    ref = max(ecut.values(), key=lambda p: p["settings"]["ecut_Ha"])
    if ecut_Ha >= ref["settings"]["ecut_Ha"]:
        return 0.0
    at = [p for p in ecut.values() if p["settings"]["ecut_Ha"] == ecut_Ha and p["kmesh"] == ref["kmesh"]]
    if not at:
        known = sorted({p["settings"]["ecut_Ha"] for p in ecut.values()})
        raise ValueError(f"no cutoff-axis point at {ecut_Ha} Ha (study has {known})")
    return float(np.mean(at[0]["stress"][:3]) - np.mean(ref["stress"][:3]))


def basis_corrected_stress(atoms: Atoms, points: dict) -> np.ndarray:
    """A DFPT frame's stress (Voigt, ASE sign, eV/Å³) with the :func:`pulay_stress` of its
    cutoff (``info["dft_settings"]``) removed from the diagonal."""
    ecut = json.loads(atoms.info.get("dft_settings", "{}")).get("ecut_Ha")
    if ecut is None:
        raise ValueError(f"frame {atoms.info.get('structure_id', '?')} has no dft_settings with ecut_Ha")
    stress = np.array(atoms.calc.results["stress"], dtype=float)
    stress[:3] -= pulay_stress(float(ecut), points)
    return stress


def _fmt_err(err: dict, key: str, pct: bool = False) -> str:
    if key not in err:
        return "–"
    return f"{100 * err[key]:.2f}%" if pct else f"{err[key]:.3f}"


def markdown_table(results: dict) -> str:
    """The table for data/dft/README.md.

    One row per comparison: a point on both axes (the 30 Ha / 4x4x4 point) gets a row
    against the cutoff reference and one against the k-mesh reference.
    """
    pts, an = results.get("points", {}), results.get("analysis", {})
    lines = [
        "| point | ecut (Ha) | k-mesh | max rel. err. Z*_ii | max abs. err. Z* (e) | max rel. err. ε∞_ii | max abs. Σ_k Z* (e) | pressure (GPa) | wall (min, 2 ranks) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for lbl, p in pts.items():
        a = an.get(lbl, {})
        comparisons = [err for err in (a, an.get(f"{lbl}@k", {}), an.get(f"{lbl}@kinf", {}))
                       if "reference" in err] or [{}]
        for err in comparisons:
            ref = f" (vs {err['reference']})" if "reference" in err else ""
            lines.append(
                f"| {lbl}{ref} | {p['settings']['ecut_Ha']:g} | {'x'.join(map(str, p['kmesh']))} | "
                f"{_fmt_err(err, 'max_rel_err_Z_diag', True)} | {_fmt_err(err, 'max_abs_err_Z')} | "
                f"{_fmt_err(err, 'max_rel_err_eps_diag', True)} | "
                f"{a.get('max_abs_asr_violation_e', float('nan')):.3f} | {a.get('pressure_GPa', float('nan')):.2f} | "
                f"{a.get('wall_min', float('nan')):.1f} |"
            )
    return "\n".join(lines)
