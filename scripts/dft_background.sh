#!/usr/bin/env bash
# Background DFT data pipeline (DEVELOPERS.md standing instruction): start at the
# beginning of every work session, from the repository root:
#     setsid nohup bash scripts/dft_background.sh > dft_runs/background.log 2>&1 &
# Everything is resumable; pause for benchmarks with  bash scripts/dft_pause.sh stop|cont
#
# DFT_HOURS (default 2.6): the pipeline stops after that many hours, and starts a structure only
# if its ground state and one field direction are expected to finish before then.  A work
# session here lasts 3 h and its run directories (wavefunctions) do not survive it; finished
# field directions of an unfinished structure do (data/dft/partial/, commit it with the
# dataset), so long structures finish over several sessions.  2.6 h leaves time to commit.
# On a machine that keeps running, set DFT_HOURS=1000.
set -u
cd "$(dirname "$0")/.."
mkdir -p dft_runs
echo $$ > dft_runs/background.pid
# 1) the convergence study (resumes point by point; done points are skipped at once),
# 2) the plan, in its order (every structure type represented early)
ase-born dft converge --ranks 2
ase-born dft run --ranks 2 --hours "${DFT_HOURS:-2.6}"
