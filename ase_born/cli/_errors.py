"""Shared by the subcommand modules: expected failures as one-line errors."""

from __future__ import annotations

import argparse
import functools
import math
import pickle
import sys
from collections.abc import Callable
from typing import Any

#: failures every command reports in one line: bad config/data/checkpoint/plan, missing files
EXPECTED_ERRORS: tuple[type[BaseException], ...] = (OSError, ValueError, pickle.UnpicklingError)


def reports_errors(func: Callable[[argparse.Namespace], Any] | None = None, *,
                   also: tuple[type[BaseException], ...] = ()) -> Any:
    """Turn expected failures into a one-line ``ase-born COMMAND: error: ...`` on stderr and
    exit status 1, not a traceback.

    Use as ``@reports_errors`` or ``reports_errors(body, also=(RuntimeError,))(args)``;
    ``also`` adds exception types a command expects on top of :data:`EXPECTED_ERRORS`
    (e.g. the MD workflows' ``RuntimeError`` for an unstable run). A ``None`` return is
    exit status 0.
    """
    caught = EXPECTED_ERRORS + tuple(also)

    def decorate(f: Callable[[argparse.Namespace], Any]) -> Callable[[argparse.Namespace], int]:
        @functools.wraps(f)
        def wrapper(args: argparse.Namespace) -> int:
            try:
                return int(f(args) or 0)
            except caught as exc:
                print(f"ase-born {args.command}: error: {exc}", file=sys.stderr)
                return 1

        return wrapper

    return decorate if func is None else decorate(func)


def _number(kind: type, text: str, minimum: float, strict: bool, what: str):
    try:
        value = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
    if not math.isfinite(value) or not (value > minimum if strict else value >= minimum):
        raise argparse.ArgumentTypeError(f"expected {what}, got {text}")
    return value


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    return _number(int, text, 1, False, "a positive integer")


def nonnegative_int(text: str) -> int:
    """argparse type: an integer >= 0."""
    return _number(int, text, 0, False, "a non-negative integer")


def positive_float(text: str) -> float:
    """argparse type: a finite number > 0."""
    return _number(float, text, 0.0, True, "a positive number")


def nonnegative_float(text: str) -> float:
    """argparse type: a finite number >= 0."""
    return _number(float, text, 0.0, False, "a non-negative number")


def _field_V_per_m(text: str, strict: bool) -> float:
    from ase_born.conventions import MAX_FIELD_V_PER_A, field_to_V_per_m

    value = _number(float, text, 0.0, strict, "a positive field in V/m" if strict else "a field >= 0 in V/m")
    limit = float(field_to_V_per_m(MAX_FIELD_V_PER_A))
    if value > limit:
        raise argparse.ArgumentTypeError(
            f"{text} V/m is above {limit:g} V/m ({MAX_FIELD_V_PER_A:g} V/Å), far beyond "
            "dielectric breakdown; fields for oxides are ~1e7-1e9 V/m")
    return value


def field_magnitude(text: str) -> float:
    """argparse type: a field magnitude in V/m, > 0 and at most the calculator's limit
    (:data:`~ase_born.conventions.MAX_FIELD_V_PER_A`), named in V/m as the user gave it."""
    return _field_V_per_m(text, True)


def field_magnitude_or_zero(text: str) -> float:
    """:func:`field_magnitude` that also takes 0 (no field)."""
    return _field_V_per_m(text, False)


def output_refusal(output: str, inputs: list[str], *, replace_ok: bool,
                   how: str = "--overwrite to replace it") -> str | None:
    """Why ``output`` must not be written: it is one of ``inputs`` (the same file by any
    path), or it exists and ``replace_ok`` is false (the message says to pass ``how``);
    None when it may be written."""
    import os

    if not os.path.exists(output):
        return None
    if any(os.path.exists(i) and os.path.samefile(output, i) for i in inputs):
        return f"OUTPUT {output} is also an input"
    if not replace_ok:
        return f"{output} exists: pass {how}"
    return None

