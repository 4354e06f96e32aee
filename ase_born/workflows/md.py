"""Molecular-dynamics driver shared by the workflows: integrator, exact restart state, observables.

Choice of integrator
--------------------
ASE 3.29 ships four constant-pressure drivers: ``NPTBerendsen``/``Inhomogeneous_NPTBerendsen``
(weak coupling: wrong fluctuations, so no fluctuation formula), ``NPT`` (Nosé–Hoover/
Parrinello–Rahman, known to be fragile), the MTK family in ``ase.md.nose_hoover_chain``
(``IsotropicMTKNPT``, ``MTKNPT`` with full 3×3 cell fluctuations, ``MaskedMTKNPT``) and
:class:`ase.md.langevinbaoab.LangevinBAOAB` (Langevin BAOAB for the atoms, Langevin–Hoover
barostat of Quigley & Probert 2004 for the cell, fully anisotropic: a symmetric 3×3 cell
momentum, no rotations).  All workflows use **LangevinBAOAB**:

* it samples the NpT (or NVT) ensemble with correct fluctuations, as the fluctuation
  estimator of ε needs, and a stochastic thermostat is ergodic even for the harmonic stand-in
  models (deterministic Nosé–Hoover chains are not);
* anisotropic cell fluctuations let a, b, c (and shears) respond separately, as the heating
  runs and the field stress need;
* ``set_temperature`` is public, so a temperature ramp is one call per step (MTK's thermostat
  and barostat masses depend on T and it has no public setter);
* its state is small and explicit (positions, momenta, cell, the cell momentum ``p_eps``,
  the cell force ``force_eps`` and the random-number generator), so a checkpoint restores the
  run exactly: a resumed run continues bit for bit (:func:`integrator_state`,
  :func:`restore_integrator_state`).

The centre-of-mass momentum is removed after every step (``fix_com``): Langevin noise makes the
crystal diffuse as a whole, and a drift of half a cell vector would make the minimum-image
displacements from the reference, and with them the polarization, jump.  The instantaneous
temperature is then ``2 K / ((3N − 3) k_B)``.

Units at this boundary: ``timestep_fs``, ``thermostat_time_fs``, ``barostat_time_fs`` in fs,
``temperature_K`` in K, ``pressure_GPa`` in GPa (ASE units inside).
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
from ase import Atoms, units

from ase_born.conventions import KB_EV_PER_K

#: 1 eV/Å³ in GPa
EV_PER_A3_IN_GPA = 1.0 / units.GPa


def expm_symmetric(a: Any) -> np.ndarray:
    """``exp(a)`` of a real symmetric 3×3 matrix (or a scalar) via ``numpy.linalg.eigh``."""
    arr = np.asarray(a, dtype=float)
    if arr.ndim == 0:
        return np.exp(arr)
    lam, vec = np.linalg.eigh(0.5 * (arr + arr.T))
    return (vec * np.exp(lam)) @ vec.T


def _integrator_class() -> type:
    """LangevinBAOAB with the 3×3 matrix exponentials done by :func:`expm_symmetric`.

    ASE's implementation calls :func:`scipy.linalg.expm` twice per step on 3×3 matrices
    that are symmetric by construction (the cell momentum ``p_eps`` is built from symmetric
    stresses and a symmetrised random force; the drag ``γ 1 + p_eps/W``-type term too).
    SciPy's Padé code goes through its threaded BLAS and takes milliseconds per call on a
    busy multi-threaded machine, more than a small force field; the eigendecomposition is
    exact for symmetric matrices and takes microseconds.  The two methods below are ASE
    3.29's ``_barostat_BAOAB_A`` and ``_BAOAB_OU`` with only that substitution.  A third,
    ``_barostat_BAOAB_OU_gamma_mod``, fixes ASE 3.29's anisotropic drag, which adds
    ``Tr(p_eps)/N_dof`` to every element of the 3×3 matrix instead of its diagonal (an
    O(1/N) error in the off-diagonal drag).
    """
    from ase.md.langevinbaoab import LangevinBAOAB

    class _LangevinBAOAB(LangevinBAOAB):
        def _barostat_BAOAB_A(self) -> None:
            if self.hydrostatic:
                volume = self.atoms.get_volume()
                new_volume = volume * np.exp(0.5 * self.dt * 3.0 * self.p_eps / self.barostat_mass)
                new_cell = self.atoms.cell * (new_volume / volume) ** (1.0 / 3.0)
            else:
                new_cell = (
                    self.atoms.cell
                    @ expm_symmetric(0.5 * self.dt * self.p_eps / self.barostat_mass).T
                )
            self.atoms.set_cell(new_cell, True)

        def _BAOAB_OU(self, drag_gamma_mod: Any = 0.0) -> None:
            if self.gamma == 0 and np.all(drag_gamma_mod == 0):
                return
            vel = self.atoms.get_velocities()
            if self.hydrostatic:
                vel *= np.exp(-(self.gamma + drag_gamma_mod) * self.dt)
            else:
                vel = (
                    vel
                    @ expm_symmetric(-(self.gamma * np.identity(3) + drag_gamma_mod) * self.dt).T
                )
            if self.gamma != 0:
                masses = self.atoms.get_masses()
                vel += (
                    self.BAOAB_prefactor * (self.rng.normal(size=vel.shape).T / np.sqrt(masses)).T
                )
            self.atoms.set_velocities(vel)

        def _barostat_BAOAB_OU_gamma_mod(self) -> Any:
            # the velocity drag of the cell momentum (Martyna-Tobias-Klein): p_eps/W plus
            # Tr(p_eps)/(N_dof W) on the DIAGONAL; ASE 3.29 adds the trace term to all nine
            # elements in the anisotropic case (hydrostatic is unchanged)
            if self.hydrostatic:
                return (1.0 + 3.0 / self.Ndof) * self.p_eps / self.barostat_mass
            return (self.p_eps + np.trace(self.p_eps) / self.Ndof * np.identity(3)) / self.barostat_mass

    _LangevinBAOAB.__name__ = _LangevinBAOAB.__qualname__ = "LangevinBAOAB"
    return _LangevinBAOAB


def make_integrator(
    atoms: Atoms,
    *,
    timestep_fs: float,
    temperature_K: float,
    ensemble: str = "npt",
    pressure_GPa: float = 0.0,
    thermostat_time_fs: float = 100.0,
    barostat_time_fs: float = 1000.0,
    hydrostatic: bool = False,
    rng: np.random.Generator | None = None,
) -> Any:
    """A :class:`ase.md.langevinbaoab.LangevinBAOAB` integrator (module docstring).

    (A subclass that only replaces SciPy's general matrix exponential by an exact symmetric
    one, see :func:`_integrator_class`.)

    Parameters
    ----------
    atoms : ase.Atoms
        With its calculator attached (forces, and stress for NpT, are evaluated now).
    timestep_fs, thermostat_time_fs, barostat_time_fs : float
        Time step, Langevin time constant of the atoms (1/γ), and of the cell (fs).
    temperature_K : float
        Target temperature (> 0).
    ensemble : {"npt", "nvt"}
        Variable (anisotropic) or fixed cell.
    pressure_GPa : float
        External hydrostatic pressure (NpT).
    hydrostatic : bool
        NpT with isotropic volume changes only.
    rng : numpy.random.Generator
        Source of the Langevin noise (required for reproducibility).
    """
    LangevinBAOAB = _integrator_class()

    if ensemble not in ("npt", "nvt"):
        raise ValueError(f"ensemble must be 'npt' or 'nvt', got {ensemble!r}")
    if not temperature_K > 0:
        raise ValueError(f"temperature_K must be positive, got {temperature_K!r}")
    if not timestep_fs > 0:
        raise ValueError(f"timestep_fs must be positive, got {timestep_fs!r}")
    if rng is None:
        raise ValueError("pass rng=numpy.random.default_rng(seed) for reproducible runs")
    kwargs: dict[str, Any] = {
        "temperature_K": float(temperature_K),
        "T_tau": float(thermostat_time_fs) * units.fs,
        "rng": rng,
    }
    if ensemble == "npt":
        p_tau = float(barostat_time_fs) * units.fs
        # ASE's own heuristic (LangevinBAOAB._set_barostat_mass): cell period ≈ P_tau / 4
        p_mass = (((p_tau / 4.0) / (1.66 * units.fs)) * len(atoms) ** (1.0 / 6.0)) ** 2
        stress = -float(pressure_GPa) * units.GPa
        kwargs.update(
            externalstress=stress,
            hydrostatic=bool(hydrostatic),
            P_tau=p_tau,
            P_mass=p_mass,
        )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return LangevinBAOAB(atoms, float(timestep_fs) * units.fs, **kwargs)


def remove_com_momentum(atoms: Atoms) -> None:
    """Set the total momentum to zero (subtract ``m_k P/M`` from every momentum)."""
    p = atoms.get_momenta()
    m = atoms.get_masses()
    atoms.set_momenta(p - np.outer(m, p.sum(0) / m.sum()))


def temperature_K(atoms: Atoms, fix_com: bool = True) -> float:
    """Instantaneous kinetic temperature, ``2K / (n_dof k_B)`` with ``n_dof = 3N − 3·fix_com``."""
    ndof = 3 * len(atoms) - (3 if fix_com else 0)
    return float(2.0 * atoms.get_kinetic_energy() / (max(ndof, 1) * KB_EV_PER_K))


def pressure_GPa(atoms: Atoms, stress: np.ndarray) -> float:
    """Instantaneous pressure ``2K/(3Ω) − tr(σ)/3`` in GPa (``stress``: ASE sign, no kinetic part)."""
    vol = atoms.get_volume()
    s = np.asarray(stress, dtype=float)
    tr = s[:3].sum() if s.shape == (6,) else np.trace(s)
    kin = 2.0 * atoms.get_kinetic_energy() / (3.0 * vol)
    return float((kin - tr / 3.0) * EV_PER_A3_IN_GPA)


def atoms_state(atoms: Atoms) -> dict[str, Any]:
    """JSON-able exact snapshot: numbers, positions, momenta, cell, pbc (floats round-trip)."""
    return {
        "numbers": atoms.numbers.tolist(),
        "positions": atoms.positions.tolist(),
        "momenta": atoms.get_momenta().tolist(),
        "cell": atoms.cell.array.tolist(),
        "pbc": atoms.pbc.tolist(),
    }


def restore_atoms(atoms: Atoms, state: dict[str, Any]) -> None:
    """Put :func:`atoms_state` back into ``atoms`` (same species and order required)."""
    if list(atoms.numbers) != list(state["numbers"]):
        raise ValueError("checkpoint structure does not match the system (species/order)")
    atoms.set_cell(np.asarray(state["cell"], dtype=float), scale_atoms=False)
    atoms.positions = np.asarray(state["positions"], dtype=float)
    atoms.set_momenta(np.asarray(state["momenta"], dtype=float))
    atoms.pbc = np.asarray(state["pbc"], dtype=bool)


def atoms_from_state(state: dict[str, Any]) -> Atoms:
    """New :class:`ase.Atoms` from :func:`atoms_state`."""
    a = Atoms(
        numbers=state["numbers"], positions=state["positions"], cell=state["cell"], pbc=state["pbc"]
    )
    a.set_momenta(np.asarray(state["momenta"], dtype=float))
    return a


def _jsonable(x: Any) -> Any:
    if isinstance(x, np.ndarray):
        return x.tolist()
    if isinstance(x, (np.floating, np.integer)):
        return x.item()
    if isinstance(x, dict):
        return {k: _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    return x


def integrator_state(dyn: Any) -> dict[str, Any]:
    """Exact, JSON-able state of a LangevinBAOAB integrator (beyond the atoms)."""
    state: dict[str, Any] = {
        "class": type(dyn).__name__,
        "temperature_K": dyn.temperature_K,
        "nsteps": int(dyn.nsteps),
        "rng": _jsonable(dyn.rng.bit_generator.state)
        if getattr(dyn, "rng", None) is not None
        else None,
        "rng_bit_generator": type(dyn.rng.bit_generator).__name__
        if getattr(dyn, "rng", None) is not None
        else None,
        "accel": np.asarray(dyn.accel).tolist(),
    }
    if dyn.externalstress is not None:
        state["p_eps"] = _jsonable(np.asarray(dyn.p_eps))
        state["force_eps"] = _jsonable(np.asarray(dyn.force_eps))
    return state


def restore_integrator_state(dyn: Any, state: dict[str, Any]) -> None:
    """Inverse of :func:`integrator_state` on a freshly made integrator for the same system."""
    if state.get("class") != type(dyn).__name__:
        raise ValueError(
            f"checkpoint integrator {state.get('class')!r} differs from {type(dyn).__name__!r}"
        )
    if state.get("temperature_K") is not None:
        dyn.set_temperature(float(state["temperature_K"]))
    dyn.nsteps = int(state.get("nsteps", 0))
    if state.get("rng") is not None:
        bg = dyn.rng.bit_generator
        if type(bg).__name__ != state.get("rng_bit_generator"):
            raise ValueError("checkpoint random-number generator type differs")
        bg.state = state["rng"]
    dyn.accel = np.asarray(state["accel"], dtype=float)
    if dyn.externalstress is not None:
        if "p_eps" not in state:
            raise ValueError("checkpoint has no cell momentum but the integrator is NpT")
        pe = np.asarray(state["p_eps"], dtype=float)
        fe = np.asarray(state["force_eps"], dtype=float)
        dyn.p_eps = float(pe) if pe.ndim == 0 else pe
        dyn.force_eps = float(fe) if fe.ndim == 0 else fe


def thermalize(atoms: Atoms, temperature_K: float, rng: np.random.Generator) -> None:
    """Maxwell–Boltzmann momenta at ``temperature_K`` with zero total momentum."""
    from ase.md.velocitydistribution import MaxwellBoltzmannDistribution

    MaxwellBoltzmannDistribution(
        atoms, temperature_K=float(temperature_K), rng=rng, force_temp=False
    )
    remove_com_momentum(atoms)


def step(dyn: Any, fix_com: bool = True) -> None:
    """One integrator step, then (optionally) remove the centre-of-mass momentum."""
    dyn.step()
    dyn.nsteps += 1
    if fix_com:
        remove_com_momentum(dyn.atoms)


__all__ = [
    "EV_PER_A3_IN_GPA",
    "atoms_from_state",
    "atoms_state",
    "expm_symmetric",
    "integrator_state",
    "make_integrator",
    "pressure_GPa",
    "remove_com_momentum",
    "restore_atoms",
    "restore_integrator_state",
    "step",
    "temperature_K",
    "thermalize",
]
