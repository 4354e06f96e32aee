#!/usr/bin/env bash
# Background DFT data pipeline (DEVELOPERS.md standing instruction): start at the
# beginning of every work session, from the repository root:
#     mkdir -p dft_runs && setsid nohup bash scripts/dft_background.sh > dft_runs/background.log 2>&1 &
# Everything is resumable; pause for benchmarks with  bash scripts/dft_pause.sh stop|cont
# Stop it with  kill $(cat dft_runs/background.pid)  (SIGTERM): the running `ase-born dft`
# command gets SIGTERM (finished steps are kept; a running ground state ends cleanly after its
# SCF iteration, wavefunctions kept, within 10 min; a second SIGTERM kills it at once), the
# script waits for it, commits (with DFT_COMMIT=1) and removes the PID file.  A second start
# while it runs is refused.
#
# DFT_HOURS (default 2.6): the pipeline stops after that many hours (2.6 h of a 3 h work session
# leaves time to commit); it starts a structure, and each ABINIT step, only when it is expected to
# finish before then, and pauses a structure before a step that is not.  Finished field
# directions of an unfinished structure are copied to data/dft/partial/ (commit it with the
# dataset), so long structures finish over several sessions even when the run directories
# (wavefunctions) are lost with the machine.  On a machine that keeps running, DFT_HOURS=1000.
# DFT_GRACE_MIN (default 0): minutes after the DFT_HOURS deadline that the ABINIT steps running
# then may still use (no step starts after the deadline); e.g. DFT_HOURS=2.5 DFT_GRACE_MIN=10 in a
# 3 h session: a step slowed by other work is not killed minutes before its end.
# DFT_STEP_LEVEL (default auto): yes lets a structure span sessions step by step (its run
# directory survives: the case from session 6 on; 20-atom cells need it, their ground state and
# one direction take ~3 h); no requires its ground state and a whole field direction to fit
# (a fresh machine each session); auto: yes when dft_runs/ holds started (finished or interrupted)
# steps of unfinished structures, or an earlier call ran to its deadline there (a kept machine).
# DFT_MAX_ATOMS (default: none): leave larger structures for a later run (10: no 20-atom cell,
# for a session whose machine may not be kept, where a 20-atom cell's steps left cannot finish).
# DFT_FIRST (default: none): structure IDs (space-separated) started first, in this order, then
# the plan's order (carried-over structures and those with finished steps kept still go before).
# DFT_COMMIT (default 0): 1 commits data/dft (finished frames, carried directions, failures.json)
# to git every 15 min while the pipeline runs and once when it stops, so the data land even when
# the work session ends without a hand-made commit.  Only data/dft goes into these commits.
set -u
cd "$(dirname "$0")/.."
mkdir -p dft_runs
pidfile=dft_runs/background.pid
command -v ase-born > /dev/null || { echo "ase-born not found: install the package first"; exit 127; }

running_instance() {  # the PID in $pidfile if it is a live dft_background.sh other than this one
    local pid args
    [ -f "$pidfile" ] || return 1
    pid=$(< "$pidfile")
    [[ "$pid" =~ ^[0-9]+$ ]] && [ "$pid" != "$$" ] && kill -0 "$pid" 2> /dev/null || return 1
    [ -r "/proc/$pid/cmdline" ] || { echo "$pid"; return 0; }  # cannot tell: assume it is
    mapfile -d '' args < "/proc/$pid/cmdline"
    [[ " ${args[*]} " == *dft_background.sh* ]] || return 1  # a PID reused by another program
    echo "$pid"
}
if other=$(running_instance); then
    echo "dft_background.sh is already running (PID $other in $pidfile): not starting a second pipeline"
    exit 1
fi
echo $$ > "$pidfile"

commit_data() {
    [ "${DFT_COMMIT:-0}" = 1 ] && git rev-parse --git-dir > /dev/null 2>&1 || return 0
    mkdir -p data/dft
    (   # under the pipeline's output lock (flock on data/dft, as append_frame takes it): no
        # frame is half appended while git reads the files
        flock 9
        # 9<&-: git's detached background maintenance must not inherit (and hold) the lock
        git add -A data/dft 9<&- && ! git diff --cached --quiet -- data/dft 9<&- || exit 0
        frames=$(grep -c '^Lattice=' data/dft/catio3_dfpt.extxyz 2> /dev/null)
        carried=$(find data/dft/partial -mindepth 1 -maxdepth 1 -type d 2> /dev/null | wc -l)
        git commit -q -m "DFT: $frames frames, $carried structures carried (auto-commit by dft_background.sh)" \
            -- data/dft 9<&- || echo "auto-commit failed (will retry)"
    ) 9< data/dft
}

child=
stopping=0
on_signal() {  # forward the stop to the running command; the main line waits for it and commits
    stopping=1
    echo "dft_background.sh: SIG$1 received: stopping${child:+ (SIGTERM to PID $child)}"
    [ -n "$child" ] && kill -TERM "$child" 2> /dev/null
}
remove_pidfile() {
    [ -f "$pidfile" ] && [ "$(< "$pidfile")" = "$$" ] && rm -f "$pidfile"
}
trap 'on_signal TERM' TERM
trap 'on_signal INT' INT
trap remove_pidfile EXIT

run_child() {  # run "$@" in the background, commit every 15 min while it runs; its exit status
    "$@" &
    child=$!
    [ "$stopping" = 1 ] && kill -TERM "$child" 2> /dev/null  # a signal just before child=$!
    local ticks=0 rc
    while kill -0 "$child" 2> /dev/null; do
        sleep 1  # a trap runs when it ends: a signal is forwarded within a second
        (( ++ticks % 900 )) || commit_data
    done
    wait "$child"
    rc=$?
    child=
    return $rc
}

# 1) the convergence study (resumes point by point; done points are skipped at once),
# 2) the plan, in its order (every structure type represented early)
run_child ase-born dft converge --ranks 2
status=$?
if [ "$stopping" = 0 ]; then
    run_child ase-born dft run --ranks 2 --hours "${DFT_HOURS:-2.6}" --step-level "${DFT_STEP_LEVEL:-auto}" \
        --grace-minutes "${DFT_GRACE_MIN:-0}" ${DFT_MAX_ATOMS:+--max-atoms "$DFT_MAX_ATOMS"} \
        ${DFT_FIRST:+--first $DFT_FIRST}
    status=$?
fi
commit_data
exit $status
