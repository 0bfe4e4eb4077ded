#!/bin/sh
# --compute bf16 beside f32 (issue 15, "The forward"): circ's forward of a
# GPT-2-small-shaped model (random weights, bench/model.sh's) in f32 and in
# bf16 (build/release/bench/model_bench with BENCH_COMPUTE), beside
# PyTorch's f32 forward and its own bf16 (torch.autocast("cpu", bfloat16);
# bench/torch_model.py with BENCH_BF16=1), same shapes and threads; then, if
# the Llama-3.2-1B-shaped model of bench/family.sh is there, circ-forward
# end to end in f32 and bf16. Rounds alternate the four sides; the best of
# each is kept (wall and CPU seconds). A CPU without bf16 instructions
# prints circ's refusal and skips.
#
# Environment: BF16_B, BF16_T prompts and tokens (32, 32); BF16_THREADS (2);
# BF16_REPS runs per round (3); BF16_ROUNDS (2); CIRC_BENCH_MODEL;
# FAMILY_DIR (default ${TMPDIR:-/tmp}/circ-bench-llama-1b).
set -u
cd "$(dirname "$0")/.." || exit 1
B=${B:-build/release}
n=${BF16_B:-32}
T=${BF16_T:-32}
th=${BF16_THREADS:-2}
reps=${BF16_REPS:-3}
rounds=${BF16_ROUNDS:-2}
model=${CIRC_BENCH_MODEL:-${TMPDIR:-/tmp}/circ-bench-gpt2-random}
fam=${FAMILY_DIR:-${TMPDIR:-/tmp}/circ-bench-llama-1b}
bin=$B/bench/model_bench
sh bench/whole.sh --cpu
[ -x "$bin" ] || { echo "bf16.sh: $bin is missing: make $bin" >&2; exit 1; }
[ -f "$model/model.safetensors" ] || "$bin" --make "$model" || exit 1
tmp=$(mktemp -d) || exit 1
trap 'rm -rf "$tmp"' EXIT
if ! BENCH_COMPUTE=bf16 BENCH_ONLY=none, "$bin" "$model" 1 1 1 16 >/dev/null 2>"$tmp/err"; then
	echo "bf16: skipped: $(cat "$tmp/err")"
	exit 0
fi
export OMP_NUM_THREADS=$th OPENBLAS_NUM_THREADS=$th OMP_WAIT_POLICY=PASSIVE
i=0
while [ $i -lt "$rounds" ]; do
	BENCH_ONLY=fwd_full,fwd_last, "$bin" "$model" "$th" "$reps" "$n" "$T" | sed 's/^/f32 /' >>"$tmp/c"
	BENCH_COMPUTE=bf16 BENCH_ONLY=fwd_full,fwd_last, "$bin" "$model" "$th" "$reps" "$n" "$T" |
		sed 's/^/bf16 /' >>"$tmp/c"
	BENCH_BF16=1 /usr/bin/python3 bench/torch_model.py "$model" "$th" "$reps" "$n" "$T" 2>/dev/null |
		sed 's/^/torch /' >>"$tmp/c"
	i=$((i + 1))
done
printf "bf16  GPT-2-small shape, random weights, %d prompts x %d tokens, %d thread(s), best of %d x %d\n" "$n" "$T" "$th" "$rounds" "$reps"
awk '
{ k = $1 " " $2; if ($2 ~ /^fwd/) { if (!(k in w) || $3 < w[k]) w[k] = $3; if (!(k in c) || $5 + 0 < c[k]) c[k] = ($1 == "torch" ? $5 : $6) } }
END {
	printf "  %-22s %9s %9s %9s %9s  %s\n", "", "circ f32", "circ bf16", "torch f32", "torch bf16", "circ bf16 vs: circ f32, torch bf16"
	split("fwd_full fwd_last", names, " ")
	for (i = 1; i <= 2; i++) {
		nm = names[i]
		printf "  %-22s %8.3fs %8.3fs %8.3fs %8.3fs  %.2fx, %.2fx\n", nm, w["f32 " nm], w["bf16 " nm], w["torch " nm], w["torch " nm "_bf16"], w["f32 " nm] / w["bf16 " nm], w["torch " nm "_bf16"] / w["bf16 " nm]
	}
}' "$tmp/c"
if [ -f "$fam/model.safetensors" ]; then
	V=$(jq .vocab_size "$fam/config.json")
	/usr/bin/python3 - "$V" "$n" "$T" >"$tmp/tok.jsonl" <<'PY' || exit 1
import json, random, sys
V, n, T = map(int, sys.argv[1:])
random.seed(1)
print(json.dumps({"format": "circ", "version": 1, "kind": "tokens", "metric": "logit_diff"}))
for i in range(n):
    c = [random.randrange(V) for _ in range(T)]
    print(json.dumps({"id": i, "clean": c, "corrupt": c, "pos": T - 1,
                      "answer": [random.randrange(V)], "wrong": [random.randrange(V)]}))
PY
	export CIRC_CACHE_DIR="$tmp/cache"
	bin/circ-forward --model "$fam" --describe >/dev/null || exit 1
	for i in 1 2; do
		for c in f32 bf16; do
			/usr/bin/time -f "$c %e %U" -a -o "$tmp/fam" bin/circ-forward --model "$fam" --compute $c \
				--threads "$th" --batch "$n" "$tmp/tok.jsonl" >/dev/null 2>&1 || echo "FAILED: $c"
		done
	done
	awk -v n="$n" -v T="$T" '{ if (!($1 in w) || $2 < w[$1]) w[$1] = $2 }
	END { printf "  %s: circ-forward end to end, %d x %d: f32 %.2fs, bf16 %.2fs: %.2fx\n", "Llama-3.2-1B shape (BF16 weights)", n, T, w["f32"], w["bf16"], w["f32"] / w["bf16"] }' "$tmp/fam"
fi
