"""Forward-time benchmark of the Equivar network on Pnma CaTiO3 supercells.

Run ``python -m ase_born.models.benchmark --help``. Prints one line per
(supercell, implementation) with the median wall time of the forward pass (no
gradients), the number of atoms and edges, and the torch thread count.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from ase import Atoms

from ase_born.models.equivar import Equivar, preset
from ase_born.models.graph import batch_from_atoms


def catio3_pnma(repeat: tuple[int, int, int] = (1, 1, 1)) -> Atoms:
    """Pnma CaTiO3 (REFERENCE.md: a = 5.4423, b = 7.6401, c = 5.3796 Å; 20 atoms per cell).

    ``b`` (7.64 Å) is the long axis: ``repeat=(2, 1, 2)`` gives 80 atoms,
    ``(4, 2, 4)`` the near-cubic 640-atom cell.
    """
    from ase.spacegroup import crystal

    atoms = crystal(
        ["Ca", "Ti", "O", "O"],
        basis=[
            (0.03442, 0.25, 0.99349),
            (0.5, 0.0, 0.0),
            (0.48394, 0.25, 0.07113),
            (0.28887, 0.03716, 0.71056),
        ],
        spacegroup=62,
        cellpar=[5.4423, 7.6401, 5.3796, 90, 90, 90],
    )
    return atoms.repeat(repeat)


def time_forward(
    model: Equivar, atoms: Atoms, *, repeats: int = 3, warmup: int = 1
) -> tuple[float, int]:
    """Median forward wall time (s) and the number of edges."""
    graph = batch_from_atoms(
        atoms, model.r_max, model.r_min, device=model.device, dtype=model.dtype
    )
    times = []
    with torch.no_grad():
        for k in range(warmup + repeats):
            t0 = time.perf_counter()
            model.forward_graph(graph)
            if model.device.type == "cuda":
                torch.cuda.synchronize()
            if k >= warmup:
                times.append(time.perf_counter() - t0)
    return statistics.median(times), graph.n_edges


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--preset", default="BM2")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--impl", nargs="+", default=["fast", "e3nn"])
    parser.add_argument("--repeat", nargs="+", default=["2,1,2", "4,2,4"])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    model = Equivar(preset(args.preset), device=args.device, dtype=args.dtype)
    model.eval()
    for rep in args.repeat:
        atoms = catio3_pnma(tuple(int(v) for v in rep.split(",")))  # type: ignore[arg-type]
        for impl in args.impl:
            model.tp_impl = impl
            reps = args.repeats if impl == "fast" else 1
            t, n_edges = time_forward(model, atoms, repeats=reps)
            print(
                f"{args.preset} {args.dtype} {args.device} impl={impl:5s} atoms={len(atoms):5d} "
                f"edges={n_edges:6d} threads={torch.get_num_threads()} forward={t * 1e3:9.1f} ms "
                f"({t / len(atoms) * 1e3:.3f} ms/atom)"
            )


if __name__ == "__main__":  # pragma: no cover
    main()
