"""``ase-born train | evaluate | predict``: train the Equivar network and use the result.

Examples
--------
::

    ase-born train examples/configs/equivar_tiny_cpu.yaml
    ase-born train examples/configs/equivar_bm2_catio3.yaml --resume
    torchrun --nproc_per_node 4 -m ase_born.cli.main train CONFIG.yaml     # multi-GPU (DDP)
    ase-born evaluate runs/equivar_tiny_cpu/model.pt data.extxyz --split test --plots plots/
    ase-born predict runs/equivar_tiny_cpu/model.pt structures.extxyz -o predicted.extxyz
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from ase_born.cli._errors import output_refusal, positive_int, reports_errors


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``train``, ``evaluate`` and ``predict`` subcommands."""
    p = subparsers.add_parser(
        "train",
        help="train an Equivar Born-charge model from a YAML config",
        description=(
            "Train Equivar on extxyz Born-charge data (paper recipe by default: L1 over the 9 "
            "components between the raw network output and the sum-rule-corrected DFT Z*, "
            "AdamW, lr 5e-3, best-validation checkpoint, "
            "final metrics on TEST). Writes checkpoints, log.csv, model.pt, metrics.json and plots "
            "to the config's out directory. Multi-GPU: launch with torchrun."
        ),
    )
    p.add_argument("config", help="training config (YAML; see ase_born.train.config.TrainConfig)")
    p.add_argument("--resume", action="store_true", help="continue from <out>/checkpoints/last.pt")
    p.add_argument(
        "--device", default=None, help="override the config's device (auto, cpu, cuda, cuda:N)"
    )
    p.add_argument("--epochs", type=int, default=None, help="override the number of epochs")
    p.add_argument("--out", default=None, help="override the output directory")
    p.add_argument(
        "--threads", type=positive_int, default=None, help="torch CPU threads (default: torch's choice)"
    )
    p.add_argument(
        "--quiet", action="store_true", help="no per-epoch log lines and no progress bars"
    )
    p.set_defaults(func=_train)

    e = subparsers.add_parser(
        "evaluate",
        help="metrics of a trained model on an extxyz dataset (prints JSON)",
        description=(
            "Evaluate a model written by `ase-born train` (model.pt) on frames with "
            "born_effective_charges. Errors are computed on sum-rule-corrected values; the "
            "raw-output sum-rule violation is reported as asr_violation_mae."
        ),
    )
    e.add_argument("model", help="model file (Equivar.save format, e.g. <out>/model.pt)")
    e.add_argument("data", help="extxyz file with born_effective_charges")
    e.add_argument(
        "--split",
        choices=("all", "test", "train"),
        default="all",
        help="frames to use: all, those with info['split'] == 'test', or the others (default all)",
    )
    e.add_argument("--plots", default=None, metavar="DIR", help="write a parity plot (PNG) to DIR")
    e.add_argument("--device", default="cpu")
    e.add_argument("--batch-size", type=positive_int, default=16)
    e.add_argument("-o", "--output", default=None, help="also write the metrics JSON to this file "
                   "(replaced if it exists; never one of the inputs)")
    e.set_defaults(func=_evaluate)

    q = subparsers.add_parser(
        "predict",
        help="predict Born charges for structures and write them as extxyz",
        description=(
            "Predict Z*[k, b, a] (b = field, a = displacement; e) for every structure of a file "
            "that ASE can read, and write extxyz frames with per-atom born_effective_charges "
            "(existing Born charges in the input are replaced)."
        ),
    )
    q.add_argument("model", help="model file (Equivar.save format)")
    q.add_argument("structures", help="structure file (any format ase.io.read understands)")
    q.add_argument("-o", "--output", required=True, help="output extxyz file (an existing one is refused "
                   "unless --overwrite; never one of the inputs)")
    q.add_argument("--overwrite", action="store_true", help="replace an existing OUTPUT")
    q.add_argument("--device", default="cpu")
    q.add_argument("--batch-size", type=positive_int, default=16)
    q.add_argument("--raw", action="store_true",
                   help="write the network's raw output; by default the acoustic sum rule is "
                        "enforced per structure, as in the training metrics and `evaluate`")
    q.set_defaults(func=_predict)


@reports_errors
def _train(args: argparse.Namespace) -> int:
    import logging

    import torch

    from ase_born.train.config import TrainConfig
    from ase_born.train.trainer import train

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    cfg = TrainConfig.from_yaml(args.config)
    changes = {
        k: v
        for k, v in (("device", args.device), ("epochs", args.epochs), ("out", args.out))
        if v is not None
    }
    if args.quiet:
        changes["progress"] = False
    cfg = cfg.replace(**changes)
    main_process = int(os.environ.get("RANK", "0")) == 0  # torchrun sets RANK
    log = logging.getLogger("ase_born.train")
    if not args.quiet and main_process and not log.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)
    result = train(cfg, resume=args.resume)
    if main_process:
        print(json.dumps(_summary(result.to_dict()), indent=1))
    if result.status != "completed":
        print(f"ase-born train: {result.stopped_reason}; best checkpoint kept", file=sys.stderr)
        return 1
    return 0


def _summary(d: dict) -> dict:
    keep = (
        "mae",
        "rmse",
        "mae_diag",
        "mae_offdiag",
        "rmspe_diag",
        "asr_violation_mae",
        "mae_per_species",
    )
    out = {k: d[k] for k in ("status", "stopped_reason", "out", "best_epoch", "epochs_completed")}
    for part in ("val", "test"):
        m = d.get(part)
        out[part] = None if m is None else {k: m.get(k) for k in keep if k in m}
    return out


def _load_model(path: str, device: str):
    from ase_born.models.equivar import Equivar

    return Equivar.load(path, device=device)


@reports_errors
def _evaluate(args: argparse.Namespace) -> int:
    from ase_born.train.dataset import BornDataset, read_extxyz, split_tag
    from ase_born.train.evaluation import evaluate

    refusal = None if args.output is None else output_refusal(args.output, [args.data, args.model], replace_ok=True)
    if refusal is not None:  # -o data.xyz replaced the dataset with the metrics JSON
        print(f"ase-born evaluate: error: {refusal}", file=sys.stderr)
        return 1
    model = _load_model(args.model, args.device)
    frames = read_extxyz(args.data)
    if args.split != "all":
        frames = [
            a for i, a in enumerate(frames) if split_tag(a, f"{args.data}, frame {i}") == args.split
        ]
        if not frames:
            print(
                f"ase-born evaluate: no frames with split {args.split!r} in {args.data}",
                file=sys.stderr,
            )
            return 1
    ds = BornDataset.from_frames(
        frames,
        r_max=model.r_max,
        r_min=model.r_min,
        num_species=model.config.num_species,
        source=args.data,
    )
    metrics, preds = evaluate(model, ds, batch_size=args.batch_size, return_predictions=True)
    metrics = {"model": args.model, "data": args.data, "split": args.split, **metrics}
    text = json.dumps(metrics, indent=1)
    print(text)
    if args.output:
        from ase_born.train.checkpoint import atomic_write_text

        atomic_write_text(text, args.output)
    if args.plots:
        from pathlib import Path

        from ase_born.train.plots import parity_plot

        path = Path(args.plots) / f"parity_{args.split}.png"
        parity_plot(
            preds.pred,
            preds.target,
            preds.numbers,
            path,
            title=f"{args.data} ({args.split}): MAE {metrics['mae']:.4f} e",
        )
        print(f"parity plot: {path}", file=sys.stderr)
    return 0


@reports_errors
def _predict(args: argparse.Namespace) -> int:
    from pathlib import Path

    import ase.io

    from ase_born.io.extxyz import read_frames, set_born_charges, write_frames
    from ase_born.train.evaluation import predict_born_charges

    refusal = output_refusal(args.output, [args.structures, args.model], replace_ok=args.overwrite)
    if refusal is not None:  # predict data.xyz -o data.xyz replaced its DFT Born charges
        print(f"ase-born predict: error: {refusal}", file=sys.stderr)
        return 1
    model = _load_model(args.model, args.device)
    src = Path(args.structures)
    if src.suffix in (".xyz", ".extxyz"):
        frames = read_frames(src)
    else:
        frames = ase.io.read(str(src), index=":")
    if not frames:
        print(f"ase-born predict: no structures in {src}", file=sys.stderr)
        return 1
    charges = predict_born_charges(model, frames, batch_size=args.batch_size, asr=not args.raw)
    for atoms, z in zip(frames, charges):
        set_born_charges(atoms, z)
        atoms.info["born_charges_model"] = Path(args.model).name
        atoms.info["born_charges_asr_enforced"] = bool(not args.raw or model.asr)
    write_frames(args.output, frames)
    print(
        f"wrote {len(frames)} frame(s) with predicted born_effective_charges to {args.output}",
        file=sys.stderr,
    )
    return 0
