#!/usr/bin/env bats
# --compute bf16 (the weights' products in bfloat16 through oneDNN): GPT-2's
# logits against PyTorch doing the same roundings in float64; its
# agreement with f32 on the fixtures (logits within 3% of each prompt's
# largest |logit|: measured at most 1.3%, gemma2's soft-capped logits;
# EAP scores' rank correlation at least 0.99 and the same top 20 edges:
# measured 0.997-0.99995, 20 of 20), the f32 default unchanged byte for
# byte, and the refusal on a CPU without bf16 instructions (oneDNN held to
# AVX2 by ONEDNN_MAX_CPU_ISA).
load helper

TOK=tests/data/tiny/tokens.jsonl

# Skips where this CPU cannot run bf16 (the refusal is tested below).
need_bf16() {
	circ-forward --model tests/data/tiny/model --compute bf16 "$TOK" >/dev/null 2>&1 ||
		skip "this CPU (or build) has no bf16 compute: $(circ-forward --model tests/data/tiny/model --compute bf16 "$TOK" 2>&1 >/dev/null | tail -1)"
}

logits_close() { # model: f32 and bf16 logits, max |diff| / max |f32 logit| per prompt
	circ-forward --model "$1" --logits --top-k 0 --json "$TOK" | circ-cat --no-header >"$T/f32.jsonl"
	circ-forward --model "$1" --compute bf16 --logits --top-k 0 --json "$TOK" |
		circ-cat --no-header >"$T/bf16.jsonl"
	paste -d '\n' "$T/f32.jsonl" "$T/bf16.jsonl" | jq -s -e '
		length == 8 and
		([range(0; length; 2) as $i | .[$i] as $a | .[$i + 1] as $b |
		  ($a.logits.data | map(fabs) | max) as $s |
		  ([$a.logits.data, $b.logits.data] | transpose | map(.[0] - .[1] | fabs) | max) < 0.03 * $s and
		  (($a.metric - $b.metric) | fabs) < 0.03 * $s and
		  ([$a.logits.data, $b.logits.data] | transpose | map(.[0] - .[1] | fabs) | max) > 0]
		 | all)'
}

@test "--compute takes f32 or bf16; anything else is a usage error" {
	run --separate-stderr -2 circ-forward --model tests/data/tiny/model --compute f16 "$TOK"
	[[ "$stderr" == "circ-forward: unknown --compute 'f16' (f32, bf16)"* ]]
	run --separate-stderr -2 circ-score --model tests/data/tiny/model --compute x "$TOK"
	[[ "$stderr" == "circ-score: unknown --compute 'x' (f32, bf16)"* ]]
	# modes that run no model refuse it
	run --separate-stderr -2 circ-score --list-edges --model tests/data/tiny/model --compute bf16
	[[ "$stderr" == "circ-score: option '--compute' does not apply to --list-edges"* ]]
}

@test "a CPU without bf16 instructions is refused, naming what is missing" {
	for tool in circ-forward circ-score; do
		run --separate-stderr -1 env ONEDNN_MAX_CPU_ISA=AVX2 $tool --model tests/data/tiny/model --compute bf16 "$TOK"
		[[ "$stderr" == "$tool: bf16 compute needs a CPU with AVX512-BF16 or AMX-BF16; oneDNN sees AVX2 here (limited by ONEDNN_MAX_CPU_ISA)" ]]
		[ -z "$output" ]
	done
	# f32 does not need them
	ONEDNN_MAX_CPU_ISA=AVX2 circ-forward --model tests/data/tiny/model --compute f32 "$TOK" >/dev/null
}

@test "--compute f32 is the default, byte for byte" {
	circ-forward --model tests/data/tiny/model --logits "$TOK" >"$T/a"
	circ-forward --model tests/data/tiny/model --logits --compute f32 "$TOK" >"$T/b"
	circ-score --model tests/data/families/llama --method eap "$TOK" | circ-cat --no-header >"$T/c"
	circ-score --model tests/data/families/llama --method eap --compute f32 "$TOK" | circ-cat --no-header >"$T/d"
	cmp <(circ-cat --no-header "$T/a") <(circ-cat --no-header "$T/b")
	cmp "$T/c" "$T/d"
}

@test "bf16 logits match PyTorch's bf16 arithmetic (tests/ref/gpt2_ref.py logits-bf16)" {
	need_bf16
	# the reference rounds each weight product's activations and weights to
	# bf16 and sums in float64: an example's logits within 1e-5 of its
	# largest |logit| (measured 5e-8), where f32 itself is 0.16-0.7% away. An
	# activation whose f32 value lies within an f32 rounding of a bf16 tie
	# rounds the other way in one of the two (circ sums in f32, in oneDNN's
	# order for the CPU's instructions), which moves that example's logits by
	# up to about 1e-4 of the largest (seen on Zen 4's AVX512-BF16: 3.4e-5,
	# one example of four): so at least half the examples within 1e-5 (f32:
	# none) and every one within 1e-3
	for d in tests/data/tiny/model fixtures/ioi-trained; do
		/usr/bin/python3 tests/ref/gpt2_ref.py logits-bf16 "$d" "$TOK" >"$T/ref.jsonl"
		circ-forward --model "$d" --compute bf16 --logits --top-k 0 --json "$TOK" |
			circ-cat --no-header >"$T/got.jsonl"
		paste -d '\n' "$T/got.jsonl" "$T/ref.jsonl" | jq -s -e '
			length == 8 and
			([range(0; length; 2) as $i | .[$i] as $g | .[$i + 1] as $r |
			  ($r.logits | flatten) as $z |
			  if $g.id != $r.id then 1 else
			  ([$g.logits.data, $z] | transpose | map(.[0] - .[1] | fabs) | max) / ($z | map(fabs) | max) end]
			 | all(.[]; . < 1e-3) and (map(select(. < 1e-5)) | length) * 2 >= length)' ||
			fail "$d: bf16 logits differ from the reference"
	done
}

@test "bf16 logits agree with f32 on GPT-2 and every family" {
	need_bf16
	for d in tests/data/tiny/model fixtures/ioi-trained fixtures/induction-llama tests/data/families/*/; do
		[ -f "$d/config.json" ] || continue
		logits_close "$d" || fail "$d: bf16 logits differ from f32 by more than 3%"
	done
}

@test "bf16 EAP scores rank the edges as f32's do" {
	need_bf16
	for d in tests/data/tiny/model fixtures/ioi-trained tests/data/families/llama tests/data/families/gemma2; do
		circ-score --model "$d" --method eap --json "$TOK" >"$T/f32.jsonl"
		circ-score --model "$d" --method eap --compute bf16 --json "$TOK" >"$T/bf16.jsonl"
		/usr/bin/python3 tests/ref/compare_scores.py "$T/f32.jsonl" "$T/bf16.jsonl" 20 >"$T/cmp.json"
		jq -e '.spearman > 0.99 and .overlap == 20 and .spearman < 1' "$T/cmp.json" ||
			fail "$d: $(cat "$T/cmp.json")"
	done
}

@test "bf16 runs the patching tools (ACDC, faithfulness, harvest)" {
	need_bf16
	circ-prune --acdc --model tests/data/tiny/model --tau 0.01 --compute bf16 "$TOK" >"$T/acdc.zst"
	circ-cat "$T/acdc.zst" | tail -1 | jq -e '."$end".records > 0'
	circ-patch --model tests/data/tiny/model --circuit "$T/acdc.zst" --compute bf16 --json "$TOK" |
		tail -n +2 | head -1 | jq -e 'has("faithfulness")'
	circ-harvest --model tests/data/tiny/model --compute bf16 "$TOK" | circ-cat | tail -1 |
		jq -e '."$end".records == 4'
}
