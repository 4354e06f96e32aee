"""Small helpers shared by the model modules: explicit device / dtype handling."""

from __future__ import annotations

import torch

_DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "float": torch.float32,
    "single": torch.float32,
    "float64": torch.float64,
    "double": torch.float64,
}


def resolve_dtype(dtype: str | torch.dtype) -> torch.dtype:
    """Return a floating :class:`torch.dtype` from ``"float32"``/``"float64"`` or a dtype.

    Raises
    ------
    ValueError
        For anything other than float32 / float64.
    """
    if isinstance(dtype, torch.dtype):
        dt = dtype
    elif isinstance(dtype, str) and dtype.lower().removeprefix("torch.") in _DTYPES:
        dt = _DTYPES[dtype.lower().removeprefix("torch.")]
    else:
        raise ValueError(f"dtype must be 'float32' or 'float64', got {dtype!r}")
    if dt not in (torch.float32, torch.float64):
        raise ValueError(f"dtype must be float32 or float64, got {dt}")
    return dt


class DeviceUnavailableError(RuntimeError, ValueError):
    """A device that torch does not know or this machine does not have (a ``RuntimeError``
    as before, and a ``ValueError``: bad input, one line on the command line)."""


def resolve_device(device: str | torch.device) -> torch.device:
    """Return a :class:`torch.device`; raises :class:`DeviceUnavailableError` for an unknown
    device name or when CUDA (or that GPU) is asked for but absent.  A bare ``"cuda"`` gets
    the current GPU's index (``cuda:0``), the device tensors report, so that a model already
    there compares equal to the request (and is not copied)."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise DeviceUnavailableError(f"unknown torch device {device!r} (e.g. cpu, cuda, cuda:1)") from exc
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise DeviceUnavailableError(f"device {device!r} requested but CUDA is not available")
        if dev.index is None:
            dev = torch.device("cuda", torch.cuda.current_device())
        elif dev.index >= torch.cuda.device_count():
            raise DeviceUnavailableError(f"device {device!r} requested but this machine has "
                                         f"{torch.cuda.device_count()} GPU(s)")
    return dev


def dtype_name(dtype: torch.dtype) -> str:
    """``torch.float64 -> "float64"``."""
    return str(dtype).removeprefix("torch.")


__all__ = ["DeviceUnavailableError", "dtype_name", "resolve_device", "resolve_dtype"]
