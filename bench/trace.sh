#!/bin/sh
# Attribution graphs (issue 18, "Speed"): circ-trace against a plain PyTorch
# implementation of the same computation (bench/torch_trace.py: batched
# backward passes from the active features, as circuit-tracer does), on a
# GPT-2-small-shaped random model with 12 JumpReLU transcoders of 24,576
# features (circuit-tracer layer files), thresholds set so that about 50
# features are active per position, a 16-token prompt. Both adjacency
# matrices are compared first (torch_trace.py compare); then each is timed
# end to end (loading the model and transcoders included; circ's time is
# the whole process, its stream written to /dev/null with pruning; torch's
# from its first load to the last edge, without the interpreter's start),
# with peak RSS and CPU time (user + system: steadier than wall time on a
# shared machine). Goal: circ at least 2x faster on 2 threads.
# Environment: THREADS (default 2, for circ, OpenBLAS and torch alike),
# ROUNDS (default 1; each keeps its best), TRACE_BATCH (targets per
# backward batch for both, default 256), TRACE_DIR (keep the 2.2 GB of
# model and transcoders there between runs instead of a temporary).
set -eu
cd "$(dirname "$0")/.."
B=${B:-build/release}
THREADS=${THREADS:-2}
ROUNDS=${ROUNDS:-1}
BATCH=${TRACE_BATCH:-256}
PY=/usr/bin/python3
if [ -n "${TRACE_DIR:-}" ]; then
	d=$TRACE_DIR
	mkdir -p "$d"
else
	d=$(mktemp -d)
	trap 'rm -rf "$d"' EXIT
fi
IDS=464,3290,286,4881,373,257,1588,3139,11,290,262,1893,286,262,5803,373
cpu=$(sed -n 's/^model name[^:]*: //p' /proc/cpuinfo 2>/dev/null | head -n 1)
echo "cpu: ${cpu:-unknown}; $THREADS threads; L 12, C 768, 12 x 24576 features, T 16"
[ -f "$d/tc/layer_11.safetensors" ] || $PY bench/torch_trace.py make "$d" 1
export OPENBLAS_NUM_THREADS=$THREADS OMP_NUM_THREADS=$THREADS OMP_WAIT_POLICY=PASSIVE
"$B/bin/circ-trace" --model "$d/model" --dict "$d/tc" --tokens $IDS --threads "$THREADS" \
	--batch "$BATCH" --adjacency "$d/c.safetensors" -o /dev/null
$PY bench/torch_trace.py run "$d" "$THREADS" "$BATCH" "$d/t.npy" >"$d/t.1"
$PY bench/torch_trace.py compare "$d/c.safetensors" "$d/t.npy"
cat "$d/t.1" >"$d/t"
r=1
while [ "$r" -le "$ROUNDS" ]; do
	/usr/bin/time -f "circ %e %M %U %S" -a -o "$d/c" "$B/bin/circ-trace" --model "$d/model" --dict "$d/tc" \
		--tokens $IDS --threads "$THREADS" --batch "$BATCH" -o /dev/null
	[ "$r" -eq 1 ] || $PY bench/torch_trace.py run "$d" "$THREADS" "$BATCH" >>"$d/t"
	r=$((r + 1))
done
awk -v cf="$d/c" -v tf="$d/t" '
BEGIN {
	c = 1e30; t = 1e30
	while ((getline l < cf) > 0) { split(l, a, " "); if (a[2] < c) { c = a[2]; crss = a[3] / 1024; ccpu = a[4] + a[5] } }
	while ((getline l < tf) > 0) { split(l, a, " "); if (a[2] < t) { t = a[2]; trss = a[3]; nn = a[4]; nf = a[5]; tcpu = a[6] } }
	printf "  nodes %d (features %d)\n", nn, nf
	printf "  circ-trace  %8.1f s  (CPU %7.1f s)  peak RSS %6.0f MB\n", c, ccpu, crss
	printf "  torch       %8.1f s  (CPU %7.1f s)  peak RSS %6.0f MB\n", t, tcpu, trss
	r = t / c
	printf "  ratio %.2f (CPU time %.2f)  >= 2 %s\n", r, tcpu / ccpu, (r >= 2 ? "ok" : "MISSED")
}'
