"""torch.profiler table of one Equivar forward (the profile behind docs/benchmarks.md).

Same model and graph as ``bench_equivar_impl.py`` (random BM2 weights, 640-atom rattled
Pnma CaTiO3, float32, no gradients, 1 thread). Prints the ops sorted by self CPU time for
``tp_impl="fast"`` and, unless ``--no-compiled``, for ``tp_impl="compiled"`` (compiled
once before profiling).

Usage::

    python bench/profile_equivar.py --pause-dft
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_equivar import dft_paused, supercell_repeat

from ase_born.dft.sampler import pnma_catio3
from ase_born.models.equivar import Equivar
from ase_born.models.graph import batch_from_atoms


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="BM2", choices=["BM1", "BM2"])
    p.add_argument("--n-atoms", type=int, default=640)
    p.add_argument("--forwards", type=int, default=3)
    p.add_argument("--rows", type=int, default=12)
    p.add_argument("--no-compiled", action="store_true")
    p.add_argument("--pause-dft", action="store_true", help="pause the ABINIT job meanwhile")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    torch.manual_seed(0)
    atoms = pnma_catio3().repeat(supercell_repeat(args.n_atoms))
    atoms.rattle(0.02, seed=0)
    model = Equivar(args.model, device="cpu", dtype="float32").eval()
    g = batch_from_atoms(atoms, model.r_max, model.r_min, dtype="float32")
    impls = ["fast"] if args.no_compiled else ["fast", "compiled"]
    with dft_paused(args.pause_dft), torch.no_grad():
        for impl in impls:
            model.tp_impl = impl
            model.forward_graph(g)  # warm-up (compiles "compiled")
            with profile(activities=[ProfilerActivity.CPU]) as prof:
                for _ in range(args.forwards):
                    model.forward_graph(g)
            print(f"## {args.model}, {len(atoms)} atoms, {g.n_edges} edges, tp_impl={impl!r},"
                  f" {args.forwards} forwards")  # fmt: skip
            print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
