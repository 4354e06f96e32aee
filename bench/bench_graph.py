"""Graph building: O(N) vesin neighbour list vs the paper-style O(N²) minimum-image build.

Structures: near-cubic supercells of the 20-atom Pnma CaTiO3 cell
(:func:`ase_born.dft.sampler.pnma_catio3`, repeats from ``bench_equivar.supercell_repeat``),
Equivar cutoffs ``r_min = 0.1 Å < r < r_max = 3.0 Å``.

Two tables, both measured in ONE process, with the sizes interleaved round-robin over the
repeats (so a change of background load hits every column alike):

Every vesin timing is the mean of a block of back-to-back calls (~40k atoms per block);
the tables give the median over ``--repeats`` blocks.

1. ``vs_baseline``: :func:`ase_born.models.graph.neighbor_list` (vesin, all periodic
   images, O(N)) against :func:`ase_born.models.graph.minimum_image_edges_baseline` (the
   paper's all-pairs minimum-image construction, O(N²) time AND memory), same return
   convention, at 160 / 640 / 1280 atoms (``--baseline-max-atoms``; 2560 atoms takes ~35 s
   and ~6.5 GB, 5120 atoms would need ~25 GB: more than this 23 GB box). The edge sets
   are checked to be identical (all cells here are longer than ``2 r_max``), and
   ``ratio = t_baseline / t_vesin`` (median times).
2. ``scaling`` (the "flat within 20 %" figure; the ``*_min`` columns use the fastest block,
   the estimator least sensitive to other jobs' CPU use): vesin cost per atom from 1280 to 20480 atoms, both for the bare
   ``neighbor_list`` call and for what :class:`~ase_born.calculators.equivar.EquivarCalculator`
   does per call (``build_graph`` + ``collate`` to float32 torch tensors);
   ``per_atom_rel`` = per-atom median / per-atom median at the smallest size.

Results are printed and written to ``bench/results/bench_graph.json``.

Usage::

    python bench/bench_graph.py                        # default, ~1.5 min on 2 loaded cores
    python bench/bench_graph.py --pause-dft --threads 1
    python bench/bench_graph.py --baseline-max-atoms 2560
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_equivar import dft_paused, machine_info, supercell_repeat, versions, write_result

from ase_born.dft.sampler import pnma_catio3
from ase_born.models.graph import (
    DEFAULT_R_MAX,
    DEFAULT_R_MIN,
    build_graph,
    collate,
    minimum_image_edges_baseline,
    neighbor_list,
)

REPO = Path(__file__).resolve().parents[1]
BASELINE_SIZES = [160, 640, 1280, 2560, 5120]
SCALING_SIZES = [1280, 2560, 5120, 10240, 20480]


def _timed(fn, inner: int = 1) -> float:
    """Mean wall time (s) of ``inner`` back-to-back calls (one timing block)."""
    t0 = time.perf_counter()
    for _ in range(inner):
        fn()
    return (time.perf_counter() - t0) / inner


def _inner(n: int) -> int:
    """Calls per timing block: ~40k atoms per block, so millisecond calls are not timer noise."""
    return max(3, 40960 // n)


def _edge_set(edge_index: np.ndarray, shifts: np.ndarray) -> set:
    return set(zip(*edge_index.tolist(), *np.rint(shifts).astype(int).T.tolist()))


def _structure(n: int):
    atoms = pnma_catio3().repeat(supercell_repeat(n))
    atoms.rattle(0.02, seed=n)
    return atoms


def bench_vs_baseline(sizes, baseline_max, repeats, baseline_repeats) -> list[dict]:
    """vesin vs O(N²) baseline, sizes interleaved per repeat."""
    rows = {}
    for n in sizes:
        a = _structure(n)
        args = (a.positions, a.cell.array, a.pbc, DEFAULT_R_MAX, DEFAULT_R_MIN)
        rows[n] = {"n_atoms": n, "repeat_abc": list(supercell_repeat(n)), "_args": args,
                   "t_vesin": [], "t_baseline": []}  # fmt: skip
        ei, sh = neighbor_list(*args)  # warm-up + correctness check
        rows[n]["n_edges"] = int(ei.shape[1])
        if n <= baseline_max:
            eb, sb = minimum_image_edges_baseline(*args)
            rows[n]["edges_identical"] = _edge_set(ei, sh) == _edge_set(eb, sb)
    for r in range(repeats):
        for n in sizes:
            row = rows[n]
            row["t_vesin"].append(_timed(lambda args=row["_args"]: neighbor_list(*args), _inner(n)))
            if n <= baseline_max and r < baseline_repeats:
                row["t_baseline"].append(
                    _timed(lambda args=row["_args"]: minimum_image_edges_baseline(*args))
                )
    out = []
    for n in sizes:
        row = rows[n]
        row.pop("_args")
        tv = row.pop("t_vesin")
        tb = row.pop("t_baseline")
        row["vesin_ms"] = 1e3 * statistics.median(tv)
        row["vesin_repeats"] = len(tv)
        if tb:
            row["baseline_ms"] = 1e3 * statistics.median(tb)
            row["baseline_repeats"] = len(tb)
            row["ratio_baseline_over_vesin"] = row["baseline_ms"] / row["vesin_ms"]
        else:
            row["baseline_ms"] = None
            row["baseline_note"] = f"not run (> --baseline-max-atoms {baseline_max}; O(N²) memory)"
        out.append(row)
    return out


def bench_scaling(sizes, repeats) -> list[dict]:
    """vesin per-atom cost (bare neighbour list, and build_graph + collate)."""
    data = {}
    for n in sizes:
        a = _structure(n)
        data[n] = {"atoms": a, "t_nl": [], "t_full": []}
        neighbor_list(a.positions, a.cell.array, a.pbc)  # warm-up
    for _ in range(repeats):
        for n in sizes:
            a = data[n]["atoms"]
            data[n]["t_nl"].append(
                _timed(lambda a=a: neighbor_list(a.positions, a.cell.array, a.pbc), _inner(n))
            )
            data[n]["t_full"].append(
                _timed(lambda a=a: collate([build_graph(a)], dtype="float32"), _inner(n))
            )
    out = []
    for n in sizes:
        d = data[n]
        out.append(
            {
                "n_atoms": n,
                "repeat_abc": list(supercell_repeat(n)),
                "n_edges": int(build_graph(d["atoms"]).n_edges),
                "neighbor_list_ms": 1e3 * statistics.median(d["t_nl"]),
                "neighbor_list_us_per_atom": 1e6 * statistics.median(d["t_nl"]) / n,
                "graph_collate_ms": 1e3 * statistics.median(d["t_full"]),
                "graph_collate_us_per_atom": 1e6 * statistics.median(d["t_full"]) / n,
                "neighbor_list_us_per_atom_min": 1e6 * min(d["t_nl"]) / n,
                "graph_collate_us_per_atom_min": 1e6 * min(d["t_full"]) / n,
                "repeats": repeats,
            }
        )
    for key in ("neighbor_list_us_per_atom", "graph_collate_us_per_atom"):
        for suffix in ("", "_min"):
            ref = out[0][key + suffix]
            for row in out:
                row[key.replace("_us_per_atom", "_per_atom_rel") + suffix] = row[key + suffix] / ref
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--sizes", nargs="+", type=int, default=BASELINE_SIZES)
    p.add_argument("--scaling-sizes", nargs="+", type=int, default=SCALING_SIZES)
    p.add_argument("--baseline-max-atoms", type=int, default=1280)
    p.add_argument("--repeats", type=int, default=11, help="vesin timing blocks (median)")
    p.add_argument("--baseline-repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=1, help="torch threads, which also bound vesin's "
                   "(neighbour list; before session 29 vesin took every core)")
    p.add_argument("--pause-dft", action="store_true", help="pause the ABINIT job meanwhile")
    p.add_argument("--out", default=str(REPO / "bench" / "results" / "bench_graph.json"))
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)

    with dft_paused(args.pause_dft):
        load_before = list(os.getloadavg())
        # the baseline at the largest baselined size is slow: fewer repeats there
        vs = bench_vs_baseline(args.sizes, args.baseline_max_atoms, args.repeats,
                               args.baseline_repeats)  # fmt: skip
        print("# vesin vs paper-style O(N²) minimum-image build (median ms)")
        for r in vs:
            b = "      --" if r["baseline_ms"] is None else f"{r['baseline_ms']:9.1f}"
            ratio = r.get("ratio_baseline_over_vesin")
            rs = f"x{ratio:8.1f}" if ratio else "  (baseline not run)"
            same = r.get("edges_identical", "n/a")
            print(f"N={r['n_atoms']:6d} edges={r['n_edges']:7d} vesin {r['vesin_ms']:8.2f} ms"
                  f" baseline {b} ms  {rs}  identical edges: {same}")  # fmt: skip
        sc = bench_scaling(args.scaling_sizes, args.repeats)
        print("# vesin cost per atom (median)")
        for r in sc:
            print(f"N={r['n_atoms']:6d} edges={r['n_edges']:8d} neighbor_list "
                  f"{r['neighbor_list_us_per_atom']:6.2f} µs/atom (x{r['neighbor_list_per_atom_rel']:.2f})"
                  f" | build_graph+collate {r['graph_collate_us_per_atom']:6.2f} µs/atom "
                  f"(x{r['graph_collate_per_atom_rel']:.2f}) | min over blocks: "
                  f"{r['neighbor_list_us_per_atom_min']:.2f} / {r['graph_collate_us_per_atom_min']:.2f} µs/atom")  # fmt: skip
        for key in ("neighbor_list_us_per_atom", "graph_collate_us_per_atom"):
            for suffix in ("", "_min"):
                v = [r[key + suffix] for r in sc]
                print(f"# flatness {key + suffix}: max/min over sizes = {max(v) / min(v):.2f}")
        info = {
            "benchmark": "graph building: vesin neighbor_list vs minimum_image_edges_baseline; vesin per-atom scaling",
            "r_max": DEFAULT_R_MAX,
            "r_min": DEFAULT_R_MIN,
            "vs_baseline": vs,
            "scaling": sc,
            "machine": machine_info(load_before, args.pause_dft),
            "versions": versions(),
        }
        write_result(args.out, info, "bench_graph.py", argv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
