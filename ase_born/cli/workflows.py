"""`ase-born heat | dielectric | pe-curve`: the finite-temperature and static-field workflows.

Thin layer: parse the options into the workflow's config dataclass (CPU-sized defaults, then
``--paper`` preset, then the options given explicitly), load the models, call
``ase_born.workflows.run_*``, print the report.  Everything (outputs, resume, checks) lives in
:mod:`ase_born.workflows`.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

import numpy as np

from ase_born.cli._errors import field_magnitude, field_magnitude_or_zero, reports_errors

_EPILOG_DIELECTRIC = """\
CPU-sized default (the README main job: ~6 min on 2 cores with the default models, see the
README): the 40-atom (1,1,2) Pnma cell, 300 K, 2 fs steps, 300 equilibration + 4 x 600
production steps (E = 0 and E = 1e8 V/m along x, y, z, correlated sampling), fluctuation and
finite-field estimators, 0 K harmonic tensor (phonopy) and static linearity check on the
relaxed 20-atom cell.
Paper-sized (--paper, for a GPU): 640-atom (4,2,4) cell, 300-1500 K every 200 K, 1 fs,
20 ps equilibration, 100 ps per field run, E = 5e7 V/m (the seed's) with +-E.
Resume: run the same command again (same --out); --overwrite starts afresh."""

_EPILOG_HEAT = """\
CPU-sized default: 80-atom (2,1,2) Pnma cell, 300 -> 1800 K in 3000 steps of 2 fs (250 K/ps, a
quick look). Paper-sized (--paper, GPU): 640-atom (4,2,4) cell, 300 -> 1800 K at 1 K/ps
(750 000 steps); repeat with --supercell 4,4,4 for the 1280-atom cell.
Supercell axes (Pnma setting): a (x) = sqrt2 a_p, b (y, long axis) = 2 a_p, c (z) = sqrt2 a_p.
Any ABX3 perovskite (B and X from the composition, e.g. CaZrO3 via --structure).
Resume: run the same command again (same --out); a finished run is analysed again when only
--tilt-threshold-deg / --symprec change. One process per --out at a time.
Analysis alone (finished or running run, other windows): ase-born heat --analyze --out DIR
[--window-K 100]."""

_EPILOG_PE = """\
Default: 20-atom relaxed Pnma cell, fields 0 ... 1e8 V/m in 1e7 V/m steps along x, y, z (seed
Fig. 3), positions relaxed at fixed cell (--relax-cell to relax the cell too).
Resume: run the same command again (same --out)."""


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``heat``, ``dielectric`` and ``pe-curve`` subcommands."""
    fmt = argparse.RawDescriptionHelpFormatter
    p = sub.add_parser(
        "heat",
        help="NpT heating run: lattice parameters, octahedral tilts, phases (seed Fig. 4)",
        description="NpT heating run of a perovskite with lattice parameters, octahedral tilt "
        "order parameters, phase identification and transition temperatures (seed Fig. 4).",
        epilog=_EPILOG_HEAT,
        formatter_class=fmt,
    )
    _common(p, "runs/heat")
    p.add_argument(
        "--temperatures", help="ramp START:END in K, e.g. 300:1800 (1800:300 cools; one value: isothermal)"
    )
    p.add_argument("--heating-rate-K-per-ps", type=float, help="heating rate (overrides --steps)")
    p.add_argument("--steps", type=int, help="steps of the ramp (default 3000)")
    p.add_argument(
        "--equilibration-steps", type=int, help="steps at the first temperature (default 200)"
    )
    _timestep_option(p)
    p.add_argument(
        "--field-V-per-m",
        type=field_magnitude_or_zero,
        help="constant field magnitude in V/m (needs --field-direction)",
    )
    p.add_argument("--field-direction", help="x, y, z, -x, ... or three numbers '1,1,0'")
    p.add_argument("--pressure-GPa", type=float, help=_PRESSURE_HELP)
    p.add_argument("--log-every", type=int, help="steps between log rows (default 10)")
    p.add_argument("--traj-every", type=int, help="steps between trajectory frames (default 100)")
    p.add_argument("--checkpoint-every", type=int, help="steps between checkpoints (default 500)")
    p.add_argument(
        "--window-K",
        type=float,
        help="largest temperature window of the phase analysis; the ramp is split evenly "
        "(default 50)",
    )
    p.add_argument(
        "--tilt-threshold-deg", type=float, help="tilt amplitude counted as tilted (default 2)"
    )
    p.add_argument(
        "--symprec", type=float, help="spglib tolerance for averaged structures, Å (default 0.1)"
    )
    p.add_argument(
        "--analyze",
        action="store_true",
        help="analyse the run in --out again, finished or partial (also while it runs), without "
        "MD or models: its own settings, with --window-K / --tilt-threshold-deg / --symprec if "
        "given; other options are refused",
    )
    p.set_defaults(func=_heat)

    p = sub.add_parser(
        "dielectric",
        help="dielectric tensor vs T from field MD + 0 K harmonic value (seed Fig. 5)",
        description="Dielectric tensor vs temperature from finite-field and fluctuation MD, with "
        "the 0 K harmonic value (seed Fig. 5). Prints the 3x3 tensors with statistical errors.",
        epilog=_EPILOG_DIELECTRIC,
        formatter_class=fmt,
    )
    _common(p, "runs/dielectric")
    p.add_argument("--temperatures", help="K: '300', '300,600' or START:STOP:STEP (default 300)")
    p.add_argument("--steps", type=int, help="production steps per field run (default 600)")
    p.add_argument(
        "--equilibration-steps", type=int, help="equilibration steps per temperature (default 300)"
    )
    p.add_argument(
        "--discard-steps",
        type=int,
        help="switch-on steps not used by the finite-field estimator (default 60)",
    )
    _timestep_option(p)
    p.add_argument(
        "--field-V-per-m",
        type=field_magnitude,
        help="field magnitude of the x, y, z runs in V/m (default 1e8)",
    )
    p.add_argument(
        "--plus-minus",
        action="store_true",
        default=None,
        help="also run -E (cancels even orders, checks linearity)",
    )
    p.add_argument(
        "--independent",
        action="store_true",
        default=None,
        help="independent noise per run (no correlated sampling)",
    )
    p.add_argument("--ensemble", choices=("npt", "nvt"), help="default npt")
    p.add_argument("--pressure-GPa", type=float, help=_PRESSURE_HELP)
    p.add_argument(
        "--epsilon-inf",
        help="ε∞: 1, 3 or 9 comma-separated numbers (total ε = ε∞ + ε_ion; default: the value "
        "shipped with the default Born model when that model is used, else the Born model's own "
        "epsilon_inf if it has one (e.g. a phonopy BORN file), else none)",
    )
    p.add_argument(
        "--ionic-only", action="store_true", default=None, help="report ε_ion only (no ε∞ added, whatever --epsilon-inf or the Born model gives; no warning)"
    )
    p.add_argument(
        "--no-harmonic", action="store_true", default=None, help="skip the 0 K harmonic tensor"
    )
    p.add_argument(
        "--no-static-check",
        action="store_true",
        default=None,
        help="skip the 0 K static linearity check",
    )
    p.add_argument("--sample-every", type=int, help="steps between P samples (default 1)")
    p.add_argument("--n-blocks", type=int, help="blocks for error bars (default 10)")
    p.add_argument("--traj-every", type=int, help="steps between trajectory frames (default 50)")
    p.add_argument("--checkpoint-every", type=int, help="steps between checkpoints (default 100)")
    p.set_defaults(func=_dielectric)

    p = sub.add_parser(
        "pe-curve",
        help="static polarization vs field by relaxation (seed Fig. 3)",
        description="Static polarization vs field by relaxation in the field: P(E) per "
        "direction, static dielectric tensor, onset of nonlinearity (seed Fig. 3).",
        epilog=_EPILOG_PE,
        formatter_class=fmt,
    )
    _common(p, "runs/pe_curve", md_options=False)
    p.add_argument("--field-V-per-m", type=field_magnitude, help="largest field in V/m (default 1e8)")
    p.add_argument(
        "--n-fields", type=int, help="number of fields from 0 to the largest (default 11)"
    )
    p.add_argument(
        "--fields-V-per-m", help="explicit comma-separated fields in V/m (overrides the two above)"
    )
    p.add_argument("--directions", help="comma-separated field directions, each x, y, z, -x, ... or a "
                   "vector with spaces ('1 1 0'); default x,y,z")
    p.add_argument("--steps", type=int, help="maximum optimizer steps per field (default 1000)")
    p.add_argument("--fmax-eV-per-A", type=float, help="relaxation threshold (default 1e-5)")
    p.add_argument(
        "--relax-cell",
        action="store_true",
        default=None,
        help="relax the cell under the field stress too",
    )
    p.add_argument("--pressure-GPa", type=float, help=_PRESSURE_HELP)
    p.add_argument(
        "--no-harmonic", action="store_true", default=None, help="skip the 0 K harmonic comparison"
    )
    p.set_defaults(func=_pe_curve)


def _common(p: argparse.ArgumentParser, out: str, md_options: bool = True) -> None:
    g = p.add_argument_group("models and run")
    g.add_argument(
        "--force-field", help="MACE model file, or 'standin' (default: the embedded default models)"
    )
    g.add_argument(
        "--born-model",
        help="Equivar model file, extxyz frame with Z*, phonopy BORN, or 'standin' (default: embedded)",
    )
    g.add_argument(
        "--dtype",
        choices=("float64", "float32"),
        default="float64",
        help="model precision (default float64)",
    )
    g.add_argument(
        "--device", default="cpu", help="torch device of the models, e.g. cpu, cuda (default cpu)"
    )
    g.add_argument("--structure", help="starting structure file (default: 20-atom Pnma CaTiO3)")
    g.add_argument("--supercell", help="repeat of the structure, e.g. 2,1,2")
    g.add_argument(
        "--no-relax",
        action="store_true",
        default=None,
        help="use the structure as given (no relaxation)",
    )
    g.add_argument("--out", default=out, help=f"output directory (default {out})")
    g.add_argument("--overwrite", action="store_true", help="discard an existing run in --out")
    g.add_argument(
        "--paper", action="store_true", help="paper-sized preset (GPU); explicit options still win"
    )
    g.add_argument("--no-progress", action="store_true", help="no progress bars")
    if md_options:
        g.add_argument("--seed", type=int, help="random seed (default 0)")
        g.add_argument(
            "--mode", choices=("direct", "conservative"), help="field force mode (default direct)"
        )
        g.add_argument(
            "--born-update-every", type=int, help="re-evaluate Z* every N steps (default 1)"
        )


def _timestep_option(p: argparse.ArgumentParser) -> None:
    """``--timestep-fs`` (alias ``--timestep``) of the MD workflows."""
    p.add_argument(
        "--timestep-fs",
        "--timestep",
        dest="timestep_fs",
        type=float,
        help="time step in fs (default 2)",
    )


# ---------------------------------------------------------------------------- parsing helpers
def parse_temperatures(text: str, *, ramp: bool = False) -> tuple[float, ...]:
    """``'300'``, ``'300,600'``, ``'300:1500:200'`` (inclusive) or, with ``ramp``, ``'300:1800'``."""
    s = text.strip()
    try:
        if ":" in s:
            parts = [float(x) for x in s.split(":")]
            if ramp:
                if len(parts) != 2:
                    raise ValueError
                return (parts[0], parts[1])
            if len(parts) != 3 or parts[2] <= 0:
                raise ValueError
            start, stop, step = parts
            n = int(np.floor((stop - start) / step + 1e-9)) + 1
            return tuple(float(start + i * step) for i in range(max(n, 0)))
        return tuple(float(x) for x in s.replace(" ", ",").split(",") if x)
    except ValueError:
        form = "START:END" if ramp else "'300', '300,600' or START:STOP:STEP"
        raise ValueError(f"--temperatures must look like {form}, got {text!r}") from None


def _floats(text: str, name: str) -> tuple[float, ...]:
    try:
        return tuple(float(x) for x in text.replace(" ", ",").split(",") if x)
    except ValueError:
        raise ValueError(f"{name} must be comma-separated numbers, got {text!r}") from None


def _build(cls: Any, preset: dict[str, Any] | None, explicit: dict[str, Any]) -> Any:
    kwargs: dict[str, Any] = {}
    if preset:
        kwargs.update(preset)
    kwargs.update({k: v for k, v in explicit.items() if v is not None})
    return cls(**kwargs)


def _models(args: argparse.Namespace) -> tuple[Any, Any, dict[str, Any]]:
    from ase_born.models.utils import resolve_device
    from ase_born.workflows.models import load_models, model_sha256

    resolve_device(args.device)  # also with stand-ins (they ignore it): no silent CPU run for --device cuda
    ff, bm = load_models(args.force_field, args.born_model, device=args.device, dtype=args.dtype)
    info = {
        "force_field": args.force_field or "default",
        "born_model": args.born_model or "default",
        "dtype": args.dtype,
        "force_field_sha256": model_sha256(args.force_field, "force_field"),
        "born_model_sha256": model_sha256(args.born_model, "born_model"),
    }
    return ff, bm, info


def _run(args: argparse.Namespace, body: Any) -> int:
    """Run a workflow command's body; its expected failures (on top of the shared ones: an
    unstable run, a missing optional package) become one-line errors with exit status 1."""
    return reports_errors(body, also=(RuntimeError, ImportError))(args)


def _flag(v: Any, value: Any) -> Any:
    return value if v else None


_PRESSURE_HELP = (
    "external pressure in GPa; the cell of the reference is relaxed at it too (default 0, or the "
    "default force field's volume correction when it is used, see `ase-born info`)"
)


def _pressure(a: argparse.Namespace) -> float | None:
    """``--pressure-GPa``, else the default force field's volume correction (logged), else None."""
    if a.pressure_GPa is not None or a.force_field is not None:
        return a.pressure_GPa
    from ase_born.defaults import default_pressure_GPa

    p = default_pressure_GPa()
    if p:
        print(
            f"default force field: applying its volume correction, pressure {p:g} GPa (its model "
            "card: `ase-born info`, data/README.md). --pressure-GPa 0 turns it off.",
            file=sys.stderr,
        )
    return p or None


#: options of every MD workflow (``_common(..., md_options=True)``), same names as the config fields
_MD_OPTIONS = ("seed", "mode", "born_update_every")


def _config(
    a: argparse.Namespace,
    cls: Any,
    preset: dict[str, Any],
    same_name: tuple[str, ...],
    /,
    **values: Any,
) -> Any:
    """The workflow's config: its defaults, then ``preset`` with ``--paper``, then the options.

    Parameters
    ----------
    a : argparse.Namespace
        Parsed options.
    cls : type
        Config dataclass of the workflow.
    preset : dict
        The workflow's ``PAPER_PRESET``.
    same_name : tuple of str
        Options stored as they are in the config field of the same name (besides
        ``--structure``, ``--supercell`` and ``--no-relax``, which every workflow has).
    **values
        The other config fields, converted from their options; ``None`` = not given.
    """
    explicit = {
        "structure": a.structure,
        "supercell": a.supercell,
        "relax": _flag(a.no_relax, False),
    }
    explicit.update({name: getattr(a, name) for name in same_name})
    explicit.update(values)
    return _build(cls, preset if a.paper else None, explicit)


def _run_workflow(
    a: argparse.Namespace,
    run: Any,
    cfg: Any,
    models: tuple[Any, Any, dict[str, Any]],
    report: Any,
    outputs: str,
) -> int:
    """Call ``run`` (a ``run_*`` workflow) with the models of :func:`_models`, print the report."""
    ff, bm, info = models
    res = run(
        cfg,
        ff,
        bm,
        a.out,
        model_info=info,
        device=a.device,
        progress=not a.no_progress,
        overwrite=a.overwrite,
    )
    print(report(res))
    print(f"outputs in {a.out}: {outputs}")
    return 0


# ---------------------------------------------------------------------------- commands
#: ``heat --analyze`` options: where the run is and how to analyse it (any other option given
#: would be a new run's setting, silently unused)
_ANALYSIS_OPTIONS = ("out", "window_K", "tilt_threshold_deg", "symprec", "analyze", "no_progress")


def _analyze_heating(a: argparse.Namespace) -> int:
    """``heat --analyze``: the analysis of the run in ``--out`` again, no MD."""
    from ase_born.cli.main import build_parser
    from ase_born.workflows.heating import (
        analyze_heating,
        format_heating_report,
        stored_heating_config,
    )

    defaults = vars(build_parser().parse_args(["heat"]))
    given = sorted(
        "--" + k.replace("_", "-")
        for k, v in vars(a).items()
        if k not in _ANALYSIS_OPTIONS and k in defaults and v != defaults[k]
    )
    if given:
        raise ValueError(
            f"--analyze analyses the run in --out with its own settings; {', '.join(given)} "
            "would change the run, not its analysis (only --window-K, --tilt-threshold-deg, "
            "--symprec apply)"
        )
    over = {k: getattr(a, k) for k in ("window_K", "tilt_threshold_deg", "symprec")}
    cfg = stored_heating_config(a.out).replace(**{k: v for k, v in over.items() if v is not None})
    print(format_heating_report(analyze_heating(a.out, cfg)))
    print(f"outputs in {a.out}: heat_windows.csv, heat_phases.json, heat.png")
    return 0


def _heat(args: argparse.Namespace) -> int:
    def body(a: argparse.Namespace) -> int:
        if a.analyze:
            return _analyze_heating(a)
        from ase_born.conventions import field_from_V_per_m
        from ase_born.workflows.common import field_vector
        from ase_born.workflows.heating import (
            PAPER_PRESET,
            HeatingConfig,
            format_heating_report,
            run_heating,
        )

        field = None
        if a.field_V_per_m is not None or a.field_direction is not None:
            mag = None if a.field_V_per_m is None else float(field_from_V_per_m(a.field_V_per_m))
            vec = field_vector(mag, a.field_direction)
            field = None if vec is None else tuple(vec)
        temps = parse_temperatures(a.temperatures, ramp=True) if a.temperatures else None
        preset = dict(PAPER_PRESET)
        if a.heating_rate_K_per_ps is None and (a.steps is not None or (temps and len(temps) == 1)):
            # explicit options win over the preset's 1 K/ps: a ramp over --steps, or one temperature
            preset.pop("heating_rate_K_per_ps")
        cfg = _config(
            a,
            HeatingConfig,
            preset,
            (
                "heating_rate_K_per_ps",
                "equilibration_steps",
                "timestep_fs",
                "log_every",
                "traj_every",
                "checkpoint_every",
                "window_K",
                "tilt_threshold_deg",
                "symprec",
                *_MD_OPTIONS,
            ),
            temperatures_K=temps,
            ramp_steps=a.steps,
            pressure_GPa=_pressure(a),
            field_V_per_A=field,
        )
        return _run_workflow(
            a,
            run_heating,
            cfg,
            _models(a),
            format_heating_report,
            "heat_log.csv, trajectory.extxyz, heat_windows.csv, heat_phases.json, heat.png",
        )

    return _run(args, body)


def _dielectric(args: argparse.Namespace) -> int:
    def body(a: argparse.Namespace) -> int:
        from ase_born.conventions import field_from_V_per_m
        from ase_born.workflows.dielectric import (
            PAPER_PRESET,
            DielectricConfig,
            format_report,
            run_dielectric,
        )

        cfg = _config(
            a,
            DielectricConfig,
            PAPER_PRESET,
            (
                "equilibration_steps",
                "discard_steps",
                "timestep_fs",
                "plus_minus",
                "ensemble",
                "sample_every",
                "n_blocks",
                "traj_every",
                "checkpoint_every",
                *_MD_OPTIONS,
            ),
            temperatures_K=parse_temperatures(a.temperatures) if a.temperatures else None,
            production_steps=a.steps,
            pressure_GPa=_pressure(a),
            field_V_per_A=None
            if a.field_V_per_m is None
            else float(field_from_V_per_m(a.field_V_per_m)),
            correlated=_flag(a.independent, False),
            epsilon_inf=_floats(a.epsilon_inf, "--epsilon-inf") if a.epsilon_inf else None,
            total_epsilon=_flag(a.ionic_only, False),
            harmonic=_flag(a.no_harmonic, False),
            static_check=_flag(a.no_static_check, False),
        )
        models = _models(a)
        if a.epsilon_inf is None and a.born_model is None and not a.ionic_only:
            from ase_born.workflows.models import default_epsilon_inf

            # ε∞ is shipped with the default Born model (both from DFPT of pnma_eq): it
            # applies whatever force field moves the atoms
            eps = default_epsilon_inf()
            if eps is not None:
                cfg = cfg.replace(epsilon_inf=tuple(float(x) for x in np.ravel(eps)))
        return _run_workflow(
            a,
            run_dielectric,
            cfg,
            models,
            format_report,
            "dielectric.json, dielectric.csv, dielectric.png, md_*.csv, traj_*.extxyz",
        )

    return _run(args, body)


def _pe_curve(args: argparse.Namespace) -> int:
    def body(a: argparse.Namespace) -> int:
        from ase_born.workflows.pe_curve import (
            PAPER_PRESET,
            PECurveConfig,
            default_fields_V_per_m,
            format_pe_report,
            run_pe_curve,
        )

        fields = None
        if a.fields_V_per_m:
            fields = _floats(a.fields_V_per_m, "--fields-V-per-m")
        elif a.field_V_per_m is not None or a.n_fields is not None:
            fields = default_fields_V_per_m(
                a.field_V_per_m if a.field_V_per_m is not None else 1e8,
                a.n_fields if a.n_fields is not None else 11,
            )
        cfg = _config(
            a,
            PECurveConfig,
            PAPER_PRESET,
            ("fmax_eV_per_A", "relax_cell"),
            fields_V_per_m=fields,
            directions=tuple(x for x in a.directions.split(",") if x) if a.directions else None,
            max_steps=a.steps,
            pressure_GPa=_pressure(a),
            harmonic=_flag(a.no_harmonic, False),
        )
        return _run_workflow(
            a,
            run_pe_curve,
            cfg,
            _models(a),
            format_pe_report,
            "pe_curve.csv, pe_curve.json, pe_curve.png, structures.extxyz",
        )

    return _run(args, body)


__all__ = ["parse_temperatures", "register"]
