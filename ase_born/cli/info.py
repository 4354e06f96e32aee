"""`ase-born info`: versions, devices and where the default models live."""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import json
from pathlib import Path
from typing import Any

#: (import name, distribution name) of the packages reported
PACKAGES = (
    ("ase_born", "ase_born"),
    ("ase", "ase"),
    ("torch", "torch"),
    ("e3nn", "e3nn"),
    ("mace", "mace-torch"),
    ("phonopy", "phonopy"),
    ("vesin", "vesin"),
    ("numpy", "numpy"),
)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("info", help="versions, devices and default-model locations")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.set_defaults(func=_info)


def models_dir() -> Path:
    """Where the default models are read from (:func:`ase_born.defaults.models_dir`: the
    repository's ``data/models``, or ``$ASE_BORN_DATA/models``)."""
    from ase_born import defaults

    return defaults.models_dir()


def _version(import_name: str, dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        pass
    try:
        mod = importlib.import_module(import_name)
    except Exception as exc:  # noqa: BLE001 - report any import failure
        return f"not available ({type(exc).__name__}: {exc})"
    return str(getattr(mod, "__version__", "unknown"))


def _devices() -> dict[str, Any]:
    out: dict[str, Any] = {"cpu": True}
    try:
        import torch
    except Exception as exc:  # noqa: BLE001
        out["cuda"] = f"torch not importable: {exc}"
        return out
    out["cpu_threads"] = torch.get_num_threads()
    avail = bool(torch.cuda.is_available())
    out["cuda_available"] = avail
    out["cuda_count"] = torch.cuda.device_count() if avail else 0
    out["cuda_devices"] = [torch.cuda.get_device_name(i) for i in range(out["cuda_count"])]
    out["torch_cuda_build"] = torch.version.cuda
    return out


def _defaults_info() -> dict[str, Any] | str:
    try:
        defaults = importlib.import_module("ase_born.defaults")
    except ModuleNotFoundError as exc:
        if exc.name == "ase_born.defaults":
            return "none installed (ase_born.defaults does not exist)"
        raise
    for name in ("info", "describe", "get_info"):
        fn = getattr(defaults, name, None)
        if callable(fn):
            return fn()
    public = {k: getattr(defaults, k) for k in dir(defaults) if k.isupper()}
    return {k: (v if isinstance(v, (str, int, float, bool, list, dict)) else repr(v)) for k, v in public.items()}


def collect() -> dict[str, Any]:
    """Everything ``ase-born info`` prints, as a JSON-able dict."""
    mdir = models_dir()
    files = sorted(str(p.relative_to(mdir)) for p in mdir.rglob("*") if p.is_file()) if mdir.is_dir() else []
    return {
        "versions": {name: _version(name, dist) for name, dist in PACKAGES},
        "devices": _devices(),
        "models_dir": str(mdir),
        "models_dir_exists": mdir.is_dir(),
        "model_files": files,
        "defaults": _defaults_info(),
    }


def _info(args: argparse.Namespace) -> int:
    info = collect()
    if args.json:
        print(json.dumps(info, indent=1, default=str))
        return 0
    print("versions:")
    for name, ver in info["versions"].items():
        print(f"  {name:10s} {ver}")
    dev = info["devices"]
    print("devices:")
    print(f"  cpu        yes ({dev.get('cpu_threads', '?')} torch threads)")
    if dev.get("cuda_available"):
        print(f"  cuda       {dev['cuda_count']} device(s): {', '.join(dev['cuda_devices'])}")
    else:
        print(f"  cuda       not available (torch built with CUDA {dev.get('torch_cuda_build')})")
    print(f"default models: {info['models_dir']}")
    if not info["models_dir_exists"]:
        print("  (directory does not exist)")
    elif info["model_files"]:
        for f in info["model_files"]:
            print(f"  {f}")
    else:
        print("  (no files)")
    d = info["defaults"]
    if isinstance(d, str):
        print(f"defaults: {d}")
    else:
        print("defaults:")
        for k, v in (d.items() if isinstance(d, dict) else [("info", d)]):
            print(f"  {k}: {v}")
    return 0
