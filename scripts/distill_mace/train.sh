#!/usr/bin/env bash
# Train the small default MACE for CaTiO3 on SevenNet-0 labels with mace-torch's own trainer.
#
#   nice -n 5 nohup bash scripts/distill_mace/train.sh > runs/distill/train.log 2>&1 &
#
# Continue a killed run (same command; --restart_latest loads the newest checkpoint):
#   nice -n 5 nohup bash scripts/distill_mace/train.sh >> runs/distill/train.log 2>&1 &
#
# Extra arguments are passed on to mace_run_train (a repeated flag overrides the one above).
# Environment overrides: DATA (sample.py's --out), WORK (run folder), EPOCHS, STAGE2 (epoch at
# which stage two starts), THREADS (torch CPU threads), DEVICE (cpu/cuda), SEED.
#
# Model: ScaleShiftMACE (MACE with the mean per-atom interaction energy and the RMS force of
# the training set as output shift/scale, so the ~-6 eV/atom cohesive energy need not be learnt
# from zero; with plain "MACE" the energy RMSE was still 4 eV/atom after one epoch), 2 interactions, 32x0e+32x1o hidden features (num_channels 32, max_L 1),
# correlation 3, r_max 5 Å (= SevenNet-0's cutoff), 8 Bessel radial functions.
# Precision: trained in float32 (about 2x faster than float64 on CPU). The saved model is
# loaded by MACECalculator(..., default_dtype="float64") for MD, which casts the weights to
# float64, so MD energies/forces are evaluated in double precision (energy conservation).
# E0s: the teacher's isolated-atom energies (sample.py writes e0s.json), so the MACE energy is
# on the teacher's absolute scale and "average" E0s (degenerate for a fixed 1:1:3
# stoichiometry) are avoided.
# Loss: MSE on energy/atom, forces and stress ("stress"); stage two (SWA-style, from epoch
# STAGE2) raises the energy and stress weights and lowers the learning rate.
# Budget and threads: one training step costs ~6 ms of CPU per atom (float32, 1 thread), so an
# epoch over the ~7,100 training atoms is ~1-1.5 min on one free core. Use ONE thread on a
# shared machine: with 2 OpenMP threads competing with other jobs an epoch took ~5x longer.
# On a free machine raise EPOCHS/STAGE2 (e.g. 150/110).
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$REPO"
DATA="${DATA:-runs/distill/data}"
WORK="${WORK:-runs/distill/train}"
EPOCHS="${EPOCHS:-50}"
STAGE2="${STAGE2:-38}"
THREADS="${THREADS:-1}"
DEVICE="${DEVICE:-cpu}"
SEED="${SEED:-1}"
mkdir -p "$WORK"

E0S="$(python - "$DATA/e0s.json" <<'PY'
import json, sys
from ase.io import read
e0 = {int(k): v for k, v in json.load(open(sys.argv[1])).items()}
zs = sorted({int(z) for a in read(sys.argv[1].replace("e0s.json", "train.xyz"), ":") for z in a.numbers})
print("{" + ", ".join(f"{z}: {e0[z]!r}" for z in zs) + "}")
PY
)"
echo "E0s: $E0S"

export OMP_NUM_THREADS="$THREADS" MKL_NUM_THREADS="$THREADS"
exec mace_run_train \
    --name mace_catio3 \
    --seed "$SEED" \
    --work_dir "$WORK" \
    --log_dir "$WORK/logs" --checkpoints_dir "$WORK/checkpoints" \
    --results_dir "$WORK/results" --model_dir "$WORK" \
    --train_file "$DATA/train.xyz" --valid_file "$DATA/valid.xyz" --test_file "$DATA/test.xyz" \
    --energy_key REF_energy --forces_key REF_forces --stress_key REF_stress \
    --E0s "$E0S" \
    --model ScaleShiftMACE --num_interactions 2 --num_channels 32 --max_L 1 --correlation 3 \
    --r_max 5.0 --num_radial_basis 8 --num_cutoff_basis 5 \
    --compute_stress True --compute_forces True \
    --loss stress --energy_weight 1 --forces_weight 100 --stress_weight 1000 \
    --stage_two --start_stage_two "$STAGE2" --stage_two_lr 0.001 \
    --stage_two_energy_weight 1000 --stage_two_forces_weight 100 --stage_two_stress_weight 10000 \
    --ema --ema_decay 0.99 --amsgrad --lr 0.01 --scheduler_patience 5 \
    --batch_size 4 --valid_batch_size 8 --max_num_epochs "$EPOCHS" --patience 50 \
    --eval_interval 1 --error_table PerAtomRMSEstressvirials \
    --default_dtype float32 --device "$DEVICE" --save_cpu --restart_latest \
    "$@"
