#!/usr/bin/env bash
# Background DFT data pipeline (DEVELOPERS.md standing instruction): start at the
# beginning of every work session, from the repository root:
#     setsid nohup bash scripts/dft_background.sh > dft_runs/background.log 2>&1 &
# Everything is resumable; pause for benchmarks with  bash scripts/dft_pause.sh stop|cont
#
# DFT_HOURS (default 2.6): the pipeline stops after that many hours (2.6 h of a 3 h work session
# leaves time to commit); it starts a structure, and each ABINIT step, only when it is expected to
# finish before then, and pauses a structure before a step that is not.  Finished field
# directions of an unfinished structure are copied to data/dft/partial/ (commit it with the
# dataset), so long structures finish over several sessions even when the run directories
# (wavefunctions) are lost with the machine.  On a machine that keeps running, DFT_HOURS=1000.
# DFT_STEP_LEVEL (default auto): yes lets a structure span sessions step by step (its run
# directory survives: the case from session 6 on; 20-atom cells need it, their ground state and
# one direction take ~3 h); no requires its ground state and a whole field direction to fit
# (a fresh machine each session); auto: yes when dft_runs/ holds steps of unfinished structures.
# DFT_COMMIT (default 0): 1 commits data/dft (finished frames, carried directions) to git every
# 15 min while the pipeline runs and once when it stops, so the data land even when the work
# session ends without a hand-made commit.  Only data/dft goes into these commits.
set -u
cd "$(dirname "$0")/.."
mkdir -p dft_runs
echo $$ > dft_runs/background.pid
commit_data() {
    [ "${DFT_COMMIT:-0}" = 1 ] && git rev-parse --git-dir > /dev/null 2>&1 || return 0
    git add -A data/dft && ! git diff --cached --quiet -- data/dft || return 0
    frames=$(grep -c '^Lattice=' data/dft/catio3_dfpt.extxyz 2> /dev/null)
    carried=$(find data/dft/partial -mindepth 1 -maxdepth 1 -type d 2> /dev/null | wc -l)
    git commit -q -m "DFT: $frames frames, $carried structures carried (auto-commit by dft_background.sh)" \
        -- data/dft || echo "auto-commit failed (will retry)"
}
# 1) the convergence study (resumes point by point; done points are skipped at once),
# 2) the plan, in its order (every structure type represented early)
command -v ase-born > /dev/null || { echo "ase-born not found: install the package first"; exit 127; }
ase-born dft converge --ranks 2
ase-born dft run --ranks 2 --hours "${DFT_HOURS:-2.6}" --step-level "${DFT_STEP_LEVEL:-auto}" &
run=$!
ticks=0
while kill -0 $run 2> /dev/null; do  # every 15 min while it runs, then once when it stops
    sleep 10
    (( ++ticks % 90 )) || commit_data
done
wait $run
status=$?
commit_data
exit $status
