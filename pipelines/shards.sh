#!/bin/bash
# Score a token stream in K shards, in parallel (or on several hosts), and
# merge them: the merged scores equal one run's (sums and counts add).
#
#   pipelines/shards.sh -k K [-S LOGINS] -o OUT TOKENS -- CIRC-SCORE-ARGS...
#
#   -k K        number of shards (examples go round-robin)
#   -S LOGINS   GNU parallel --sshlogin list (see sweep.sh)
#   -o OUT      merged scores stream
#
# Fails (non-zero) when any stage fails: a cut or bad token stream, a shard's
# scoring, the merge; OUT is then left as it was.
set -euo pipefail
cd "$(dirname "$0")/.."
# GNU parallel runs remote commands through $SHELL and silently runs nothing when it
# is unset (as under cron, CI or env -i)
: "${SHELL:=/bin/sh}"
export SHELL
k=2 logins="" out=""
while [ $# -gt 0 ]; do
	case $1 in
	-k) k=$2; shift 2 ;;
	-S) logins=$2; shift 2 ;;
	-o) out=$2; shift 2 ;;
	--) shift; break ;;
	-h|--help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; exit 0 ;;
	-*) echo "shards.sh: unknown option '$1'" >&2; exit 2 ;;
	*) tokens=$1; shift ;;
	esac
done
[ -n "${tokens:-}" ] && [ -n "$out" ] || { echo "shards.sh: usage: shards.sh -k K -o OUT TOKENS -- ARGS" >&2; exit 2; }
bin=$(if [ -x bin/circ-cat ]; then echo bin/; fi)
dir=$(mktemp -d "${out}.shards.XXXXXX")
trap 'rm -rf "$dir"' EXIT
# split: the header goes to every shard, records round-robin
${bin}circ-cat "$tokens" | awk -v k="$k" -v d="$dir" '
	NR == 1 { for (i = 0; i < k; i++) print > (d "/" i ".jsonl"); next }
	{ print > (d "/" ((NR - 2) % k) ".jsonl") }'
i=0
while [ $i -lt "$k" ]; do
	[ -s "$dir/$i.jsonl" ] && [ "$(wc -l <"$dir/$i.jsonl")" -gt 1 ] || rm -f "$dir/$i.jsonl"
	i=$((i + 1))
done
ls "$dir"/*.jsonl >"$dir/list"
parallel ${logins:+--sshlogin "$logins" --workdir "$PWD"} ${PARALLEL_SSH:+--ssh "$PARALLEL_SSH"} \
	--halt now,fail=1 ${bin}circ-score "$@" -o {.}.scores {} :::: "$dir/list"
${bin}circ-score --merge -o "$out" "$dir"/*.scores
