#!/usr/bin/env bash
# Pause (stop) or resume (cont) every running ABINIT/mpirun process, e.g. while benchmarking.
sig=${1:?usage: dft_pause.sh stop|cont}
pkill -"${sig^^}" -f "abinit .*\.abi" ; pkill -"${sig^^}" -x mpirun ; echo "sent SIG${sig^^} to ABINIT processes"
