#!/bin/sh
# The model benchmark (issue 4): circ's GPT-2 forward and backward beside the
# same work in PyTorch, on a random-weight GPT-2-small shaped model (12
# layers, 12 heads, width 768, vocabulary 50257), 32 prompts of 16 tokens,
# the same thread count for both (PyTorch and its OpenBLAS). Goals: forward
# with full logits >= 1.15x PyTorch's speed, forward with last-position
# logits >= 1.5x PyTorch's full forward and >= 1.15x PyTorch's own
# last-position forward, the full forward >= 85% of the GFLOP/s of plain
# sgemm calls of the same shapes, forward + backward to every receiver
# >= 1.3x PyTorch (per-head q/k/v inputs with retain_grad).
#
# The machine is shared: the two programs run alternately, ROUNDS times,
# and each keeps the best of REPS runs per measurement; the best over rounds
# is reported. PyTorch runs with OMP_WAIT_POLICY=PASSIVE: with the default
# (spinning) policy its OpenMP threads fight OpenBLAS's for the cores and it
# is about 1.4x slower at 2 threads; we compare against its better setting.
# The goals are measured on the forward circ-forward runs, which keeps no
# per-head outputs (PyTorch's forward makes none either); the patching
# tools' forward, which keeps every head's output, is shown below them.
# circ's forwards are those of a long command: the weights packed for its
# panel kernels from the first forward (model_bench sets CIRC_PACK_AT=1; a
# command packs them after 16 forwards; the same bits either way).
# Environment: BENCH_THREADS (thread counts, default "2"; e.g. "2 1"),
# BENCH_REPS (5), BENCH_ROUNDS (2), CIRC_BENCH_MODEL (where the random model
# is cached, default ${TMPDIR:-/tmp}/circ-bench-gpt2-random; 500 MB).
set -eu
cd "$(dirname "$0")/.."
B=${B:-build/release}
THREADS=${BENCH_THREADS:-2}
REPS=${BENCH_REPS:-5}
ROUNDS=${BENCH_ROUNDS:-2}
MODEL=${CIRC_BENCH_MODEL:-${TMPDIR:-/tmp}/circ-bench-gpt2-random}
BIN=$B/bench/model_bench
if [ ! -x "$BIN" ]; then
	echo "model.sh: $BIN is missing: run 'make bench' (or make $BIN)" >&2
	exit 1
fi
if [ ! -f "$MODEL/model.safetensors" ] || ! grep -q '"n_embd": 768' "$MODEL/config.json" 2>/dev/null; then
	echo "model.sh: writing the random GPT-2-small model to $MODEL" >&2
	"$BIN" --make "$MODEL"
fi
# the CPU the numbers belong to: model, vector and matrix extensions, and
# whether OPENBLAS_CORETYPE chose OpenBLAS's kernels
cpu=$(sed -n 's/^model name[^:]*: //p' /proc/cpuinfo 2>/dev/null | head -n 1)
ext=$(grep -m 1 '^flags' /proc/cpuinfo 2>/dev/null | tr ' ' '\n' |
	grep -E '^(avx2|fma|avx512f|avx512_bf16|amx_bf16|amx_tile)$' | tr '\n' ' ')
echo "cpu: ${cpu:-unknown}; ${ext:-no AVX2}; OPENBLAS_CORETYPE=${OPENBLAS_CORETYPE:-(not set)}"
d=$(mktemp -d)
trap 'rm -rf "$d"' EXIT
for TH in $THREADS; do
rm -f "$d/c" "$d/t"
r=1
while [ "$r" -le "$ROUNDS" ]; do
	"$BIN" "$MODEL" "$TH" "$REPS" >>"$d/c"
	OPENBLAS_NUM_THREADS=$TH OMP_NUM_THREADS=$TH MKL_NUM_THREADS=$TH OMP_WAIT_POLICY=PASSIVE \
		/usr/bin/python3 bench/torch_model.py "$MODEL" "$TH" "$REPS" >>"$d/t"
	r=$((r + 1))
done
# best (min) wall and CPU time per name, and the largest RSS
awk -v cf="$d/c" -v tf="$d/t" -v th="$TH" -v reps="$REPS" -v rounds="$ROUNDS" '
function best(arr, k, v) { if (!(k in arr) || v < arr[k]) arr[k] = v }
function row(label, cn, tn, goal,    r, rc) {
	r = t[tn] / c[cn]; rc = (th == 1 && (tn in tc)) ? sprintf("%7.2f", tc[tn] / cc[cn]) : "      -"
	printf "  %-42s %8.3fs %8.3fs %7.2f %s  %s\n", label, c[cn], t[tn], r, rc,
		goal == "" ? "" : ">= " goal (r >= goal + 0 ? " ok" : " MISSED")
}
BEGIN {
	while ((getline line < cf) > 0) {
		split(line, f, " ")
		if (f[1] == "rss_kb") { if (f[2] > crss) crss = f[2]; continue }
		best(c, f[1], f[2]); best(cc, f[1], f[5]); gf[f[1]] = f[4]
	}
	while ((getline line < tf) > 0) {
		split(line, f, " ")
		if (f[1] == "rss_kb") { if (f[2] > trss) trss = f[2]; continue }
		best(t, f[1], f[2]); best(tc, f[1], f[4])
	}
	sg = gf["sgemm"] / c["sgemm"]
	printf "model  GPT-2-small shape, random weights, 32 prompts x 16 tokens, %d thread(s), best of %d x %d\n", th, reps, rounds
	printf "  %-42s %9s %9s %7s %7s  %s\n", "", "circ", "PyTorch", "ratio", "cpu", "goal"
	# the goals: the forward circ-forward runs (no per-head outputs kept)
	row("forward, full logits", "fwd_full_fused", "fwd_full", 1.15)
	row("forward, last position (vs torch full)", "fwd_last_fused", "fwd_full", 1.5)
	row("forward, last position (vs torch last)", "fwd_last_fused", "fwd_last", 1.15)
	row("forward + backward to all receivers", "fwd_bwd", "fwd_bwd", 1.3)
	row("fwd + bwd, node gradients only", "fwd_bwd_nodes", "fwd_bwd", "")
	printf "  the patching tools'"'"' forward (every head'"'"'s output kept for patching):\n"
	row("  full logits", "fwd_full", "fwd_full", "")
	row("  last position (vs torch last)", "fwd_last", "fwd_last", "")
	printf "  (ratio: PyTorch time / circ time, wall clock; cpu: the same with CPU time, 1 thread only)\n"
	pc = 100 * gf["fwd_full_fused"] / c["fwd_full_fused"] / sg
	printf "  GFLOP/s, forward with full logits (%.1f GFLOP): circ %.1f (%.0f%% of sgemm; with per-head outputs %.0f%%), PyTorch %.1f (%.0f%% of sgemm);\n", gf["fwd_full_fused"], gf["fwd_full_fused"] / c["fwd_full_fused"], pc, 100 * gf["fwd_full"] / c["fwd_full"] / sg, gf["fwd_full"] / t["fwd_full"], 100 * gf["fwd_full"] / t["fwd_full"] / sg
	printf "    plain sgemm of the same shapes %.1f GFLOP/s; goal: circ >= 85%% of sgemm%s\n", sg, (pc >= 85 ? " ok" : " MISSED")
	printf "  GFLOP/s, forward + backward (%.1f GFLOP): circ %.1f (%.0f%% of sgemm), PyTorch %.1f\n", gf["fwd_bwd"], gf["fwd_bwd"] / c["fwd_bwd"], 100 * gf["fwd_bwd"] / c["fwd_bwd"] / sg, gf["fwd_bwd"] / t["fwd_bwd"]
	printf "  peak RSS: circ %.0f MiB (the largest run: forward + backward keeping every receiver gradient), PyTorch %.0f MiB\n", crss / 1024, trss / 1024
}'
done
