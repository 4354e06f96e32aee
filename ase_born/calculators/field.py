"""ASE calculator adding a homogeneous electric field to any force field: :class:`BornFieldCalculator`.

Physics (seed eqs. 1–2, CONVENTIONS.md "Field terms")::

    F_{k,a} = F0_{k,a} + Σ_b E_b Z*_{k,b a}          (eV/Å, E in V/Å)
    E       = E0 − Σ_{k,a,b} E_b Z*_{k,b a} u_{k,a}  = E0 − E·d
    P_b     = (1/Ω) Σ_{k,a} Z*_{k,b a} u_{k,a}       (e/Å²),   d = Ω P

with ``u_k = minimum-image(R_k − s0_k·h)`` the displacement from a reference structure
kept in fractional coordinates ``s0`` (so it follows the cell ``h`` under NpT).

The force field is composed, not subclassed (like ASE's mixing calculators, but ASE's
``SumCalculator`` is not used because it keeps only properties every child has and
would drop the Born charges).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from ase import Atoms
from ase.calculators.calculator import (
    Calculator,
    PropertyNotImplementedError,
    all_changes,
)

from ase_born import physics
from ase_born.calculators.base import bool_parameter, check_born_charges
from ase_born.conventions import (
    KEY_ASR_VIOLATION,
    KEY_BORN,
    KEY_DIPOLE,
    KEY_ENERGY,
    KEY_FIELD_ENERGY,
    KEY_FIELD_FORCES,
    KEY_FIELD_STRESS,
    KEY_FORCES,
    KEY_FREE_ENERGY,
    KEY_POLARIZATION,
    KEY_STRESS,
    validate_field,
)

FieldSpec = Any  # 3-vector in V/Å, or callable t -> 3-vector in V/Å

#: version tag of :meth:`BornFieldCalculator.get_state` dictionaries
STATE_FORMAT = "ase_born.BornFieldCalculator.state/1"

_MODES = ("direct", "conservative")


def check_mode_settings(mode: Any, born_update_every: Any) -> None:
    """The calculator's mode rules, also checked by the workflow configs before a run starts.

    Raises
    ------
    ValueError
        ``mode`` not in :data:`_MODES`, or ``"conservative"`` with ``born_update_every != 1``
        (the exact gradient needs Z*(R) at the current positions).
    """
    if mode not in _MODES:
        raise ValueError(f"mode must be one of {_MODES}, got {mode!r}")
    if mode == "conservative" and born_update_every != 1:
        raise ValueError(
            f"mode='conservative' requires born_update_every=1 (got {born_update_every}): the "
            "exact gradient needs Z*(R) at the current positions"
        )
_PARAMETER_NAMES = (
    "field",
    "mode",
    "asr",
    "born_update_every",
    "epsilon_inf",
    "allow_large_field",
)


def _cell_volume(atoms: Atoms) -> float | None:
    """Volume in Å³ of a non-singular 3D cell, else ``None``."""
    if atoms.cell.rank < 3:
        return None
    vol = abs(float(np.linalg.det(atoms.cell.array)))
    lengths = atoms.cell.lengths()
    if vol <= 1e-10 * float(np.prod(lengths)):
        return None
    return vol


class NoCellError(PropertyNotImplementedError, ValueError):
    """A property that needs a non-singular 3D cell (stress, polarization) asked of a
    structure without one: ASE's ``PropertyNotImplementedError`` (what its calculator
    contract expects) and a ``ValueError`` (bad input)."""


class BornFieldCalculator(Calculator):
    r"""Electric-field calculator: any ASE force field + a Born-charge model.

    Parameters
    ----------
    force_field : ase.calculators.calculator.BaseCalculator
        Zero-field force field (MACE, EMT, LJ, ...).  Must implement ``forces``;
        ``stress`` is reported when it implements ``stress``.
    born_model : BornChargeModel
        Anything with ``get_born_charges(atoms) -> (n_atoms, 3, 3)`` (e.g.
        :class:`~ase_born.calculators.born.FixedBornCharges`); conservative mode also
        needs its torch level (``supports_torch = True``).
    field : array_like, shape=(3,), or callable
        Electric field in **V/Å** (1 V/Å = 1e10 V/m; convert with
        :func:`ase_born.conventions.field_from_V_per_m`).  A callable ``field(t)`` with
        ``t`` in ASE time units returns the field at time ``t`` (see "Time-dependent
        fields").  Magnitudes above 1 V/Å raise unless ``allow_large_field=True``.
    reference : ase.Atoms, optional
        Structure with zero displacement.  Default: the first structure the
        calculator sees.  Stored in fractional coordinates (Cartesian when it has no
        3D cell); it is never re-picked, is part of :meth:`get_state`, and can be
        changed only with :meth:`set_reference`.
    mode : {"direct", "conservative"}
        ``"direct"`` (the seed's): forces ``F0 + Z*ᵀE`` with Z* held fixed at the
        current configuration, energy ``E0 − E·d``.  Exactly the gradient of that
        energy only when Z* does not depend on positions; with a position-dependent
        model the field force misses the ``(∂Z*/∂R)·u`` term and MD is not exactly
        energy conserving; likewise the field stress misses ``(∂Z*/∂ε)·u`` (with the
        shipped Equivar model a sizeable fraction of the field stress in a rattled cell),
        so direct-mode NpT under a field is approximate in the same way.  ``"conservative"``: forces and stress are exact gradients
        (torch autograd through ``born_model.get_born_charges_torch``) of the enthalpy
        ``H = E0 − Σ E_b Z*_{k,ba}(R) u_{k,a}``.  Its implied effective charges are
        ``∂d/∂R = Z* + (∂Z*/∂R)·u``, not Z*, and depend on the reference; the
        difference to the direct field force is reported as
        ``results["field_force_correction"]`` (eV/Å, shape ``(n_atoms, 3)``).  It
        exists for energy-conserving dynamics and tests, not as "the" physics.
    asr : bool
        Enforce the acoustic sum rule on the model output by subtracting the mean
        over atoms (default True); the pre-correction violation
        ``(1/9) Σ_ab |Σ_k Z*_{k,ab}|`` (e, the seed SI's per-structure metric) is
        ``results["asr_violation"]`` and the raw sum ``Σ_k Z*_k`` (3x3, e) is
        ``results["acoustic_sum"]``.  A model that corrects its own output (e.g. with
        its own ``asr=True``) shows no violation here.
    born_update_every : int
        Direct mode only: re-evaluate Z* every ``k`` new atomic configurations and
        reuse it in between (default 1 = every step).  The approximation: Z* lags the
        positions by up to ``k − 1`` steps, so forces, energy and P carry an error
        of order ``(k − 1) · dt · |dZ*/dt|``; fine when Z* varies slowly compared with
        the time step.  Conservative mode requires 1.
    epsilon_inf : array_like, shape=(3, 3), optional
        Electronic dielectric tensor.  Never changes forces, energy or stress; when
        given, ``polarization`` (and ``dipole = Ω P``) include the clamped-ion
        electronic term ``ε0 (ε∞ − 1) E`` (``results["electronic_polarization"]``);
        ``ionic_polarization``/``ionic_dipole`` never do.
    allow_large_field : bool
        Opt-in for fields above 1 V/Å (almost always V/m passed by mistake).
    dtype, device : str
        torch dtype and device of conservative mode (default ``"float64"``, ``"cpu"``).
    **kwargs
        Passed to :class:`ase.calculators.calculator.Calculator`.

    Results
    -------
    ``energy``, ``free_energy`` (eV), ``forces`` (eV/Å, ``(n, 3)``), ``stress`` (eV/Å³,
    Voigt, when the force field has it and the cell is 3D), ``born_effective_charges``
    (e, ``(n, 3, 3)``, after the ASR correction when ``asr``), ``polarization`` (e/Å²,
    ``(3,)``; needs a non-singular 3D cell, else :class:`NoCellError`, an ASE
    ``PropertyNotImplementedError`` and a ``ValueError`` — use ``dipole``),
    ``dipole`` (e·Å; ``Ω P`` with a 3D cell, the ionic dipole without one),
    ``field_energy``, ``field_forces``, ``field_stress`` (Voigt, 3D cells; in direct mode
    not the strain derivative of the field energy when Z* depends on the structure),
    ``energy_contributions`` ``(2,)``, ``free_energy_contributions`` ``(2,)``,
    ``forces_contributions`` ``(2, n, 3)``, ``stress_contributions`` ``(2, 6)`` in the
    order ``contribution_names = ("force_field", "field")``; also ``ionic_dipole``,
    ``ionic_polarization``, ``electronic_polarization``, ``displacements`` (Å),
    ``asr_violation`` (e), ``acoustic_sum`` (e, ``(3, 3)``), ``field`` (V/Å, the field used), ``time``, ``field_work``.

    Time-dependent fields
    ---------------------
    ``field`` may be a callable ``field(t) -> (3,)`` (V/Å) of the time ``t`` in ASE
    units (``ase.units.fs`` per fs); a step-indexed field is ``lambda t: f(round(t / dt))``.
    ``t`` is the calculator's clock :attr:`time` (0 at construction, restored by
    :meth:`set_state`), advanced in one of two ways:

    * ``calc.attach_dynamics(dyn)`` with an ASE ``MolecularDynamics`` object: every
      ``dyn.step()`` first makes sure the forces at the current positions and time
      ``t_n`` are known, then advances the clock by ``dyn.dt`` so the forces at the new
      positions use ``E(t_n + dt)``.  For integrators whose ``step`` takes the current
      forces (``VelocityVerlet``, ``Langevin``, ``Bussi``, ``Andersen``, ``NVTBerendsen``,
      ``NPTBerendsen``) those forces are passed in and the cache is cleared, so the
      field switches on even if the atoms do not move (e.g. starting at rest in the
      reference with ``E(0) = 0``).  Integrators whose ``step()`` takes no forces
      (Nosé–Hoover chains, ``NPT``) get the new time at the next new configuration.
      Equivalent to ``E(t)`` being evaluated at the time of the positions, as in
      LAMMPS' time-dependent ``fix efield``.
    * ``calc.set_time(t)`` in a hand-written loop (clears cached results).

    Field work and the conserved quantity
    -------------------------------------
    On every new configuration the calculator adds the work done by the field force
    (trapezoidal rule, ``ΔW = ½ Σ_k (f_k^old + f_k^new)·Δu_k``) to :attr:`field_work`
    (eV).  Along an NVE trajectory ``K + E0 − W`` is conserved in every mode, for
    constant and time-dependent fields and for position-dependent Z* (to the accuracy
    of the integrator); with a constant field and constant Z*, ``W = −ΔE_field`` exactly,
    so it is ``K + energy`` up to a constant (``energy`` includes ``−E·d``).  Reset with
    :meth:`reset_field_work`.  The accumulation assumes successive new configurations
    form a trajectory (finite-difference probing makes it meaningless).

    State (MD restarts)
    -------------------
    :meth:`get_state` returns a JSON-able dict with the parameters, the reference
    (fractional), the clock, the field work and the Born model's ``todict()``;
    :meth:`set_state` restores it (a callable field must be passed again), and
    :meth:`save_state` / :meth:`load_state` / :meth:`from_state` wrap them with a file.
    """

    name = "born_field"
    implemented_properties: ClassVar[list[str]] = [
        KEY_ENERGY,
        KEY_FREE_ENERGY,
        KEY_FORCES,
        KEY_STRESS,
        KEY_BORN,
        KEY_POLARIZATION,
        KEY_DIPOLE,
        KEY_FIELD_ENERGY,
        KEY_FIELD_FORCES,
        KEY_FIELD_STRESS,
        "energy_contributions",
        "free_energy_contributions",
        "forces_contributions",
        "stress_contributions",
        "ionic_dipole",
        "ionic_polarization",
        "electronic_polarization",
        "displacements",
        KEY_ASR_VIOLATION,
        "acoustic_sum",
        "field_force_correction",
        "field",
        "time",
        "field_work",
    ]
    default_parameters: ClassVar[dict[str, Any]] = {
        "field": (0.0, 0.0, 0.0),
        "mode": "direct",
        "asr": True,
        "born_update_every": 1,
        "epsilon_inf": None,
        "allow_large_field": False,
    }
    #: order of the ``*_contributions`` results
    contribution_names = ("force_field", "field")

    def __init__(
        self,
        force_field: Any,
        born_model: Any,
        field: FieldSpec = (0.0, 0.0, 0.0),
        reference: Atoms | None = None,
        mode: str = "direct",
        asr: bool = True,
        born_update_every: int = 1,
        epsilon_inf: Any = None,
        *,
        allow_large_field: bool = False,
        dtype: str = "float64",
        device: str = "cpu",
        **kwargs: Any,
    ) -> None:
        self._check_force_field(force_field)
        self._check_born_model(born_model)
        self._force_field = force_field
        self._born_model = born_model
        self.dtype = str(dtype)
        self.device = str(device)
        if self.dtype not in ("float64", "float32"):
            raise ValueError(f"dtype must be 'float64' or 'float32', got {dtype!r}")
        # reference and trajectory bookkeeping
        self._ref_numbers: np.ndarray | None = None
        self._ref_scaled: np.ndarray | None = None
        self._ref_positions: np.ndarray | None = None
        self._ref_cell: np.ndarray | None = None
        self._ref_pbc: np.ndarray | None = None
        self.time = 0.0
        self.field_work = 0.0
        self._n_updates = 0
        self._clear_trajectory_cache()
        super().__init__(
            field=field,
            mode=mode,
            asr=asr,
            born_update_every=born_update_every,
            epsilon_inf=epsilon_inf,
            allow_large_field=allow_large_field,
            **kwargs,
        )
        if reference is not None:
            self.set_reference(reference)

    # ------------------------------------------------------------------ composition
    @staticmethod
    def _check_force_field(ff: Any) -> None:
        if not hasattr(ff, "get_property") or not hasattr(ff, "implemented_properties"):
            raise TypeError(
                f"force_field must be an ASE calculator (with get_property and implemented_properties), "
                f"got {type(ff).__name__}"
            )
        if KEY_FORCES not in ff.implemented_properties:
            raise TypeError(
                f"force_field {type(ff).__name__} does not implement 'forces' "
                f"(implemented_properties = {list(ff.implemented_properties)})"
            )

    @staticmethod
    def _check_born_model(model: Any) -> None:
        if isinstance(model, np.ndarray) or not callable(getattr(model, "get_born_charges", None)):
            raise TypeError(
                f"born_model must provide get_born_charges(atoms) (see ase_born.calculators.base."
                f"BornChargeModel); got {type(model).__name__}. For fixed tensors use "
                "FixedBornCharges(array)"
            )

    @property
    def force_field(self) -> Any:
        """The wrapped zero-field ASE calculator."""
        return self._force_field

    @force_field.setter
    def force_field(self, ff: Any) -> None:
        self._check_force_field(ff)
        self._force_field = ff
        self.reset()

    @property
    def born_model(self) -> Any:
        """The Born-charge model."""
        return self._born_model

    @born_model.setter
    def born_model(self, model: Any) -> None:
        self._check_born_model(model)
        if self.parameters.get("mode") == "conservative" and not getattr(
            model, "supports_torch", False
        ):
            raise TypeError(
                f"{type(model).__name__} has no torch level; conservative mode needs one"
            )
        self._born_model = model
        self._z_raw = None
        self.reset()

    # ------------------------------------------------------------------ parameters
    def set(self, **kwargs: Any) -> dict[str, Any]:
        """Change parameters (``field``, ``mode``, ``asr``, ``born_update_every``,
        ``epsilon_inf``, ``allow_large_field``); any change clears the
        cached results so a new field never reuses stale forces.
        """
        unknown = sorted(set(kwargs) - set(_PARAMETER_NAMES) - {"parameters"})
        if unknown:
            raise TypeError(
                f"unknown BornFieldCalculator parameter(s) {unknown}; known: {list(_PARAMETER_NAMES)}"
            )
        params = dict(self.parameters) if self.parameters else dict(self.default_parameters)
        params.update(kwargs)
        clean: dict[str, Any] = {}
        allow = bool(params.get("allow_large_field", False))
        if "allow_large_field" in kwargs:
            allow_kw = kwargs["allow_large_field"]
            clean["allow_large_field"] = bool_parameter("allow_large_field", allow_kw)
        if "field" in kwargs or "allow_large_field" in kwargs:
            f = params["field"]
            if callable(f):
                clean["field"] = f
            else:
                clean["field"] = tuple(float(x) for x in validate_field(f, allow_large_field=allow))
        if "mode" in kwargs:
            mode = kwargs["mode"]  # its value is checked with born_update_every below
            if mode == "conservative" and not getattr(self._born_model, "supports_torch", False):
                raise TypeError(
                    f"mode='conservative' needs a differentiable torch level, but "
                    f"{type(self._born_model).__name__}.supports_torch is False"
                )
            clean["mode"] = mode
        if "asr" in kwargs:
            clean["asr"] = bool_parameter("asr", kwargs["asr"])
        if "born_update_every" in kwargs:
            k = kwargs["born_update_every"]
            if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
                raise ValueError(f"born_update_every must be an integer >= 1, got {k!r}")
            clean["born_update_every"] = int(k)
        if "epsilon_inf" in kwargs:
            eps = kwargs["epsilon_inf"]
            if eps is not None:
                arr = np.asarray(eps, dtype=float)
                if arr.shape != (3, 3) or not np.all(np.isfinite(arr)):
                    raise ValueError(
                        f"epsilon_inf must be a finite (3, 3) array, got shape {arr.shape}: {eps!r}"
                    )
                eps = tuple(tuple(float(x) for x in row) for row in arr)
            clean["epsilon_inf"] = eps
        if "parameters" in kwargs:
            clean["parameters"] = kwargs["parameters"]
        check_mode_settings(
            clean.get("mode", params.get("mode")),
            clean.get("born_update_every", params.get("born_update_every")),
        )
        changed = super().set(**clean)
        if changed:
            self.reset()
        return changed

    def todict(self, skip_default: bool = True) -> dict[str, Any]:
        """Parameters as a JSON-able dict (a callable field appears as a string)."""
        out: dict[str, Any] = {}
        for key, value in self.parameters.items():
            if key == "field" and callable(value):
                value = f"<callable {getattr(value, '__name__', type(value).__name__)}>"
            elif isinstance(value, tuple):
                value = np.asarray(value, dtype=float).tolist()
            if skip_default and key in self.default_parameters:
                default = self.default_parameters[key]
                if isinstance(default, tuple):
                    default = list(default)
                if value == default:
                    continue
            out[key] = value
        return out

    def get_field(self, time: float | None = None) -> np.ndarray:
        """Field in V/Å at ``time`` (default: the calculator's clock), ``shape=(3,)``."""
        f = self.parameters["field"]
        allow = bool(self.parameters.get("allow_large_field", False))
        if callable(f):
            t = self.time if time is None else float(time)
            return validate_field(f(t), allow_large_field=allow, name=f"field({t!r})")
        return np.asarray(f, dtype=float)

    def set_time(self, time: float) -> None:
        """Set the clock (ASE time units) used by a callable field; clears cached results."""
        self.time = float(time)
        self.reset()

    def attach_dynamics(self, dyn: Any) -> None:
        """Drive the clock of a callable field from an ASE ``MolecularDynamics`` object.

        Wraps ``dyn.step`` (see "Time-dependent fields" in the class docstring): before
        each step the forces at the current positions and time are ensured, then the
        clock advances by ``dyn.dt``.  The clock continues from its current value
        (e.g. one restored with :meth:`set_state`).  Attaching again (this or another
        calculator) replaces the earlier wrapper: the clock never advances twice per step.
        """
        import inspect

        orig_step = getattr(dyn.step, "_ase_born_unwrapped", dyn.step)
        try:
            takes_forces = "forces" in inspect.signature(orig_step).parameters
        except (TypeError, ValueError):  # pragma: no cover - builtins
            takes_forces = False
        calc = self

        def step(*args: Any, **kwargs: Any) -> Any:
            forces = None
            if not args and "forces" not in kwargs:
                forces = dyn.atoms.get_forces(md=True)  # at t_n (cached normally)
            calc.time += float(dyn.dt)
            if takes_forces and forces is not None:
                calc.reset()
                return orig_step(forces=forces, **kwargs)
            return orig_step(*args, **kwargs)

        step._ase_born_unwrapped = orig_step  # type: ignore[attr-defined]
        dyn.step = step

    def reset_field_work(self) -> None:
        """Zero the accumulated field work (eV)."""
        self.field_work = 0.0

    # ------------------------------------------------------------------ reference
    @property
    def reference(self) -> Atoms | None:
        """The zero-displacement structure (a copy), or ``None`` before the first call."""
        if self._ref_numbers is None:
            return None
        if self._ref_scaled is not None:
            atoms = Atoms(numbers=self._ref_numbers, cell=self._ref_cell, pbc=self._ref_pbc)
            atoms.set_scaled_positions(self._ref_scaled)
            return atoms
        return Atoms(numbers=self._ref_numbers, positions=self._ref_positions, pbc=self._ref_pbc)

    def set_reference(self, reference: Atoms | None) -> None:
        """Set (or with ``None`` forget, to re-pick on the next call) the reference.

        The fractional coordinates ``s0`` of ``reference`` in its own cell are kept;
        a structure without a non-singular 3D cell is kept in Cartesian coordinates
        (dipole only).  Clears cached results and the trajectory bookkeeping.
        """
        if reference is None:
            self._ref_numbers = self._ref_scaled = self._ref_positions = None
            self._ref_cell = self._ref_pbc = None
        else:
            if not isinstance(reference, Atoms):
                raise TypeError(f"reference must be an ase.Atoms, got {type(reference).__name__}")
            self._ref_numbers = reference.numbers.copy()
            self._ref_pbc = reference.pbc.copy()
            self._ref_positions = reference.positions.copy()
            if _cell_volume(reference) is not None:
                self._ref_cell = reference.cell.array.copy()
                self._ref_scaled = reference.get_scaled_positions(wrap=False)
            else:
                self._ref_cell = None
                self._ref_scaled = None
        self._clear_trajectory_cache()
        self.reset()

    def _check_reference(self, atoms: Atoms) -> None:
        ref = self._ref_numbers
        assert ref is not None
        if len(ref) != len(atoms):
            raise ValueError(
                f"reference structure has {len(ref)} atoms but the structure has {len(atoms)}; "
                "use calc.set_reference(...) for a different system"
            )
        if not np.array_equal(ref, atoms.numbers):
            bad = int(np.nonzero(ref != atoms.numbers)[0][0])
            raise ValueError(
                f"reference species order differs from the structure's: atom {bad} is "
                f"Z={int(ref[bad])} in the reference and Z={int(atoms.numbers[bad])} in the structure"
            )

    # ------------------------------------------------------------------ cache
    def _clear_trajectory_cache(self) -> None:
        self._last_positions: np.ndarray | None = None
        self._last_cell: np.ndarray | None = None
        self._last_u: np.ndarray | None = None
        self._last_f_field: np.ndarray | None = None
        self._z_raw: np.ndarray | None = None
        self._z_update = 0
        self._z_pbc: np.ndarray | None = None
        # (positions, cell) of the last configuration of a restored state (set_state)
        self._restored_config: tuple[np.ndarray, np.ndarray] | None = None

    # ------------------------------------------------------------------ state
    def get_state(self) -> dict[str, Any]:
        """JSON-able snapshot of the reference, parameters, clock and field work.

        Returns
        -------
        dict
            Keys ``format``, ``parameters`` (a callable field is stored as ``None``
            with ``field_is_callable = True``), ``reference`` (``numbers``,
            ``scaled_positions`` or ``None``, ``positions``, ``cell``, ``pbc``, or
            ``None`` if not picked yet), ``time``, ``field_work``, ``n_updates``,
            ``born_cache`` (direct mode: the Z* in use, the update at which it was computed and
            its ``pbc``, so a resumed run with ``born_update_every > 1`` refreshes Z* at the
            same steps as an uninterrupted one; ``None`` when there is none),
            ``last_config`` (positions and cell of the last computed configuration: a restored
            calculator counts a structure that differs from it as a new configuration, so
            its Z* is refreshed on schedule; ``None`` before the first calculation),
            ``born_model`` (its ``todict()``, informational), ``force_field`` (class name).
        """
        params = dict(self.parameters)
        f = params["field"]
        params["field_is_callable"] = callable(f)
        params["field"] = None if callable(f) else [float(x) for x in f]
        if params["epsilon_inf"] is not None:
            params["epsilon_inf"] = np.asarray(params["epsilon_inf"], dtype=float).tolist()
        ref = None
        if self._ref_numbers is not None:
            ref = {
                "numbers": self._ref_numbers.tolist(),
                "scaled_positions": None if self._ref_scaled is None else self._ref_scaled.tolist(),
                "positions": self._ref_positions.tolist(),
                "cell": None if self._ref_cell is None else self._ref_cell.tolist(),
                "pbc": self._ref_pbc.tolist(),
            }
        todict = getattr(self._born_model, "todict", None)
        return {
            "format": STATE_FORMAT,
            "parameters": params,
            "reference": ref,
            "time": float(self.time),
            "field_work": float(self.field_work),
            "n_updates": int(self._n_updates),
            "last_config": self._last_config_state(),
            "born_cache": None
            if self._z_raw is None
            else {
                "z_raw": self._z_raw.tolist(),
                "z_update": int(self._z_update),
                "pbc": self._z_pbc.tolist(),
            },
            "born_model": todict()
            if callable(todict)
            else {"class": type(self._born_model).__name__},
            "force_field": type(self._force_field).__name__,
        }

    def set_state(self, state: dict[str, Any], *, field: FieldSpec | None = None) -> None:
        """Restore :meth:`get_state` output (reference, parameters, clock, work).

        Parameters
        ----------
        state : dict
            From :meth:`get_state` (possibly through JSON).
        field : array_like or callable, optional
            Field to use instead of the stored one; required when the state was
            saved with a callable field and this calculator does not already hold a
            callable field.
        """
        if state.get("format") != STATE_FORMAT:
            raise ValueError(
                f"not a BornFieldCalculator state (format {state.get('format')!r}, expected {STATE_FORMAT!r})"
            )
        p = dict(state["parameters"])
        was_callable = p.pop("field_is_callable", False)
        if field is not None:
            p["field"] = field
        elif was_callable:
            if not callable(self.parameters["field"]):
                raise ValueError(
                    "the saved state used a time-dependent (callable) field, which cannot be stored; "
                    "pass it again: calc.set_state(state, field=my_field)"
                )
            p["field"] = self.parameters["field"]
        # order matters: the opt-in before the field, mode after born_update_every
        ordered = {
            k: p[k]
            for k in (
                "allow_large_field",
                "born_update_every",
                "field",
                "mode",
                "asr",
                "epsilon_inf",
            )
            if k in p
        }
        self.set(**ordered)
        ref = state.get("reference")
        if ref is None:
            self.set_reference(None)
        else:
            atoms = Atoms(numbers=ref["numbers"], positions=ref["positions"], pbc=ref["pbc"])
            if ref.get("cell") is not None:
                atoms.cell = ref["cell"]
                if ref.get("scaled_positions") is not None:
                    atoms.set_scaled_positions(np.asarray(ref["scaled_positions"], dtype=float))
            self.set_reference(atoms)
            # the stored arrays themselves: scaled -> Cartesian -> scaled is 1 ulp off
            self._ref_positions = np.asarray(ref["positions"], dtype=float).reshape(-1, 3)
            if self._ref_scaled is not None and ref.get("scaled_positions") is not None:
                self._ref_scaled = np.asarray(ref["scaled_positions"], dtype=float).reshape(-1, 3)
        self.time = float(state.get("time", 0.0))
        self.field_work = float(state.get("field_work", 0.0))
        self._n_updates = int(state.get("n_updates", 0))
        self._z_update = self._n_updates
        last = state.get("last_config")
        self._restored_config = None if last is None else (
            np.asarray(last["positions"], dtype=float).reshape(-1, 3),
            np.asarray(last["cell"], dtype=float).reshape(3, 3),
        )
        cache = state.get("born_cache")
        if cache is not None and self.parameters["mode"] == "direct":
            self._z_raw = np.asarray(cache["z_raw"], dtype=float).reshape(-1, 3, 3)
            self._z_update = int(cache["z_update"])
            self._z_pbc = np.asarray(cache["pbc"], dtype=bool)

    def _last_config_state(self) -> dict | None:
        """The last calculated structure, or the restored one when nothing was calculated
        since :meth:`set_state` (a state saved right after a restore keeps it)."""
        if self._last_positions is not None:
            pos, cell = self._last_positions, self._last_cell
        elif self._restored_config is not None:
            pos, cell = self._restored_config
        else:
            return None
        return {"positions": pos.tolist(), "cell": cell.tolist()}

    def save_state(self, path: str | os.PathLike) -> None:
        """Write :meth:`get_state` as JSON to ``path`` (atomically)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
        tmp.write_text(json.dumps(self.get_state(), indent=1))
        os.replace(tmp, path)

    def load_state(self, path: str | os.PathLike, *, field: FieldSpec | None = None) -> None:
        """Read a JSON state written by :meth:`save_state` and :meth:`set_state` it."""
        self.set_state(json.loads(Path(path).read_text()), field=field)

    @classmethod
    def from_state(
        cls,
        state: dict[str, Any] | str | os.PathLike,
        force_field: Any,
        born_model: Any,
        *,
        field: FieldSpec | None = None,
        **kwargs: Any,
    ) -> BornFieldCalculator:
        """New calculator from a state dict or file (force field and model given anew)."""
        if not isinstance(state, dict):
            state = json.loads(Path(state).read_text())
        p = state.get("parameters", {})
        calc = cls(
            force_field,
            born_model,
            field=field if field is not None else (p.get("field") or (0.0, 0.0, 0.0)),
            allow_large_field=bool(p.get("allow_large_field", False)),
            **kwargs,
        )
        calc.set_state(state, field=field)
        return calc

    # ------------------------------------------------------------------ calculation
    def calculate(
        self,
        atoms: Atoms | None = None,
        properties: list[str] | tuple[str, ...] = ("energy",),
        system_changes: list[str] = all_changes,
    ) -> None:
        super().calculate(atoms, properties, system_changes)
        atoms = self.atoms
        n = len(atoms)
        props = set(properties)
        want_stress = bool(props & {KEY_STRESS, "stress_contributions"})

        if self._ref_numbers is None:
            self.set_reference(atoms)
            self.atoms = atoms  # set_reference() cleared it
        self._check_reference(atoms)

        volume = _cell_volume(atoms)
        if props & {KEY_POLARIZATION, "ionic_polarization"} and volume is None:
            raise NoCellError(
                "polarization needs a non-singular 3D cell (Ω > 0); this structure has "
                f"cell rank {atoms.cell.rank} / volume {atoms.cell.volume:.3g} Å³. "
                "Only the dipole ('dipole', e·Å) is defined without a cell"
            )
        if want_stress and volume is None:
            raise NoCellError("stress needs a non-singular 3D cell")
        if want_stress and KEY_STRESS not in self._force_field.implemented_properties:
            raise PropertyNotImplementedError(
                f"force field {type(self._force_field).__name__} does not implement 'stress'"
            )

        # ---- trajectory bookkeeping: clock and Z* refresh count
        new_config = (
            self._last_positions is None
            or self._last_positions.shape != atoms.positions.shape
            or not np.array_equal(self._last_positions, atoms.positions)
            or not np.array_equal(self._last_cell, atoms.cell.array)
        )
        first_config = (
            self._last_positions is None or self._last_positions.shape != atoms.positions.shape
        )
        # committed to self only once the force field and the Born model have answered: a
        # call that raises (and its retry at the same structure) must not count twice
        n_updates = self._n_updates
        if new_config and not first_config:
            n_updates += 1
        elif first_config and self._restored_config is not None:
            # the first structure after set_state: a new configuration of the saved trajectory
            # unless it is the saved one (an exact resume), e.g. displaced after the restore
            pos, cell = self._restored_config
            if pos.shape != atoms.positions.shape or not (
                np.array_equal(pos, atoms.positions) and np.array_equal(cell, atoms.cell.array)
            ):
                n_updates += 1
        field = self.get_field()

        # ---- force field (cached by the force field itself)
        ff = self._force_field
        e0 = float(ff.get_property(KEY_ENERGY, atoms))
        f0 = np.asarray(ff.get_property(KEY_FORCES, atoms), dtype=float)
        if f0.shape != (n, 3):
            raise ValueError(f"force field returned forces of shape {f0.shape}; expected ({n}, 3)")
        try:
            free0 = float(ff.get_property(KEY_FREE_ENERGY, atoms))
        except PropertyNotImplementedError:
            free0 = e0
        s0 = None
        if want_stress:
            s0 = np.asarray(ff.get_property(KEY_STRESS, atoms), dtype=float)
            if s0.shape == (3, 3):
                s0 = physics.stress_full_to_voigt(s0)

        # ---- displacements from the reference
        shifts = None
        if volume is not None and self._ref_scaled is not None:
            u, shifts = physics.minimum_image_displacements(
                atoms.positions, atoms.cell.array, self._ref_scaled, atoms.pbc
            )
        elif volume is None and self._ref_scaled is None:
            if np.any(atoms.pbc):
                # the minimum image along the periodic directions needs their lattice vectors
                # in a 3D cell; without one, a wrapped atom would jump by a lattice vector
                raise ValueError(
                    f"periodic directions {atoms.pbc.tolist()} without a non-singular 3D cell: give "
                    "the structure (and its reference) a full cell, e.g. a slab's vacuum c vector "
                    "with pbc=[True, True, False]"
                )
            u = atoms.positions - self._ref_positions
        else:
            raise ValueError(
                "the reference and the structure must both have a non-singular 3D cell or both have "
                f"none (reference cell: {'yes' if self._ref_scaled is not None else 'no'}, "
                f"structure cell: {'yes' if volume is not None else 'no'})"
            )

        # ---- field terms
        if self.parameters["mode"] == "conservative":
            z_raw, z, f_field, s_field, correction = self._conservative_terms(
                atoms, field, u, shifts, volume
            )
            self._z_raw = None  # direct mode's cached Z* no longer belongs to this configuration
        else:
            z_raw = self._direct_born(atoms, n_updates)
            z = physics.asr_project(z_raw) if self.parameters["asr"] else z_raw
            f_field = physics.field_forces(z, field)
            s_field = physics.field_stress(f_field, u, volume) if volume is not None else None
            correction = np.zeros_like(f_field)
        d_ion = physics.ionic_dipole(z, u)
        e_field = float(physics.field_energy(field, d_ion))

        self._n_updates = n_updates
        self._restored_config = None

        # ---- field work (trapezoid along the trajectory)
        if new_config and not first_config and self._last_u is not None:
            du = u - self._last_u
            if volume is not None:  # one step moves far less than half a cell: rounding is exact
                frac = np.linalg.solve(atoms.cell.array.T, du.T).T
                du = du - (np.rint(frac) * atoms.pbc) @ atoms.cell.array
            self.field_work += float(0.5 * np.sum((self._last_f_field + f_field) * du))
        if new_config:
            self._last_positions = atoms.positions.copy()
            self._last_cell = atoms.cell.array.copy()
            self._last_u = u
            self._last_f_field = f_field

        # ---- results
        eps = self.parameters["epsilon_inf"]
        p_el = physics.electronic_polarization(field, eps) if eps is not None else np.zeros(3)
        r = self.results
        r[KEY_ENERGY] = e0 + e_field
        r[KEY_FREE_ENERGY] = free0 + e_field
        r[KEY_FORCES] = f0 + f_field
        r[KEY_FIELD_ENERGY] = e_field
        r[KEY_FIELD_FORCES] = f_field
        r["energy_contributions"] = np.array([e0, e_field])
        r["free_energy_contributions"] = np.array([free0, e_field])
        r["forces_contributions"] = np.stack([f0, f_field])
        r[KEY_BORN] = z
        r[KEY_ASR_VIOLATION] = physics.asr_violation(z_raw)
        r["acoustic_sum"] = physics.acoustic_sum(z_raw)
        r["ionic_dipole"] = d_ion
        r["electronic_polarization"] = p_el
        r["displacements"] = u
        r["field_force_correction"] = correction
        r["field"] = field
        r["time"] = float(self.time)
        r["field_work"] = float(self.field_work)
        if volume is not None:
            p_ion = d_ion / volume
            r["ionic_polarization"] = p_ion
            r[KEY_POLARIZATION] = p_ion + p_el
            r[KEY_DIPOLE] = d_ion + volume * p_el  # without ε∞ exactly the ionic dipole (no Ω/Ω rounding)
            r[KEY_FIELD_STRESS] = s_field
        else:
            r[KEY_DIPOLE] = d_ion
        if s0 is not None:
            r[KEY_STRESS] = s0 + s_field
            r["stress_contributions"] = np.stack([s0, s_field])

    def _direct_born(self, atoms: Atoms, n_updates: int) -> np.ndarray:
        """Raw Z* for direct mode, refreshed every ``born_update_every`` new configurations
        (``n_updates``: this configuration's count; and whenever the periodic directions
        change: the model's neighbours depend on them)."""
        k = self.parameters["born_update_every"]
        n = len(atoms)
        stale = (
            self._z_raw is None
            or self._z_raw.shape[0] != n
            or not np.array_equal(self._z_pbc, atoms.pbc)
            or n_updates - self._z_update >= k  # also after set(born_update_every=...)
        )
        if stale:
            src = f"born model {type(self._born_model).__name__}"
            self._z_raw = check_born_charges(self._born_model.get_born_charges(atoms), n, src)
            self._z_update = n_updates
            self._z_pbc = atoms.pbc.copy()
        return self._z_raw

    def _conservative_terms(
        self,
        atoms: Atoms,
        field: np.ndarray,
        u_np: np.ndarray,
        shifts: np.ndarray | None,
        volume: float | None,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None, np.ndarray]:
        """Exact gradients of ``H_field = −Σ E_b Z*_{k,ba}(R) u_{k,a}`` by autograd."""
        import torch

        dtype = getattr(torch, self.dtype)
        dev = torch.device(self.device)
        pos = torch.tensor(atoms.positions, dtype=dtype, device=dev, requires_grad=True)
        cell = torch.tensor(atoms.cell.array, dtype=dtype, device=dev)
        inputs = [pos]
        if volume is not None:
            strain = torch.zeros((3, 3), dtype=dtype, device=dev, requires_grad=True)
            inputs.append(strain)
            defo = torch.eye(3, dtype=dtype, device=dev) + 0.5 * (strain + strain.T)
            pos_s = pos @ defo
            cell_s = cell @ defo
            u = physics.displacements_with_shifts(pos_s, cell_s, self._ref_scaled, shifts)
        else:
            pos_s, cell_s = pos, cell
            u = pos - torch.as_tensor(self._ref_positions, dtype=dtype, device=dev)
        src = f"born model {type(self._born_model).__name__} (torch level)"
        z_t = self._born_model.get_born_charges_torch(atoms, pos_s, cell_s)
        if not isinstance(z_t, torch.Tensor):
            raise TypeError(f"{src} must return a torch.Tensor, got {type(z_t).__name__}")
        z_raw = check_born_charges(z_t.detach().cpu().numpy(), len(atoms), src)
        z_used = physics.asr_project(z_t) if self.parameters["asr"] else z_t
        e_t = torch.as_tensor(field, dtype=dtype, device=dev)
        h_field = physics.field_energy(e_t, physics.ionic_dipole(z_used, u))
        grads = torch.autograd.grad(h_field, inputs, allow_unused=True)
        g_pos = grads[0] if grads[0] is not None else torch.zeros_like(pos)
        f_field = -g_pos.detach().cpu().numpy().astype(float)
        s_field = None
        if volume is not None:
            g_strain = grads[1] if grads[1] is not None else torch.zeros((3, 3), dtype=dtype)
            s_full = g_strain.detach().cpu().numpy().astype(float) / volume
            s_field = physics.stress_full_to_voigt(0.5 * (s_full + s_full.T))
        z = z_used.detach().cpu().numpy().astype(float)
        correction = f_field - physics.field_forces(z, field)
        return z_raw, z, f_field, s_field, correction

    def __repr__(self) -> str:
        f = self.parameters["field"]
        fs = "callable" if callable(f) else f"{list(f)} V/Å"
        return (
            f"BornFieldCalculator(force_field={type(self._force_field).__name__}, "
            f"born_model={self._born_model!r}, field={fs}, mode={self.parameters['mode']!r}, "
            f"asr={self.parameters['asr']})"
        )
