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
# split: records round-robin; each shard gets the header with its own
# "shard": [i, k] (so that no two shards, and no two shards' scores, have the
# same header: the readers refuse a stream or shard given twice) and its own
# n_examples (each shard's count is checked, so a cut input still fails), and
# ends with an end record counting its own records (the input's is dropped)
${bin}circ-cat "$tokens" | awk -v k="$k" -v d="$dir" '
	NR == 1 {
		n = -1
		if (match($0, /"n_examples":[0-9]+/))
			n = substr($0, RSTART + 13, RLENGTH - 13) + 0
		for (i = 0; i < k; i++) {
			h = $0
			if (n >= 0)
				sub(/"n_examples":[0-9]+/, "\"n_examples\":" (n > i ? int((n - 1 - i) / k) + 1 : 0), h)
			sub(/}$/, ",\"shard\":[" i "," k "]}", h)
			print h > (d "/" i ".jsonl")
		}
		next
	}
	/^\{"\$end":/ { next }
	{ s = (NR - 2) % k; print > (d "/" s ".jsonl"); c[s]++ }
	END { for (i = 0; i < k; i++) printf "{\"$end\":{\"records\":%d}}\n", c[i] > (d "/" i ".jsonl") }'
i=0
while [ $i -lt "$k" ]; do
	[ -s "$dir/$i.jsonl" ] && [ "$(wc -l <"$dir/$i.jsonl")" -gt 2 ] || rm -f "$dir/$i.jsonl"
	i=$((i + 1))
done
ls "$dir"/*.jsonl >"$dir/list"
parallel ${logins:+--sshlogin "$logins" --workdir "$PWD"} ${PARALLEL_SSH:+--ssh "$PARALLEL_SSH"} \
	--halt now,fail=1 ${bin}circ-score "$@" -o {.}.scores {} :::: "$dir/list"
${bin}circ-score --merge -o "$out" "$dir"/*.scores
