"""MD-step cost of the field layer (Equivar Z* + field terms) over a bare MACE step, and the
polarization error of updating Z* only every ``born_update_every`` steps.

Setup (offline, no downloaded weights):

* structures: Pnma CaTiO3 (:func:`ase_born.dft.sampler.pnma_catio3`) repeated (2, 2, 2) =
  160 atoms and (4, 2, 4) = 640 atoms, Maxwell-Boltzmann velocities at 300 K;
* force field: ``data/models/mace_catio3.model`` if it exists, else a small randomly
  initialised ``ScaleShiftMACE`` with the hyper-parameters of the project's distillation
  run (2 interactions, hidden 32x0e+32x1o, max_ell 3, correlation 3, 8 Bessel functions,
  r_max 5 Å), run by ``mace.calculators.MACECalculator`` in ``--mace-dtype`` (float32,
  as trained);
* Born model: :class:`~ase_born.calculators.equivar.EquivarCalculator` with a randomly
  initialised Equivar BM2 (float32, ``asr=False``: the field calculator applies the sum
  rule), inside :class:`~ase_born.BornFieldCalculator` (direct mode, field 0.01 V/Å along z);
* dynamics: ASE ``Langevin``, 300 K, 1 fs, friction 0.01 / fs, seeded.

Timing (``ratio``): for every size and ``born_update_every = k`` a fresh calculator runs
``max(--steps, k)`` Langevin steps (so exactly steps/k Z* updates fall in the window) after
one untimed force call. The time spent inside ``MACECalculator.calculate`` and inside
``BornFieldCalculator.calculate`` is accumulated in the SAME steps, so
``ratio = (t_MACE + t_field_layer) / t_MACE`` with ``t_field_layer = t_BornField - t_MACE``
(Equivar forward incl. its neighbour list, displacements, field terms, ASE bookkeeping);
``ratio_md_step`` is the same for whole MD steps (integrator included):
``Σ t_step / (Σ t_step - Σ t_field_layer)``.

P error: the k = 1 run at ``--error-atoms`` (default 160) is extended to ``--error-steps``
steps and its frames are replayed through a BornFieldCalculator with ``born_update_every=k``
(and a zero force field: P does not depend on it). ``p_err_rel = RMS_t |P_k - P_1| /
RMS_t |P_1 - <P_1>|`` (vector norms), i.e. the error relative to the thermal P fluctuation.

Results are printed and written to ``bench/results/bench_field_md.json``.

Usage::

    python bench/bench_field_md.py                   # 160 + 640 atoms, k = 1 5 10 20, ~5 min
    python bench/bench_field_md.py --pause-dft --threads 1
    python bench/bench_field_md.py --sizes 160 --error-steps 100
    python bench/bench_field_md.py --device cuda --sizes 1280 --steps 100 --error-atoms 1280
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ase import units
from ase.calculators.calculator import Calculator, all_changes
from ase.md.langevin import Langevin
from ase.md.velocitydistribution import MaxwellBoltzmannDistribution
from bench_equivar import dft_paused, machine_info, versions, write_result

from ase_born import BornFieldCalculator
from ase_born.calculators.equivar import EquivarCalculator
from ase_born.dft.sampler import pnma_catio3
from ase_born.models.equivar import Equivar, preset

REPO = Path(__file__).resolve().parents[1]
MACE_FILE = REPO / "data" / "models" / "mace_catio3.model"
REPEATS = {160: (2, 2, 2), 640: (4, 2, 4), 1280: (4, 4, 4)}
FIELD = (0.0, 0.0, 0.01)  # V/Å
E_PER_A2_TO_UC_PER_CM2 = 1602.176634


class ZeroForceField(Calculator):
    """Zero energy and forces: a stand-in force field for replaying P along frames."""

    implemented_properties: ClassVar[list[str]] = ["energy", "free_energy", "forces"]

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        Calculator.calculate(self, atoms, properties, system_changes)
        self.results = {"energy": 0.0, "free_energy": 0.0, "forces": np.zeros((len(atoms), 3))}


def mace_factory(dtype: str, device: str = "cpu") -> tuple[Any, str]:
    """``make() -> MACECalculator`` and a description of the model."""
    from mace.calculators import MACECalculator

    if MACE_FILE.is_file():
        desc = f"trained MACE {MACE_FILE.relative_to(REPO)} ({dtype})"
        return (lambda: MACECalculator(model_paths=str(MACE_FILE), device=device,
                                       default_dtype=dtype)), desc  # fmt: skip
    from e3nn import o3
    from mace import modules

    torch.manual_seed(0)
    block = modules.interaction_classes["RealAgnosticResidualInteractionBlock"]
    model = modules.ScaleShiftMACE(
        r_max=5.0, num_bessel=8, num_polynomial_cutoff=5, max_ell=3,
        interaction_cls=block, interaction_cls_first=block, num_interactions=2,
        num_elements=3, hidden_irreps=o3.Irreps("32x0e+32x1o"), MLP_irreps=o3.Irreps("16x0e"),
        atomic_energies=np.zeros(3), avg_num_neighbors=30.0, atomic_numbers=[8, 20, 22],
        correlation=3, gate=torch.nn.functional.silu, atomic_inter_scale=1.0,
        atomic_inter_shift=0.0,
    )  # fmt: skip
    n_par = sum(p.numel() for p in model.parameters())
    desc = (f"small RANDOM ScaleShiftMACE ({n_par} parameters; 2 interactions, 32x0e+32x1o, "
            f"max_ell 3, correlation 3, r_max 5 Å; {dtype}); {MACE_FILE.name} absent")  # fmt: skip
    return (lambda: MACECalculator(models=model, device=device, default_dtype=dtype)), desc


class _Timer:
    """Accumulates the wall time of a wrapped bound method (instance attribute override)."""

    def __init__(self, obj: Any, name: str) -> None:
        self.total = 0.0
        self.calls = 0
        orig = getattr(obj, name)

        def wrapped(*a, **k):
            t0 = time.perf_counter()
            try:
                return orig(*a, **k)
            finally:
                self.total += time.perf_counter() - t0
                self.calls += 1

        setattr(obj, name, wrapped)

    def reset(self) -> None:
        self.total, self.calls = 0.0, 0


def run_md(n_atoms: int, k: int, steps: int, make_ff, born: EquivarCalculator, seed: int,
           record: bool = False) -> dict:  # fmt: skip
    """Langevin run with born_update_every=k; timing split and (optionally) the frames."""
    ref = pnma_catio3().repeat(REPEATS[n_atoms])
    atoms = ref.copy()
    MaxwellBoltzmannDistribution(atoms, temperature_K=300, rng=np.random.default_rng(seed))
    ff = make_ff()
    calc = BornFieldCalculator(ff, born, field=FIELD, reference=ref, born_update_every=k)
    atoms.calc = calc
    t_ff = _Timer(ff, "calculate")
    t_calc = _Timer(calc, "calculate")
    t_born = _Timer(born, "get_born_charges")
    dyn = Langevin(atoms, 1.0 * units.fs, temperature_K=300, friction=0.01 / units.fs,
                   rng=np.random.default_rng(seed + 1))  # fmt: skip
    atoms.get_forces()  # untimed: config 0 (first Z*), warm caches
    frames = [(atoms.positions.copy(), atoms.cell.array.copy(),
               calc.get_property("polarization", atoms).copy())]  # fmt: skip
    for t in (t_ff, t_calc, t_born):
        t.reset()
    t_steps = []
    for _ in range(steps):
        t0 = time.perf_counter()
        dyn.run(1)
        t_steps.append(time.perf_counter() - t0)
        if record:
            frames.append((atoms.positions.copy(), atoms.cell.array.copy(),
                           calc.get_property("polarization", atoms).copy()))  # fmt: skip
    ts = float(np.sum(t_steps))
    t_layer = t_calc.total - t_ff.total
    row = {
        "n_atoms": n_atoms,
        "born_update_every": k,
        "steps": steps,
        "z_updates": t_born.calls,
        "t_mace_ms_per_step": 1e3 * t_ff.total / steps,
        "t_field_layer_ms_per_step": 1e3 * t_layer / steps,
        "t_equivar_ms_per_step": 1e3 * t_born.total / steps,
        "t_equivar_ms_per_update": 1e3 * t_born.total / max(t_born.calls, 1),
        "t_md_step_ms": 1e3 * ts / steps,
        "md_steps_per_s": steps / ts,
        "ratio": (t_ff.total + t_layer) / t_ff.total,
        "ratio_md_step": ts / (ts - t_layer),
        "max_displacement_A": float(np.abs(calc.results["displacements"]).max()),
    }
    if record:
        row["_frames"] = frames
    return row


def p_error(frames, n_atoms: int, born: EquivarCalculator, ks: list[int]) -> list[dict]:
    """Replay the k = 1 frames with born_update_every = k; P error relative to P fluctuation."""
    ref = pnma_catio3().repeat(REPEATS[n_atoms])
    p1 = np.array([f[2] for f in frames])
    fluct = float(np.sqrt(np.mean(np.sum((p1 - p1.mean(axis=0)) ** 2, axis=1))))
    out = []
    for k in ks:
        calc = BornFieldCalculator(ZeroForceField(), born, field=FIELD, reference=ref,
                                   born_update_every=k)  # fmt: skip
        atoms = ref.copy()
        atoms.calc = calc
        pk = []
        for pos, cell, _ in frames:
            atoms.cell = cell
            atoms.positions = pos
            pk.append(calc.get_property("polarization", atoms).copy())
        pk = np.array(pk)
        rms = float(np.sqrt(np.mean(np.sum((pk - p1) ** 2, axis=1))))
        out.append({
            "born_update_every": k,
            "frames": len(frames),
            "p_err_rms_e_per_A2": rms,
            "p_err_rms_uC_per_cm2": rms * E_PER_A2_TO_UC_PER_CM2,
            "p_fluct_rms_e_per_A2": fluct,
            "p_fluct_rms_uC_per_cm2": fluct * E_PER_A2_TO_UC_PER_CM2,
            "p_err_rel": rms / fluct,
            "p_err_max_e_per_A2": float(np.max(np.linalg.norm(pk - p1, axis=1))),
        })  # fmt: skip
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--sizes", nargs="+", type=int, default=[160, 640], choices=sorted(REPEATS))
    p.add_argument("--ks", nargs="+", type=int, default=[1, 5, 10, 20])
    p.add_argument("--steps", type=int, default=10, help="timed steps per run (at least k)")
    p.add_argument("--error-atoms", type=int, default=160)
    p.add_argument("--error-steps", type=int, default=60, help="length of the P-error trajectory")
    p.add_argument("--mace-dtype", default="float32", choices=["float32", "float64"])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--device", default="cpu", help="MACE and Equivar device (cpu, cuda)")
    p.add_argument("--pause-dft", action="store_true", help="pause the ABINIT job meanwhile")
    p.add_argument("--born-model", default="random", help="'random' (BM2, random weights) or 'default' "
                   "(the shipped trained Equivar: its Z*(R) varies like a real model's, which is what the "
                   "P error of born_update_every depends on) or a model file")
    p.add_argument("--out", default=str(REPO / "bench" / "results" / "bench_field_md.json"))
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    with dft_paused(args.pause_dft):
        load_before = list(os.getloadavg())
        make_ff, ff_desc = mace_factory(args.mace_dtype, args.device)
        torch.manual_seed(0)
        if args.born_model == "random":
            net, born_desc = Equivar(preset("BM2"), dtype="float32"), "Equivar BM2 (random weights)"
        elif args.born_model == "default":
            from ase_born.defaults import model_card, models_dir

            entry = model_card()["born_model"]
            net, born_desc = str(models_dir() / entry["file"]), f"default Equivar {entry['file']}"
        else:
            net, born_desc = args.born_model, f"Equivar {args.born_model}"
        born = EquivarCalculator(net, device=args.device, dtype="float32", asr=False)
        print(f"# force field: {ff_desc}\n# born model: {born_desc}, float32")
        rows, errors = [], []
        for n in args.sizes:
            for k in args.ks:
                rec = n == args.error_atoms and k == 1
                steps = max(args.error_steps if rec else args.steps, k)
                r = run_md(n, k, steps, make_ff, born, seed=n, record=rec)
                frames = r.pop("_frames", None)
                rows.append(r)
                print(f"N={n:5d} k={k:3d} steps={steps:3d} Z*-updates={r['z_updates']:3d} | MACE "
                      f"{r['t_mace_ms_per_step']:8.1f} ms | field layer {r['t_field_layer_ms_per_step']:7.1f}"
                      f" ms (Equivar {r['t_equivar_ms_per_update']:6.1f} ms/update) | "
                      f"ratio {r['ratio']:.3f} (whole MD step {r['ratio_md_step']:.3f}, "
                      f"{r['md_steps_per_s']:.2f} steps/s)", flush=True)  # fmt: skip
                if frames is not None:
                    errors = p_error(frames, n, born, args.ks)
                    for e in errors:
                        print(f"  P error k={e['born_update_every']:3d}: RMS {e['p_err_rms_uC_per_cm2']:.4f}"
                              f" µC/cm² = {e['p_err_rel']:.4f} x RMS fluctuation "
                              f"({e['p_fluct_rms_uC_per_cm2']:.3f} µC/cm²) over {e['frames']} frames")  # fmt: skip
        info = {
            "benchmark": "BornFieldCalculator(MACE, EquivarCalculator BM2) Langevin MD step vs bare MACE",
            "force_field": ff_desc,
            "born_model": f"EquivarCalculator({born_desc}, float32, asr=False); field calc asr=True, direct mode",
            "field_V_per_A": list(FIELD),
            "md": "ASE Langevin 300 K, 1 fs, friction 0.01/fs, Maxwell-Boltzmann start at the Pnma reference",
            "timing": rows,
            "p_error": {"n_atoms": args.error_atoms, "rows": errors},
            "device": args.device,
            "machine": machine_info(load_before, args.pause_dft),
            "versions": versions(),
        }
        write_result(args.out, info, "bench_field_md.py", argv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
