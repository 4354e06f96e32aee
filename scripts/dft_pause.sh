#!/usr/bin/env bash
# Pause (stop) or resume (cont) the running ABINIT steps of the DFT pipeline, e.g. while
# benchmarking:  bash scripts/dft_pause.sh stop|cont
# Each ABINIT step is started by an `ase-born dft run|converge` process in a session of its own
# (mpirun and every MPI rank); the signal goes to every process of those sessions and to
# nothing else (no other mpirun or abinit on the machine).  Exit status 1, with a message, when
# no pipeline step is running.  DFT_PIPELINE_PIDS (tests): the pipeline PIDs to use instead of
# looking for `ase-born dft run|converge` processes.
set -u
sig=${1:-}
case "$sig" in
    stop | cont) SIG=${sig^^} ;;
    *) echo "usage: dft_pause.sh stop|cont" >&2; exit 2 ;;
esac
if [ -n "${DFT_PIPELINE_PIDS+set}" ]; then
    pipelines=$DFT_PIPELINE_PIDS
else
    pipelines=$(pgrep -f 'ase-born dft (run|converge)( |$)')
fi
sessions=()
for p in $pipelines; do
    for c in $(pgrep -P "$p"); do  # a step's nice/mpirun process leads the step's session
        [ "$(ps -o sid= -p "$c" | tr -d ' ')" = "$c" ] && sessions+=("$c")
    done
done
sent=()
for s in "${sessions[@]}"; do
    pkill -"$SIG" -s "$s" && sent+=("$s")
done
if [ ${#sent[@]} -eq 0 ]; then
    echo "no running ABINIT step of an ase-born dft pipeline found: no signal sent" >&2
    exit 1
fi
echo "sent SIG$SIG to the ABINIT processes (mpirun and ranks) of session(s) ${sent[*]}"
