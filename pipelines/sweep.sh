#!/bin/bash
# Fan a discovery pipeline out over tasks, methods and seeds with GNU parallel,
# on this machine or on several hosts.
#
#   pipelines/sweep.sh [-j N] [-S LOGINS] [-t "TASKS"] [-m "METHODS"] [-s "SEEDS"] [-- MAKEVARS...]
#
#   -j N        jobs per host (default: parallel's, one per core)
#   -S LOGINS   GNU parallel --sshlogin list, e.g. "4/alice@gpu1,2/bob@cpu2,:" (":" is this
#               machine). Remote hosts need circ at the same path (a shared file system, or
#               the same checkout or install path) and the model and run directories visible.
#   -t TASKS    pipelines to run (default "induction")
#   -m METHODS  attribution methods (default "eap eap-ig exact")
#   -s SEEDS    dataset seeds (default "0")
#   MAKEVARS    passed to every run, e.g. MODEL=fixtures/induction-hand N=50 PRUNE=greedy K=30
#
# Each combination is one `make -f pipelines/<task>.mk METHOD=<m> SEED=<s> ...` in the current
# directory (run from the source tree's root, or anywhere with circ on PATH), so a sweep
# reuses every stream an earlier run made (datasets and tokens are shared across methods).
# The summary prints one report per run. PARALLEL_SSH can name the ssh command to use.
# Runs in parallel share the run directory safely (every target is written through a
# temporary of its own, see pipelines/common.mk); the sweep fails when any run fails.
set -euo pipefail
# the pipelines beside this script (the source tree's or an installed copy);
# runs go under the current directory, with its bin/ or the tools on PATH
here=$(cd "$(dirname "$0")" && pwd)
# GNU parallel runs remote commands through $SHELL and silently runs nothing when it
# is unset (as under cron, CI or env -i)
: "${SHELL:=/bin/sh}"
export SHELL
jobs="" logins="" tasks=induction methods="eap eap-ig exact" seeds=0
while [ $# -gt 0 ]; do
	case $1 in
	-j) jobs=$2; shift 2 ;;
	-S) logins=$2; shift 2 ;;
	-t) tasks=$2; shift 2 ;;
	-m) methods=$2; shift 2 ;;
	-s) seeds=$2; shift 2 ;;
	--) shift; break ;;
	-h|--help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; exit 0 ;;
	*) echo "sweep.sh: unknown option '$1'" >&2; exit 2 ;;
	esac
done
set -- ${jobs:+--jobs "$jobs"} ${logins:+--sshlogin "$logins" --workdir "$PWD"} \
	${PARALLEL_SSH:+--ssh "$PARALLEL_SSH"} --halt now,fail=1 --line-buffer --tag \
	make --no-print-directory -s -f "$here"/{1}.mk METHOD={2} SEED={3} "$@" report \
	::: $tasks ::: $methods ::: $seeds
exec parallel "$@"
