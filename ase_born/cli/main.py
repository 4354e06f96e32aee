"""`ase-born` command-line entry point.

Thin dispatcher: each subcommand lives in its own module ``ase_born.cli.<name>``
exposing ``register(subparsers)``, which adds its parser and sets
``func=callable(args) -> int`` as the handler.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import sys

from ase_born import __version__

#: modules providing subcommands, in help order
SUBCOMMAND_MODULES = (
    "info",
    "dft",
    "convert",
    "train",
    "workflows",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ase-born",
        description="Field-driven MD with MACE forces and Equivar Born effective charges.",
    )
    parser.add_argument("--version", action="version", version=f"ase-born {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in SUBCOMMAND_MODULES:
        modname = f"ase_born.cli.{name}"
        if importlib.util.find_spec(modname) is None:  # module not written yet
            continue
        importlib.import_module(modname).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    return int(args.func(args) or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
