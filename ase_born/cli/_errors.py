"""Shared by the subcommand modules: expected failures as one-line errors."""

from __future__ import annotations

import argparse
import functools
import pickle
import sys


def reports_errors(func):
    """Turn expected failures (bad config/data/checkpoint/plan, missing files) into a one-line
    ``ase-born COMMAND: error: ...`` on stderr and exit status 1, not a traceback."""

    @functools.wraps(func)
    def wrapper(args: argparse.Namespace) -> int:
        try:
            return func(args)
        except (OSError, ValueError, pickle.UnpicklingError) as exc:
            print(f"ase-born {args.command}: error: {exc}", file=sys.stderr)
            return 1

    return wrapper
