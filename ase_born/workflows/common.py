"""Pieces shared by the workflows: config handling, preparation of the structure, MD segments."""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from ase import Atoms

from ase_born.conventions import validate_field
from ase_born.workflows import md
from ase_born.workflows.models import describe, resolve
from ase_born.workflows.rundir import RunDirectory
from ase_born.workflows.structures import load_structure, make_supercell, parse_supercell


# ---------------------------------------------------------------------------- configs
class ConfigMixin:
    """``to_dict``/``from_dict``/``replace`` for the frozen workflow config dataclasses."""

    def to_dict(self) -> dict[str, Any]:
        out = {}
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            v = getattr(self, f.name)
            out[f.name] = list(v) if isinstance(v, tuple) else v
        return out

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Any:
        names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"unknown {cls.__name__} settings {unknown}")
        return cls(**d)  # type: ignore[call-arg]

    def replace(self, **changes: Any) -> Any:
        return dataclasses.replace(self, **changes)  # type: ignore[type-var]


def check_temperatures(temps: Sequence[float], name: str = "temperatures_K") -> tuple[float, ...]:
    """Validate a sequence of temperatures (K): non-empty, finite, > 0."""
    try:
        t = tuple(float(x) for x in temps)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name} must be numbers in K, got {temps!r}") from exc
    if not t:
        raise ValueError(f"{name} is empty")
    bad = [x for x in t if not math.isfinite(x) or x <= 0]
    if bad:
        raise ValueError(f"{name} must be positive temperatures in K (> 0), got {bad}")
    return t


def check_positive(
    value: float, name: str, *, integer: bool = False, allow_zero: bool = False
) -> None:
    ok = value >= 0 if allow_zero else value > 0
    if integer and (isinstance(value, bool) or int(value) != value):
        ok = False
    if not ok or not math.isfinite(float(value)):
        kind = "a non-negative" if allow_zero else "a positive"
        raise ValueError(
            f"{name} must be {kind} {'integer' if integer else 'number'}, got {value!r}"
        )


def field_vector(
    field_V_per_A: float | Sequence[float] | None,
    direction: str | Sequence[float] | None,
    *,
    allow_large_field: bool = False,
) -> np.ndarray | None:
    """A field vector (V/Å) from a magnitude and a direction, or a full vector.

    Parameters
    ----------
    field_V_per_A : float, 3 floats, or None
        Magnitude (V/Å) with ``direction``, or the vector itself (then ``direction`` must be
        ``None``); ``None`` or 0 → no field.
    direction : {"x", "y", "z", "-x", ...}, 3 floats, or None
        Unit direction (normalised here).

    Raises
    ------
    ValueError
        A magnitude without a direction, a zero direction, or a field above 1 V/Å without
        ``allow_large_field``.
    """
    if field_V_per_A is None:
        if direction is not None:
            raise ValueError("a field direction was given without a field magnitude")
        return None
    arr = np.asarray(field_V_per_A, dtype=float)
    if arr.shape == (3,):
        if direction is not None:
            raise ValueError("give either a field vector or a magnitude with a direction, not both")
        vec = arr
    elif arr.shape == ():
        if float(arr) == 0.0:
            return None
        if direction is None:
            raise ValueError(
                f"a field of magnitude {float(arr):g} V/Å needs a direction (e.g. 'z', '-x' or '1,1,0')"
            )
        vec = float(arr) * parse_direction(direction)
    else:
        raise ValueError(f"field must be a magnitude or a 3-vector in V/Å, got shape {arr.shape}")
    return validate_field(vec, allow_large_field=allow_large_field)


def parse_direction(direction: str | Sequence[float]) -> np.ndarray:
    """Unit vector from ``"x"``, ``"-z"``, ``"1,1,0"`` or 3 numbers."""
    if isinstance(direction, str):
        s = direction.strip().lower()
        sign = -1.0 if s.startswith("-") else 1.0
        s2 = s.lstrip("+-")
        if s2 in ("x", "y", "z", "a", "b", "c"):
            v = np.zeros(3)
            v["xyzabc".index(s2) % 3] = sign
            return v
        try:
            v = np.array([float(x) for x in s.replace(" ", ",").split(",") if x], dtype=float)
        except ValueError as exc:
            raise ValueError(
                f"field direction must be x, y, z or three numbers, got {direction!r}"
            ) from exc
    else:
        v = np.asarray(direction, dtype=float)
    if v.shape != (3,) or not np.all(np.isfinite(v)) or np.linalg.norm(v) == 0:
        raise ValueError(f"field direction must be a nonzero 3-vector, got {direction!r}")
    return v / np.linalg.norm(v)


# ---------------------------------------------------------------------------- preparation
def check_structure_file(structure: str | None) -> None:
    """Fail early (before any output is written) when a structure file does not exist."""
    from pathlib import Path

    if structure is not None and not Path(structure).is_file():
        raise FileNotFoundError(
            f"structure file not found: {structure} (give a file ASE can read, e.g. CIF, POSCAR, extxyz)"
        )


def open_run_directory(
    name: str,
    cfg: Any,
    out: Any,
    force_field: Any,
    born_model: Any,
    *,
    model_info: dict[str, Any] | None,
    device: str,
    overwrite: bool,
    log: Callable[[str], None] = print,
) -> RunDirectory:
    """Check the structure file, then open (or resume) the workflow's run directory.

    The settings locked into the directory are the config, the models (``model_info`` or
    their descriptions) and the device; a resume with other settings is refused by
    :class:`~ase_born.workflows.rundir.RunDirectory`.
    """
    from ase_born.defaults import sha256

    check_structure_file(cfg.structure)
    settings = {
        "config": cfg.to_dict(),
        "models": model_info
        or {"force_field": describe(force_field), "born_model": describe(born_model)},
        "device": device,
        # the structure is locked by content: the same file may be given by another path
        "structure_sha256": None if cfg.structure is None else sha256(cfg.structure),
    }
    rd = RunDirectory(out, name, settings, overwrite=overwrite)
    if rd.resumed:
        log(f"resuming {rd.path} from its checkpoint")
    return rd


def resolve_fix_com(fix_com: bool | None, reference: Atoms, force_field: Any) -> bool:
    """Whether MD removes the centre-of-mass momentum: ``fix_com`` if given, else only for a
    translation-invariant force field (removing it for springs to sites biases ε)."""
    if fix_com is not None:
        return bool(fix_com)
    from ase_born.workflows.harmonic import is_translation_invariant

    return is_translation_invariant(reference, resolve(force_field, reference))


def prepare_reference(
    rd: RunDirectory,
    *,
    structure: str | None,
    supercell: Sequence[int],
    force_field: Any,
    born_model: Any,
    relax: bool,
    relax_cell: bool,
    fmax: float,
    steps: int,
    pressure_GPa: float = 0.0,
    log: Callable[[str], None] = print,
) -> tuple[Atoms, Atoms]:
    """Relaxed unit cell and its supercell (the MD reference), saved and reloaded on resume.

    With ``relax_cell`` the cell is relaxed at ``pressure_GPa`` (the pressure the MD then
    runs at, so the reference is the 0 K structure of the same ensemble).

    Writes ``relaxed_unit_cell.extxyz`` and ``reference.extxyz``.  On resume both are read
    back (never recomputed, so the reference is never re-picked).

    Raises
    ------
    ValueError
        The supercell breaks the Born model's mapping (e.g. fixed charges of another cell).
    """
    from ase_born.workflows.harmonic import relax as relax_fn

    rep = parse_supercell(supercell)
    f_unit, f_ref = rd.file("relaxed_unit_cell.extxyz"), rd.file("reference.extxyz")
    if f_unit.exists() and f_ref.exists():
        import ase.io

        unit = ase.io.read(f_unit, format="extxyz")
        ref = ase.io.read(f_ref, format="extxyz")
        unit.calc = None
        ref.calc = None
        return unit, ref
    unit = load_structure(structure)
    info: dict[str, Any] = {"relaxed": False}
    if relax:
        ff = resolve(force_field, unit)
        what = f"positions and cell at {pressure_GPa:g} GPa" if relax_cell else "positions"
        log(f"relaxing the {len(unit)}-atom cell ({what})")
        info = relax_fn(unit, ff, fmax=fmax, steps=steps, relax_cell=relax_cell, pressure_GPa=pressure_GPa)
        info["pressure_GPa"] = float(pressure_GPa) if relax_cell else None
        info["relaxed"] = True
        if not info["converged"]:
            log(
                f"warning: relaxation not converged after {info['steps']} steps (max force {info['fmax']:.2e} eV/Å)"
            )
        unit.calc = None
    ref = make_supercell(unit, rep)
    try:
        bm = resolve(born_model, ref)
        z = np.asarray(bm.get_born_charges(ref), dtype=float)
    except ValueError as exc:
        raise ValueError(
            f"supercell {rep} of the {len(unit)}-atom structure breaks the Born model's reference: {exc}"
        ) from exc
    if z.shape != (len(ref), 3, 3):
        raise ValueError(f"Born model returned shape {z.shape} for the {len(ref)}-atom supercell")
    import ase.io

    unit.info.update({f"relax_{k}": v for k, v in info.items()})
    ref.info["supercell"] = list(rep)
    for path, atoms in ((f_unit, unit), (f_ref, ref)):  # atomic: a resume trusts both files
        tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
        ase.io.write(tmp, atoms, format="extxyz")
        os.replace(tmp, path)
    # re-read so a fresh run and a resumed one use bit-identical structures
    unit = ase.io.read(f_unit, format="extxyz")
    ref = ase.io.read(f_ref, format="extxyz")
    unit.calc = ref.calc = None
    return unit, ref


def reference_from_config(
    rd: RunDirectory,
    cfg: Any,
    force_field: Any,
    born_model: Any,
    *,
    relax_cell: bool | None = None,
    log: Callable[[str], None] = print,
) -> tuple[Atoms, Atoms]:
    """:func:`prepare_reference` with the structure and relaxation settings of a workflow config.

    ``cfg`` gives ``structure``, ``supercell``, ``relax``, ``relax_fmax_eV_per_A``,
    ``relax_steps``, ``pressure_GPa`` (0 when the config has none) and, unless ``relax_cell``
    is given here, ``relax_cell``.
    """
    return prepare_reference(
        rd,
        structure=cfg.structure,
        supercell=cfg.supercell,
        force_field=force_field,
        born_model=born_model,
        relax=cfg.relax,
        relax_cell=cfg.relax_cell if relax_cell is None else relax_cell,
        fmax=cfg.relax_fmax_eV_per_A,
        steps=cfg.relax_steps,
        pressure_GPa=float(getattr(cfg, "pressure_GPa", 0.0)),
        log=log,
    )


def make_field_calculator(
    force_field: Any,
    born_model: Any,
    reference: Atoms,
    *,
    mode: str = "direct",
    born_update_every: int = 1,
    device: str = "cpu",
    allow_large_field: bool = False,
) -> Any:
    """A :class:`~ase_born.calculators.field.BornFieldCalculator` with an explicit reference."""
    from ase_born.calculators.field import BornFieldCalculator

    return BornFieldCalculator(
        resolve(force_field, reference),
        resolve(born_model, reference),
        reference=reference,
        mode=mode,
        born_update_every=born_update_every,
        allow_large_field=allow_large_field,
        device=device,
    )


def md_atoms(
    cfg: Any, force_field: Any, born_model: Any, reference: Atoms, device: str
) -> tuple[Atoms, Any]:
    """A copy of ``reference`` carrying a new field calculator set up as ``cfg`` says.

    ``cfg`` gives ``mode``, ``born_update_every`` and ``allow_large_field``; the calculator's
    reference is ``reference`` (:func:`make_field_calculator`).
    """
    atoms = reference.copy()
    calc = make_field_calculator(
        force_field,
        born_model,
        reference,
        mode=cfg.mode,
        born_update_every=cfg.born_update_every,
        device=device,
        allow_large_field=cfg.allow_large_field,
    )
    atoms.calc = calc
    return atoms, calc


def integrator_settings(cfg: Any, **settings: Any) -> dict[str, Any]:
    """Keyword arguments of :func:`ase_born.workflows.md.make_integrator` from ``cfg``.

    ``cfg`` gives ``timestep_fs``, ``pressure_GPa``, ``thermostat_time_fs`` and
    ``barostat_time_fs``; ``settings`` adds the rest (temperature, ensemble, ...).
    """
    return {
        "timestep_fs": cfg.timestep_fs,
        "pressure_GPa": cfg.pressure_GPa,
        "thermostat_time_fs": cfg.thermostat_time_fs,
        "barostat_time_fs": cfg.barostat_time_fs,
        **settings,
    }


def resume_md(atoms: Atoms, calc: Any, state: dict[str, Any], **integrator: Any) -> tuple[Any, int]:
    """Restore a checkpointed MD run (the ``current`` entry written with :func:`md_state`).

    Sets the atoms and the calculator's state (its saved reference and field, never
    re-picked), builds the integrator from ``integrator`` (keyword arguments of
    :func:`ase_born.workflows.md.make_integrator`) and restores its state, random numbers
    included.

    Returns
    -------
    dyn, step : integrator, int
        The integrator and the number of steps already done.
    """
    md.restore_atoms(atoms, state["atoms"])
    calc.set_state(state["calculator"])
    dyn = md.make_integrator(atoms, rng=np.random.default_rng(0), **integrator)
    md.restore_integrator_state(dyn, state["integrator"])
    return dyn, int(state["step"])


def md_state(atoms: Atoms, dyn: Any, calc: Any) -> dict[str, Any]:
    """The exact restart state of an MD run: atoms, integrator and calculator."""
    return {
        "atoms": md.atoms_state(atoms),
        "integrator": md.integrator_state(dyn),
        "calculator": calc.get_state(),
    }


def write_frame(fh: Any, atoms: Atoms, info: dict[str, Any]) -> None:
    """Append one extxyz frame (positions, cell, momenta and ``info``; no calculator results)."""
    import ase.io

    frame = Atoms(numbers=atoms.numbers, positions=atoms.positions, cell=atoms.cell, pbc=atoms.pbc)
    frame.set_momenta(atoms.get_momenta())
    frame.info.update(info)
    ase.io.write(fh, frame, format="extxyz")


def save_state_file(rd: RunDirectory, name: str, atoms: Atoms, dyn: Any, calc: Any) -> None:
    """Atomic JSON snapshot of atoms + integrator + calculator state."""
    rd.write_json(name, md_state(atoms, dyn, calc))


def load_state_file(rd: RunDirectory, name: str) -> dict[str, Any]:
    return json.loads(rd.file(name).read_text())


def ionic_observables(calc: Any, atoms: Atoms) -> dict[str, Any]:
    """Polarization (e/Å², ionic), dipole (e·Å), volume, energy, stress of the current step."""
    p = np.asarray(calc.get_property("ionic_polarization", atoms), dtype=float)
    d = np.asarray(calc.get_property("ionic_dipole", atoms), dtype=float)
    return {
        "P": p,
        "d": d,
        "volume": float(atoms.get_volume()),
        "energy": float(calc.get_property("energy", atoms)),
    }


def tensor_to_list(x: Any) -> Any:
    return None if x is None else np.asarray(x, dtype=float).tolist()


def epsilon_inf_matrix(eps: Any) -> np.ndarray | None:
    """ε∞ as (3, 3) from 1 (isotropic), 3 (diagonal) or 9 numbers; ``None`` stays ``None``."""
    if eps is None:
        return None
    a = np.asarray(eps, dtype=float).reshape(-1)
    if a.size == 1:
        m = np.eye(3) * a[0]
    elif a.size == 3:
        m = np.diag(a)
    elif a.size == 9:
        m = a.reshape(3, 3)
    else:
        raise ValueError(f"epsilon_inf needs 1, 3 or 9 numbers, got {a.size}")
    if not np.all(np.isfinite(m)) or np.any(np.diag(m) < 1):
        raise ValueError(f"epsilon_inf must be finite with diagonal >= 1, got {m.tolist()}")
    return m


__all__ = [
    "ConfigMixin",
    "check_positive",
    "check_structure_file",
    "check_temperatures",
    "epsilon_inf_matrix",
    "field_vector",
    "integrator_settings",
    "ionic_observables",
    "load_state_file",
    "make_field_calculator",
    "md_atoms",
    "md_state",
    "parse_direction",
    "prepare_reference",
    "reference_from_config",
    "resume_md",
    "save_state_file",
    "tensor_to_list",
    "write_frame",
]
