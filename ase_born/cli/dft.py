"""`ase-born dft plan|run|converge|status`: the ABINIT DFPT data pipeline."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from ase_born.cli._errors import (
    nonnegative_float,
    nonnegative_int,
    positive_float,
    positive_int,
    reports_errors,
)

DEFAULT_PLAN = "data/dft/plan_catio3.extxyz"


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("dft", help="ABINIT DFPT Born-charge data pipeline (plan, run, converge, status)")
    dsub = p.add_subparsers(dest="dft_command", metavar="ACTION", required=True)

    pp = dsub.add_parser("plan", help="write the CaTiO3 structure plan (stable IDs, fixed TEST split)")
    pp.add_argument("--out", default=DEFAULT_PLAN, help=f"plan file (default {DEFAULT_PLAN})")
    pp.add_argument("--n-cubic", type=nonnegative_int, default=90, help="5-atom strained/displaced cubic cells")
    pp.add_argument("--n-tilt", type=nonnegative_int, default=48, help="10-atom tilted cells (a0a0c+ / a-a-a-)")
    pp.add_argument("--n-pnma", type=nonnegative_int, default=11, help="20-atom thermal Pnma cells (plus pnma_eq)")
    pp.add_argument("--seed", type=int, default=2026)
    pp.add_argument("--force", action="store_true", help="overwrite an existing plan")
    pp.set_defaults(func=_plan)

    pr = dsub.add_parser("run", help="compute unfinished structures (resumable; stop with Ctrl-C/SIGTERM)")
    pr.add_argument("plan", nargs="?", default=DEFAULT_PLAN)
    _common(pr)
    pr.add_argument("--ranks", type=positive_int, default=2, help="MPI ranks per structure")
    pr.add_argument("--jobs", type=positive_int, default=1, help="structures computed at the same time")
    pr.add_argument("--timeout-min", type=positive_float, default=360.0, help="wall-clock limit per ABINIT step (minutes)")
    pr.add_argument("--max-attempts", type=positive_int, default=2,
                    help="failures after which a structure is skipped (counted in failures.json beside "
                         "--output, so across sessions)")
    pr.add_argument("--max-structures", type=positive_int, default=None, help="stop after this many finished structures")
    pr.add_argument("--only", nargs="*", default=None, help="restrict to these structure IDs")
    pr.add_argument("--first", nargs="+", default=None, metavar="ID",
                    help="start these structures first, in this order, then the rest in plan order "
                         "(structures with carried directions or finished steps kept in their run "
                         "directory still come before them)")
    pr.add_argument("--max-atoms", type=positive_int, default=None,
                    help="leave structures with more atoms for a later run (e.g. 20-atom cells whose "
                         "steps left cannot finish before --hours on a machine that will not be kept)")
    pr.add_argument("--hours", type=positive_float, default=None,
                    help="stop after this many hours (the run in progress is killed; finished field "
                         "directions are kept in partial/ beside --output), and start a structure only if its "
                         "ground state (unless its run directory keeps it) and one field direction are "
                         "expected (measured cost, x1.2) to finish before then; the rest are deferred to "
                         "a later run")
    pr.add_argument("--grace-minutes", type=nonnegative_float, default=0.0,
                    help="with --hours: minutes after the deadline that the steps running then may still "
                         "use (no step starts after it); default 0. A ground state gets ABINIT's time limit "
                         "10 minutes before deadline + grace (it keeps its wavefunctions there) and starts only "
                         "if it fits before that too: with less than 10 minutes, ground states end that much "
                         "before the deadline")
    pr.add_argument("--step-level", choices=("auto", "yes", "no"), default="auto",
                    help="with --hours: start a structure (and each ABINIT step) when that step alone fits "
                         "before the deadline, so long structures span calls (yes: the work directory "
                         "survives between calls); no: its ground state and a whole field direction must fit; "
                         "auto (default): yes when the work directory holds a started step (finished or "
                         "interrupted) of an unfinished structure from an earlier call, or an earlier "
                         "call ran to its deadline there (the machine is kept between sessions)")
    pr.add_argument("--no-machine-speed", dest="machine_speed", action="store_false",
                    help="with --hours: do not scale the cost model's estimates by this machine's speed "
                         "(by default the frames this machine made, recorded in the work directory, "
                         "measure it; until one exists the first structure is the cheapest one that fits)")
    pr.add_argument("--no-complete-epsilon", dest="complete_epsilon", action="store_false",
                    help="do not run the ddk of field directions carried over from another session again "
                         "(by default they are, when they fit before --hours, so the frame has every "
                         "ε∞ element; without them ε∞ elements between sessions are NaN)")
    pr.add_argument("--nice", type=int, default=19)
    pr.add_argument("--ecut-Ha", type=positive_float, default=None, help="plane-wave cutoff (Hartree)")
    pr.add_argument("--kpt-density", type=positive_float, default=None, help="k-points per 1/Å (ASE convention)")
    pr.set_defaults(func=_run)

    pc = dsub.add_parser("converge", help="convergence study (ecut, k-mesh, tolerances) on a 5-atom cell")
    pc.add_argument("--workdir", default="dft_runs/convergence")
    pc.add_argument("--output", default="data/dft/convergence.json")
    pc.add_argument("--ranks", type=positive_int, default=2)
    pc.add_argument("--nice", type=int, default=19)
    pc.add_argument("--table", action="store_true", help="only print the markdown table of existing results")
    pc.add_argument("--export-frame", nargs=2, metavar=("LABEL", "EXTXYZ"),
                    help="append a finished point as a training frame (structure_id conv_cubic) and exit; "
                         "refused when EXTXYZ already holds conv_cubic")
    pc.set_defaults(func=_converge)

    ps = dsub.add_parser("status", help="summarise what exists: counts and costs per kind, carried "
                          "directions, whether a pipeline runs, the steps of each started structure")
    ps.add_argument("plan", nargs="?", default=DEFAULT_PLAN)
    _common(ps)
    ps.add_argument("--json", action="store_true", help="print JSON")
    ps.set_defaults(func=_status)


def _common(p: argparse.ArgumentParser) -> None:
    from ase_born.dft.pipeline import DEFAULT_OUTPUT, DEFAULT_WORKDIR

    p.add_argument("--output", default=str(DEFAULT_OUTPUT), help=f"dataset file (default {DEFAULT_OUTPUT})")
    p.add_argument("--workdir", default=str(DEFAULT_WORKDIR), help=f"run directories (default {DEFAULT_WORKDIR})")


@reports_errors
def _plan(args: argparse.Namespace) -> int:
    from ase_born.dft.sampler import make_plan
    from ase_born.io.extxyz import write_frames

    out = Path(args.out)
    if out.exists() and not args.force:
        raise SystemExit(f"{out} exists; IDs must stay stable — pass --force to overwrite")
    plan = make_plan(args.n_cubic, args.n_tilt, args.n_pnma, seed=args.seed)
    write_frames(out, plan)
    n_test = sum(a.info["split"] == "test" for a in plan)
    print(f"wrote {len(plan)} structures ({n_test} TEST) to {out}")
    return 0


@reports_errors(also=(RuntimeError,))  # no ABINIT/mpirun, a systematic failure
def _run(args: argparse.Namespace) -> int:
    import dataclasses

    from ase_born.dft.abinit import AbinitSettings
    from ase_born.dft.pipeline import machine_kept, resolve_step_level, run_plan

    settings = AbinitSettings()
    over = {}
    if args.ecut_Ha is not None:
        over["ecut_Ha"] = args.ecut_Ha
    if args.kpt_density is not None:
        over["kpt_density"] = args.kpt_density
    settings = dataclasses.replace(settings, **over)
    step_level = resolve_step_level(args.step_level, args.workdir, args.output)
    if args.step_level == "auto":
        why = ("an earlier call ran to its deadline here: the machine is kept" if machine_kept(args.workdir)
               else "started steps of unfinished structures are kept" if step_level
               else "no earlier call and no started step here: a fresh machine")
        print(f"step by step (auto): {'yes' if step_level else 'no'} ({why})", flush=True)
    counts = run_plan(
        args.plan,
        output=args.output,
        workdir=args.workdir,
        settings=settings,
        ranks=args.ranks,
        jobs=args.jobs,
        timeout_s=args.timeout_min * 60.0,
        max_attempts=args.max_attempts,
        max_structures=args.max_structures,
        only_ids=args.only,
        max_atoms=args.max_atoms,
        first_ids=args.first,
        nice=args.nice,
        log=lambda m: print(m, flush=True),
        deadline=None if args.hours is None else time.time() + 3600.0 * args.hours,
        grace_s=60.0 * args.grace_minutes,
        step_level=step_level,
        complete_epsilon=args.complete_epsilon,
        machine_speed=args.machine_speed,
    )
    print(json.dumps(counts))
    return 0


@reports_errors
def _converge(args: argparse.Namespace) -> int:
    from ase_born.dft.convergence import (
        analyse,
        export_frame,
        markdown_table,
        read_results,
        run_convergence,
    )

    if args.export_frame:
        label, out = args.export_frame
        export_frame(label, out, args.workdir, args.output)
        print(f"appended convergence point {label} to {out}")
        return 0
    if args.table:
        if not Path(args.output).is_file():
            raise FileNotFoundError(
                f"no convergence results at {args.output} (looked in {Path.cwd()}): run from the "
                "repository root, pass --output, or run the study without --table"
            )
        res = read_results(args.output)
        res["analysis"] = analyse(res.get("points", {}))  # the current analysis of the stored points
    else:
        res = run_convergence(args.workdir, args.output, ranks=args.ranks, nice=args.nice,
                              log=lambda m: print(m, flush=True))
    print(markdown_table(res))
    return 0


@reports_errors
def _status(args: argparse.Namespace) -> int:
    from ase_born.dft.pipeline import print_status, status

    st = status(args.plan, args.output, args.workdir)
    if args.json:
        print(json.dumps(st, indent=1))
    else:
        print_status(st)
    return 0
