"""Equivar forward: the project's fast tensor product vs e3nn 0.4.4's stock ``TensorProduct``.

The SAME network and weights (random, seed 0; timing does not depend on their values) run
through both implementations of :class:`ase_born.models.equivar.Equivar` on the same graph
(near-cubic Pnma CaTiO3 supercell, default 640 atoms, vesin graph, float32, no gradients):

* ``tp_impl="fast"``: the project's factorised per-path matmul + channel-wise CG form;
* ``tp_impl="e3nn"``: stock ``e3nn.o3.Linear`` + ``e3nn.o3.TensorProduct`` (19 weighted
  ``'uvu'`` instructions), i.e. the identical network built on the stock library.

Side by side in one process: fast timings (median of ``--repeats``) are taken before AND
after the stock run(s), the stock module is built on a 5-atom cell outside the timing, and
the stock forward is timed ``--stock-repeats`` times (default 1: ~1 min for BM2 at 640
atoms on this CPU). ``ratio = t_stock / t_fast``; ``max_abs_diff`` is the largest
difference of the raw Z* (e) between the two, and ``rel_diff`` that over ``max |Z*|``.
The fast forward is also timed with ``--threads-fast`` threads (default 1 and 2), for the
"BM2 forward <= 1.2 ms/atom on 2 cores" goal.

``tp_impl="compiled"`` (the fast form through ``torch.compile``) is timed in the same run
unless ``--no-compiled``: the one-off compilation (``compile_s``), then the median of
``--repeats`` interleaved with fast forwards (``ratio_fast_over_compiled``), and its
largest Z* difference from the fast path (``compiled_max_abs_diff_e``).

Results are printed and written to ``bench/results/bench_equivar_impl.json``.

Usage::

    python bench/bench_equivar_impl.py                       # BM2, 640 atoms, ~2 min
    python bench/bench_equivar_impl.py --models BM2 BM1      # + BM1 (stock BM1 ~5 min more)
    python bench/bench_equivar_impl.py --pause-dft
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_equivar import (
    _median_time,
    dft_paused,
    machine_info,
    supercell_repeat,
    versions,
    write_result,
)

from ase_born.dft.sampler import cubic_catio3, pnma_catio3
from ase_born.models.equivar import Equivar, preset
from ase_born.models.graph import batch_from_atoms

REPO = Path(__file__).resolve().parents[1]
CPU = torch.device("cpu")


def _bench_compiled(model: Equivar, g, z_fast: torch.Tensor, repeats: int) -> dict:
    """Compile time, then fast and compiled forwards interleaved (medians), Z* difference."""
    model.tp_impl = "compiled"
    t0 = time.perf_counter()
    _, z_comp = model.forward_graph(g, return_raw=True)
    compile_s = time.perf_counter() - t0
    t_fast, t_comp = [], []
    for _ in range(repeats):
        for impl, ts in (("fast", t_fast), ("compiled", t_comp)):
            model.tp_impl = impl
            t0 = time.perf_counter()
            model.forward_graph(g)
            ts.append(time.perf_counter() - t0)
    model.tp_impl = "fast"
    diff = (z_comp - z_fast).abs().max().item()
    return {
        "compile_s": compile_s,
        "fast_ms_interleaved": 1e3 * statistics.median(t_fast),
        "compiled_ms": 1e3 * statistics.median(t_comp),
        "ratio_fast_over_compiled": statistics.median(t_fast) / statistics.median(t_comp),
        "compiled_max_abs_diff_e": diff,
        "compiled_identical_to_1e-5": diff <= 1e-5 * max(1.0, z_fast.abs().max().item()),
    }


def bench_model(name: str, n_atoms: int, dtype: str, repeats: int, stock_repeats: int,
                threads_fast: list[int], compiled: bool = True) -> dict:  # fmt: skip
    torch.manual_seed(0)
    atoms = pnma_catio3().repeat(supercell_repeat(n_atoms))
    atoms.rattle(0.02, seed=0)
    model = Equivar(preset(name), device="cpu", dtype=dtype).eval()
    g = batch_from_atoms(atoms, model.r_max, model.r_min, dtype=dtype)
    row: dict = {"model": name, "n_atoms": n_atoms, "n_edges": g.n_edges,
                 "params": model.num_parameters(), "dtype": dtype}  # fmt: skip
    base_threads = torch.get_num_threads()
    with torch.no_grad():
        model.tp_impl = "fast"
        _, z_fast = model.forward_graph(g, return_raw=True)
        t_fast_before = _median_time(lambda: model.forward_graph(g), CPU, repeats)
        model.tp_impl = "e3nn"
        model.forward_graph(batch_from_atoms(cubic_catio3(), model.r_max, model.r_min, dtype=dtype))
        t_stock, z_stock = [], None
        for _ in range(stock_repeats):
            t0 = time.perf_counter()
            _, z_stock = model.forward_graph(g, return_raw=True)
            t_stock.append(time.perf_counter() - t0)
        model.tp_impl = "fast"
        t_fast_after = _median_time(lambda: model.forward_graph(g), CPU, repeats)
        if compiled:
            row.update(_bench_compiled(model, g, z_fast, repeats))
        per_threads = {}
        for nt in threads_fast:
            torch.set_num_threads(nt)
            per_threads[str(nt)] = 1e3 * _median_time(lambda: model.forward_graph(g), CPU, repeats)
        torch.set_num_threads(base_threads)
    t_fast = statistics.median([t_fast_before, t_fast_after])
    diff = (z_fast - z_stock).abs().max().item()
    row.update(
        {
            "fast_ms": 1e3 * t_fast,
            "fast_ms_before_after_stock": [1e3 * t_fast_before, 1e3 * t_fast_after],
            "fast_repeats": repeats,
            "stock_ms": 1e3 * statistics.median(t_stock),
            "stock_repeats": stock_repeats,
            "ratio_stock_over_fast": statistics.median(t_stock) / t_fast,
            "max_abs_diff_e": diff,
            "max_abs_z_e": z_fast.abs().max().item(),
            "rel_diff": diff / max(z_fast.abs().max().item(), 1e-30),
            "identical_to_1e-5": diff <= 1e-5 * max(1.0, z_fast.abs().max().item()),
            "fast_ms_by_threads": per_threads,
            "fast_ms_per_atom_by_threads": {k: v / n_atoms for k, v in per_threads.items()},
        }
    )
    return row


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--models", nargs="+", default=["BM2"], choices=["BM1", "BM2"])
    p.add_argument("--n-atoms", type=int, default=640)
    p.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    p.add_argument("--repeats", type=int, default=5, help="fast-path repeats (median)")
    p.add_argument("--stock-repeats", type=int, default=1)
    p.add_argument(
        "--threads", type=int, default=1, help="torch threads of the fast-vs-stock ratio"
    )
    p.add_argument("--threads-fast", nargs="+", type=int, default=[1, 2])
    p.add_argument("--no-compiled", action="store_true", help="skip tp_impl='compiled'")
    p.add_argument("--pause-dft", action="store_true", help="pause the ABINIT job meanwhile")
    p.add_argument("--out", default=str(REPO / "bench" / "results" / "bench_equivar_impl.json"))
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    with dft_paused(args.pause_dft):
        load_before = list(os.getloadavg())
        rows = []
        for name in args.models:
            r = bench_model(name, args.n_atoms, args.dtype, args.repeats, args.stock_repeats,
                            args.threads_fast, not args.no_compiled)  # fmt: skip
            rows.append(r)
            thr = ", ".join(f"{k} thr {v:.3f}" for k, v in r["fast_ms_per_atom_by_threads"].items())
            print(f"{name} N={r['n_atoms']} edges={r['n_edges']} {args.dtype} | fast {r['fast_ms']:8.1f} ms"
                  f" | stock e3nn {r['stock_ms']:9.1f} ms | x{r['ratio_stock_over_fast']:.1f}"
                  f" | max|dZ| {r['max_abs_diff_e']:.2e} e (max|Z| {r['max_abs_z_e']:.2f})"
                  f" | fast ms/atom: {thr}", flush=True)  # fmt: skip
            if "compiled_ms" in r:
                print(f"{name} compiled: {r['compiled_ms']:.1f} ms vs fast {r['fast_ms_interleaved']:.1f} ms"
                      f" | x{r['ratio_fast_over_compiled']:.2f} | compile {r['compile_s']:.0f} s"
                      f" | max|dZ| {r['compiled_max_abs_diff_e']:.2e} e", flush=True)  # fmt: skip
        info = {
            "benchmark": "Equivar forward, tp_impl fast vs stock e3nn TensorProduct (and vs compiled), same weights and graph",
            "results": rows,
            "machine": machine_info(load_before, args.pause_dft, torch_threads=args.threads),
            "versions": versions(e3nn=True),
        }
        write_result(args.out, info, "bench_equivar_impl.py", argv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
