#!/bin/sh
# CD-T's cost against one forward on the GPT-2-small shape (issue 19,
# "Speed"): circ-score --method cd-t (every node of every layer decomposed,
# one batched pass per layer: 13 passes, plus the clean and reference
# forwards and one backward for the gradients) against circ-forward (one
# forward) on the same prompts, both whole commands, best of REPS each,
# alternated to damp the noise of a shared machine; and the two on half the
# prompts, so that the cost of the other half (loading and digesting the
# model cancel out) gives the ratio of the computations alone. Prints the
# CPU first.
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
head -n $((N / 2 + 1)) "$d/m/tokens.jsonl" >"$d/half.jsonl"
# best of the seconds in $1 (space separated) and $2
best() { echo "$2 $1" | awk '{ b = $1; for (k = 2; k <= NF; k++) if ($k < b) b = $k; print b }'; }
fwd="" fwd2="" cdt="" cdt2=""
i=0
while [ "$i" -lt "$REPS" ]; do
	for f in tok half; do
		t=$(secs "$B/bin/circ-forward" --model "$d/m" --threads "$THREADS" --top-k 0 \
			-o "$d/fwd.circ" "$d/$f.jsonl")
		if [ $f = tok ]; then fwd=$(best "$fwd" "$t"); else fwd2=$(best "$fwd2" "$t"); fi
		t=$(secs "$B/bin/circ-score" --model "$d/m" --threads "$THREADS" --method cd-t \
			-o "$d/cdt.circ" "$d/$f.jsonl")
		if [ $f = tok ]; then cdt=$(best "$cdt" "$t"); else cdt2=$(best "$cdt2" "$t"); fi
	done
	i=$((i + 1))
done
# whole commands, and the marginal cost of the second half of the prompts
# (model loading and digests, the same for both, cancel out)
awk -v f="$fwd" -v f2="$fwd2" -v c="$cdt" -v c2="$cdt2" -v n="$N" -v thr="$THREADS" 'BEGIN {
	printf "cd-t    GPT-2 small shape, %d prompts x 16 tokens, %d threads\n", n, thr
	printf "        whole commands: circ-forward %.3fs, circ-score --method cd-t %.3fs: %.1f forwards\n", f, c, c / f
	printf "        marginal %d prompts: forward %.3fs, cd-t %.3fs: %.1f forwards\n", n - n / 2, f - f2, c - c2, (c - c2) / (f - f2)
}'
