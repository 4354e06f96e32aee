"""``ase-born convert``: DFPT outputs -> extxyz training frames.

Examples
--------
::

    ase-born convert run*/vasprun.xml -o frames.xyz
    ase-born convert BORN --structure POSCAR -o frames.xyz
    ase-born convert ph.out --structure scf.out -o frames.xyz --append
    ase-born convert efield.abo --structure gs.abo -o frames.xyz
"""

from __future__ import annotations

import argparse
import sys

from ase_born.cli._errors import output_refusal, positive_float


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``convert`` subcommand."""
    from ase_born.io import FORMATS

    p = subparsers.add_parser(
        "convert",
        help="convert DFPT outputs (VASP, phonopy BORN, QE ph.x, ABINIT, extxyz) to extxyz frames",
        description=(
            "Read Born effective charges, epsilon_inf, structure and (where present) "
            "energy/forces/stress from DFPT outputs and write extxyz frames in the project's "
            "convention (Z*[k,b,a], b = field, a = displacement; as read: no sum-rule correction unless the source applied one, e.g. ph.x --born-block dF/dE-asr)."
        ),
    )
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="input files (formats may be mixed)")
    p.add_argument("-o", "--output", required=True, help="output extxyz file")
    p.add_argument(
        "--format", choices=FORMATS, default=None, help="input format (default: guess per file)"
    )
    p.add_argument(
        "--structure",
        default=None,
        help=(
            "structure file for inputs without a usable one: required for phonopy BORN; "
            "pw.x input/output for ph.x; POSCAR for an OUTCAR whose geometry cannot be read "
            "(an OUTCAR with a geometry keeps its own, with energy/forces/stress); for ABINIT, the "
            "separate ground-state output of a response-only INPUT"
        ),
    )
    p.add_argument("--append", action="store_true", help="append to OUTPUT (an existing OUTPUT is refused "
                   "unless --append or --overwrite)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing OUTPUT")
    p.add_argument(
        "--born-rows",
        choices=("field", "displacement"),
        default=None,
        help="VASP only: what the rows of the Born block are (needed for IBRION=7,8 runs)",
    )
    p.add_argument(
        "--born-block",
        choices=("dF/dE", "dF/dE-asr", "dP/du"),
        default="dF/dE",
        help="ph.x only: which effective-charge block to read (default: raw dF/dE)",
    )
    p.add_argument(
        "--symprec", type=positive_float, default=1e-5, help="phonopy BORN only: symmetry tolerance in Å"
    )
    p.add_argument(
        "--nosym",
        action="store_true",
        help="phonopy BORN only: the file lists every atom (written with symmetry off)",
    )
    p.add_argument(
        "--skip-unavailable",
        action="store_true",
        help="skip inputs whose reader module cannot be imported instead of failing",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Convert ``args.inputs`` and write ``args.output``; return the exit status."""
    from ase_born.io import read_dataset
    from ase_born.io.extxyz import write_frames

    if args.append and args.overwrite:
        print("ase-born convert: error: --append and --overwrite exclude each other", file=sys.stderr)
        return 1
    refusal = output_refusal(args.output, [*args.inputs, *([args.structure] if args.structure else [])],
                             replace_ok=args.append or args.overwrite,
                             how="--overwrite to replace it (or --append to add the frames to it)")
    if refusal is not None:
        print(f"ase-born convert: error: {refusal}", file=sys.stderr)
        return 1
    try:
        frames = read_dataset(
            args.inputs,
            args.format,
            structure=args.structure,
            born_rows=args.born_rows,
            born_block=args.born_block,
            symprec=args.symprec,
            is_symmetry=not args.nosym,
            skip_unavailable=args.skip_unavailable,
        )
    except (OSError, ValueError, ImportError) as exc:
        print(f"ase-born convert: error: {exc}", file=sys.stderr)
        return 1
    if not frames:
        print("ase-born convert: error: no frames read", file=sys.stderr)
        return 1
    try:
        write_frames(args.output, frames, append=args.append)
    except (OSError, ValueError) as exc:
        print(f"ase-born convert: error: cannot write {args.output}: {exc}", file=sys.stderr)
        return 1
    verb = "appended" if args.append else "wrote"
    print(f"{verb} {len(frames)} frame(s) from {len(args.inputs)} input(s) to {args.output}")
    return 0
