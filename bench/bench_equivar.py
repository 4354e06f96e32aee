"""Inference and training speed of Equivar (BM1, BM2) on Pnma CaTiO3 supercells.

For every model, device and system size (a near-cubic supercell of the 20-atom Pnma cell
of :func:`ase_born.dft.sampler.pnma_catio3`) it measures

* ``graph_ms``: the complete O(N) neighbour list (vesin) + collation;
* ``infer_ms``: one forward pass without gradients (median over ``--repeats`` after a
  warm-up); ``infer_total_ms_per_atom = (graph_ms + infer_ms) / n_atoms``;
* ``train_ms``: one optimisation step on that structure (forward, L1 loss on the 9
  components, backward, AdamW step); ``train_ms_per_atom_epoch = train_ms / n_atoms`` is
  the cost of an epoch over a dataset with that many atoms (graphs are precomputed in
  training, so no neighbour list here);

and compares them with the paper's numbers on one RTX A6000 (REFERENCE.md: training 0.493
/ 0.156 ms/atom/epoch, inference 0.340 / 0.117 ms/atom for BM1 / BM2) as
``paper_*_speedup = paper / ours``: a different machine, so on CPU it is context only.

The faithful paper-style BASELINE runs in the same process up to ``--baseline-max-atoms``:
the paper's O(N²) single-image neighbour construction
(:func:`ase_born.models.graph.minimum_image_edges_baseline`) and the same weights through
the stock e3nn tensor product (``tp_impl="e3nn"``), reported as
``baseline.ratio_infer = baseline total / ours total`` (and ``ratio_train`` for the training
step up to ``--baseline-train-max-atoms``). The stock e3nn path takes ~16 s per forward
pass of 160 atoms of BM2 on 2 CPU cores (70 s for BM1; ``bench_equivar_cpu.json``), so the
CPU defaults keep it to 160 atoms and to inference; on CUDA the defaults go to 5120 atoms.

Results are printed and written to ``bench/results/bench_equivar_<device>.json``.

Usage::

    python bench/bench_equivar.py                                 # CPU defaults, < ~10 min
    python bench/bench_equivar.py --devices cuda --sizes 160 640 1280 5120 20480
    python bench/bench_equivar.py --sizes 160 640 --threads 2 --pause-dft

``--pause-dft`` stops the background ABINIT job (``scripts/dft_pause.sh stop``) for the
timings and ALWAYS resumes it (``... cont``) at the end, also on errors and SIGTERM.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import itertools
import json
import math
import platform
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from ase_born import __version__
from ase_born.dft.sampler import PNMA_CELL, cubic_catio3, pnma_catio3
from ase_born.models._e3nn import E3NN_VERSION
from ase_born.models.equivar import Equivar, enforce_asr, preset
from ase_born.models.graph import batch_from_atoms

REPO = Path(__file__).resolve().parents[1]
PAPER = {
    "hardware": "one NVIDIA RTX A6000 (paper SI Figs. S2, S3)",
    "train_ms_per_atom_epoch": {"BM1": 0.493, "BM2": 0.156},
    "infer_ms_per_atom": {"BM1": 0.340, "BM2": 0.117},
}
DEFAULT_SIZES = {"cpu": [160, 640, 1280], "cuda": [160, 640, 1280, 5120, 20480]}
DEFAULT_BASELINE_MAX = {"cpu": 160, "cuda": 5120}
DEFAULT_BASELINE_TRAIN_MAX = {"cpu": 0, "cuda": 5120}


def supercell_repeat(n_atoms: int) -> tuple[int, int, int]:
    """Most nearly cubic ``(na, nb, nc)`` with ``20 na nb nc == n_atoms`` (Pnma axes a, b, c)."""
    if n_atoms % 20:
        raise ValueError(f"system sizes must be multiples of 20 atoms (Pnma cell), got {n_atoms}")
    n = n_atoms // 20
    best, best_score = (n, 1, 1), math.inf
    for na, nb in itertools.product(range(1, n + 1), repeat=2):
        if n % (na * nb):
            continue
        nc = n // (na * nb)
        lengths = np.array(PNMA_CELL) * (na, nb, nc)
        score = lengths.max() / lengths.min()
        if score < best_score - 1e-12:
            best, best_score = (na, nb, nc), score
    return best


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _median_time(fn, device: torch.device, repeats: int, warmup: int = 1) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        _sync(device)
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _graph(atoms, model: Equivar, method: str, device: torch.device, dtype: str):
    t0 = time.perf_counter()
    g = batch_from_atoms(atoms, model.r_max, model.r_min, device=device, dtype=dtype, method=method)
    _sync(device)
    return g, time.perf_counter() - t0


def _train_step_fn(model: Equivar, g, target: torch.Tensor):
    opt = torch.optim.AdamW(model.parameters(), lr=5e-3)
    loss_fn = torch.nn.L1Loss()

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        _, z_raw = model.forward_graph(g, return_raw=True)
        loss_fn(z_raw, target).backward()
        opt.step()

    return step


def bench_one(
    name: str,
    n_atoms: int,
    device: torch.device,
    dtype: str,
    repeats: int,
    baseline: bool,
    baseline_train: bool,
    train: bool,
) -> dict:
    """All numbers of one (model, size, device)."""
    torch.manual_seed(0)
    rep = supercell_repeat(n_atoms)
    atoms = pnma_catio3().repeat(rep)
    model = Equivar(preset(name), device=device, dtype=dtype)
    row: dict = {
        "model": name,
        "n_atoms": len(atoms),
        "repeat_abc": list(rep),
        "params": model.num_parameters(),
    }

    model.eval()
    graph_times = []
    for _ in range(max(repeats, 1)):
        g, t = _graph(atoms, model, "vesin", device, dtype)
        graph_times.append(t)
    row["n_edges"] = g.n_edges
    row["graph_ms"] = 1e3 * statistics.median(graph_times)
    with torch.no_grad():
        t_inf = _median_time(lambda: model.forward_graph(g), device, repeats)
    row["infer_ms"] = 1e3 * t_inf
    row["infer_ms_per_atom"] = row["infer_ms"] / n_atoms
    row["infer_total_ms_per_atom"] = (row["graph_ms"] + row["infer_ms"]) / n_atoms
    row["paper_infer_speedup"] = PAPER["infer_ms_per_atom"][name] / row["infer_total_ms_per_atom"]
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    if train:
        model.train()
        target = torch.randn(n_atoms, 3, 3, device=device, dtype=model.dtype)
        target = enforce_asr(target, g.batch, 1)
        t_train = _median_time(_train_step_fn(model, g, target), device, repeats)
        row["train_ms"] = 1e3 * t_train
        row["train_ms_per_atom_epoch"] = row["train_ms"] / n_atoms
        row["paper_train_speedup"] = (
            PAPER["train_ms_per_atom_epoch"][name] / row["train_ms_per_atom_epoch"]
        )
        if device.type == "cuda":
            row["train_peak_memory_GiB"] = torch.cuda.max_memory_allocated(device) / 2**30

    if baseline:
        b: dict = {}
        model.eval()
        gb, tb = _graph(atoms, model, "minimum_image_baseline", device, dtype)
        b["graph_ms"] = 1e3 * tb
        b["n_edges"] = gb.n_edges
        model.tp_impl = "e3nn"
        with torch.no_grad():  # build e3nn's generated modules outside the timing
            model.forward_graph(
                batch_from_atoms(
                    cubic_catio3(), model.r_max, model.r_min, device=device, dtype=dtype
                )
            )
            reps_b = 1 if device.type == "cpu" else repeats
            t_b = _median_time(
                lambda: model.forward_graph(gb),
                device,
                reps_b,
                warmup=0 if device.type == "cpu" else 1,
            )
        b["infer_ms"] = 1e3 * t_b
        b["total_ms_per_atom"] = (b["graph_ms"] + b["infer_ms"]) / n_atoms
        b["ratio_infer"] = b["total_ms_per_atom"] / row["infer_total_ms_per_atom"]
        b["ratio_infer_forward_only"] = b["infer_ms"] / row["infer_ms"]
        if baseline_train and train:
            model.train()
            target = torch.zeros(n_atoms, 3, 3, device=device, dtype=model.dtype)
            reps_b = 1 if device.type == "cpu" else repeats
            t_bt = _median_time(
                _train_step_fn(model, gb, target),
                device,
                reps_b,
                warmup=0 if device.type == "cpu" else 1,
            )
            b["train_ms"] = 1e3 * t_bt
            b["ratio_train"] = b["train_ms"] / row["train_ms"]
        model.tp_impl = "fast"
        row["baseline"] = b
    return row


def _fmt(row: dict) -> str:
    s = (
        f"{row['model']} N={row['n_atoms']:6d} edges={row['n_edges']:7d} | graph {row['graph_ms']:8.1f} ms"
        f" | infer {row['infer_ms']:9.1f} ms = {row['infer_total_ms_per_atom']:.4f} ms/atom (incl. graph)"
    )
    if "train_ms" in row:
        s += f" | train {row['train_ms']:9.1f} ms/step = {row['train_ms_per_atom_epoch']:.4f} ms/atom/epoch"
    if "baseline" in row:
        b = row["baseline"]
        s += f" | paper-style baseline x{b['ratio_infer']:.1f} slower inference"
        if "ratio_train" in b:
            s += f", x{b['ratio_train']:.1f} slower training"
    return s


def machine_info(load_before: list[float], dft_paused: bool, torch_threads: int | None = None) -> dict:
    """The ``machine`` block every bench JSON records (load before/after, DFT paused or not)."""
    import os
    import platform

    return {
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads() if torch_threads is None else torch_threads,
        # neighbour lists (vesin) follow torch's thread count from session 29 (all cores before)
        "vesin_threads": torch.get_num_threads(),
        "load_average_before": load_before,
        "load_average_after": list(os.getloadavg()),
        # asked for AND the pause script reported a paused ABINIT step (it may find none)
        "dft_paused": bool(dft_paused) and _PAUSE["stopped"],
        "note": "shared 2-core VM; the load averages record the other work running (ABINIT is paused only with --pause-dft)",
    }


def versions(e3nn: bool = False) -> dict:
    """The ``versions`` block of a bench JSON: ase_born and torch, and e3nn with ``e3nn``."""
    out = {"ase_born": __version__, "torch": str(torch.__version__)}
    if e3nn:
        out["e3nn"] = E3NN_VERSION
    return out


def write_result(path: str | Path, info: dict, script: str, argv: list[str] | None) -> None:
    """Add the reproducing command and the date to ``info`` and write it as JSON."""
    import datetime
    import json

    info["command"] = f"python bench/{script} " + " ".join(argv if argv is not None else sys.argv[1:])
    info["date"] = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(info, indent=1))
    print(f"# wrote {path}")


#: whether the last ``dft_pause.sh stop`` reported success (machine_info records it)
_PAUSE = {"stopped": False}


def _dft(action: str) -> None:
    script = REPO / "scripts" / "dft_pause.sh"
    ok = script.is_file() and subprocess.run(["bash", str(script), action], check=False).returncode == 0
    if action == "stop":
        _PAUSE["stopped"] = bool(ok)
        if not ok:
            print("# warning: no DFT pipeline step was paused (none running, or the script failed)")


@contextlib.contextmanager
def dft_paused(pause: bool) -> Iterator[None]:
    """Pause the background ABINIT job for the ``with`` block when ``pause`` is set.

    ``scripts/dft_pause.sh stop`` before the block and ALWAYS ``... cont`` after it, also on
    errors and on SIGTERM (turned into ``SystemExit``).  Without ``pause`` nothing happens.
    """
    if pause:

        def _term(signum, frame):
            raise SystemExit(128 + signum)

        signal.signal(signal.SIGTERM, _term)
        _dft("stop")
    try:
        yield
    finally:
        if pause:
            _dft("cont")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--models", nargs="+", default=["BM1", "BM2"], choices=["BM1", "BM2"])
    p.add_argument(
        "--sizes", nargs="+", type=int, default=None, help="atoms per system (multiples of 20)"
    )
    p.add_argument("--devices", nargs="+", default=None, help="default: cpu, and cuda if available")
    p.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument(
        "--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)"
    )
    p.add_argument("--no-train", action="store_true", help="inference only")
    p.add_argument(
        "--baseline-max-atoms",
        type=int,
        default=None,
        help="largest size for the paper-style baseline (default 160 on CPU, 5120 on CUDA; 0 = off)",
    )
    p.add_argument(
        "--baseline-train-max-atoms",
        type=int,
        default=None,
        help="largest size for the baseline TRAINING step (default 0 on CPU, 5120 on CUDA)",
    )
    p.add_argument("--out", default=str(REPO / "bench" / "results"))
    p.add_argument(
        "--pause-dft", action="store_true", help="pause the background ABINIT job during the run"
    )
    args = p.parse_args(argv)

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    devices = args.devices or (["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"])
    with dft_paused(args.pause_dft):
        for dev_name in devices:
            device = torch.device(dev_name)
            kind = device.type
            if kind == "cuda" and not torch.cuda.is_available():
                print("CUDA not available: skipping", file=sys.stderr)
                continue
            sizes = args.sizes or DEFAULT_SIZES[kind]
            bmax = (
                DEFAULT_BASELINE_MAX[kind]
                if args.baseline_max_atoms is None
                else args.baseline_max_atoms
            )
            btmax = (
                DEFAULT_BASELINE_TRAIN_MAX[kind] if args.baseline_train_max_atoms is None
                else args.baseline_train_max_atoms
            )  # fmt: skip
            info = {
                "device": kind,
                "device_name": torch.cuda.get_device_name(device)
                if kind == "cuda"
                else platform.processor() or platform.machine(),
                "threads": torch.get_num_threads(),
                "dtype": args.dtype,
                "repeats": args.repeats,
                "versions": versions(e3nn=True),
                "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                "dft_paused": bool(args.pause_dft) and _PAUSE["stopped"],  # asked for and done
                "paper": PAPER,
                "results": [],
            }
            print(
                f"# device {info['device_name']} ({kind}), {info['threads']} threads, {args.dtype}"
            )
            for name in args.models:
                for n in sizes:
                    row = bench_one(
                        name, n, device, args.dtype, args.repeats,
                        baseline=0 < n <= bmax, baseline_train=0 < n <= btmax, train=not args.no_train,
                    )  # fmt: skip
                    info["results"].append(row)
                    print(_fmt(row), flush=True)
            out = Path(args.out)
            out.mkdir(parents=True, exist_ok=True)
            path = out / f"bench_equivar_{kind}.json"
            path.write_text(json.dumps(info, indent=1))
            print(f"# wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
