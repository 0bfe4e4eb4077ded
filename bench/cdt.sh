#!/bin/sh
# CD-T's cost against one forward on the GPT-2-small shape (issue 19,
# "Speed"): circ-score --method cd-t (every node of every layer decomposed,
# one batched pass per layer: 13 passes, plus the clean and reference
# forwards and one backward for the gradients) against circ-forward (one
# forward) on the same prompts, both whole commands, best of REPS each,
# alternated to damp the noise of a shared machine. Prints the CPU first.
#
# Environment: THREADS (default 2), CDT_N (prompts of 16 tokens, default
# 16), CDT_REPS (default 2).
set -eu
B=${B:-build/release}
THREADS=${THREADS:-2}
N=${CDT_N:-16}
REPS=${CDT_REPS:-2}
bin=$B/bench/attrib_bench
d=$(mktemp -d)
trap 'rm -rf "$d"' EXIT

echo "cpu     $(lscpu | sed -n 's/^Model name: *//p')"
$bin make "$d/m"
head -n $((N + 1)) "$d/m/tokens.jsonl" >"$d/tok.jsonl"
# seconds of one run of "$@" (wall clock)
secs() {
	s=$(date +%s.%N)
	"$@" >/dev/null 2>&1
	e=$(date +%s.%N)
	awk -v s="$s" -v e="$e" 'BEGIN { printf "%.4f\n", e - s }'
}
fwd="" cdt=""
i=0
while [ "$i" -lt "$REPS" ]; do
	t=$(secs "$B/bin/circ-forward" --model "$d/m" --threads "$THREADS" --top-k 0 \
		-o "$d/fwd.circ" "$d/tok.jsonl")
	fwd=$(echo "$t $fwd" | awk '{ b = $1; for (k = 2; k <= NF; k++) if ($k < b) b = $k; print b }')
	t=$(secs "$B/bin/circ-score" --model "$d/m" --threads "$THREADS" --method cd-t \
		-o "$d/cdt.circ" "$d/tok.jsonl")
	cdt=$(echo "$t $cdt" | awk '{ b = $1; for (k = 2; k <= NF; k++) if ($k < b) b = $k; print b }')
	i=$((i + 1))
done
awk -v f="$fwd" -v c="$cdt" -v n="$N" -v thr="$THREADS" 'BEGIN {
	printf "cd-t    GPT-2 small shape, %d prompts x 16 tokens, %d threads, whole commands\n", n, thr
	printf "        circ-forward %.3fs, circ-score --method cd-t %.3fs: %.1f forwards\n", f, c, c / f
}'
