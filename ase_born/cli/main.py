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


#: options whose value may start with "-" (a direction "-x", "-1,1,0", "-x,y")
NEGATIVE_VALUE_OPTIONS = ("--field-direction", "--directions")


def attach_negative_values(argv: list[str]) -> list[str]:
    """``--field-direction -x`` -> ``--field-direction=-x``: argparse takes "-x" for an
    option and stops with "expected one argument"; the value form with "=" is unambiguous.
    Abbreviations argparse accepts (``--field-dir -x``) are attached the same way; argparse
    still resolves (or refuses as ambiguous) the abbreviated name."""

    def takes_direction(tok: str) -> bool:
        return tok.startswith("--") and len(tok) > 2 and any(o.startswith(tok) for o in NEGATIVE_VALUE_OPTIONS)

    out: list[str] = []
    i = 0
    while i < len(argv):
        tok = argv[i]
        nxt = argv[i + 1] if i + 1 < len(argv) else None
        if (takes_direction(tok) and nxt is not None and nxt.startswith("-")
                and not nxt.startswith("--") and nxt[1:2].lower() in set("xyzabc0123456789.")):
            out.append(f"{tok}={nxt}")
            i += 2
            continue
        out.append(tok)
        i += 1
    return out


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(attach_negative_values(sys.argv[1:] if argv is None else list(argv)))
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    return int(args.func(args) or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
