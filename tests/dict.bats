#!/usr/bin/env bats
# Sparse dictionaries (lib/dict): circ-forward --dict and circ-harvest --dict
# against tests/ref/dict_ref.py (PyTorch, float64, the activation replaced in
# the forward rather than added as receiver deltas), every architecture,
# hook point, weight dtype and normalization, SAELens and circuit-tracer
# files. Tolerance: every measure within 1e-4 relative (+1e-6 absolute),
# every activation within 1e-4 relative (+1e-5 absolute) (circ computes in
# float32). Bad input is in tests/catalogue/dict.cases.
load helper

REF=tests/ref/dict_ref.py
M=tests/data/tiny/model
TOK=tests/data/tiny/tokens.jsonl

mk() { # dir args...
	/usr/bin/python3 "$REF" make "$@"
}

# mk, queued in $T/mk.list until mk_all makes them all in one process.
mkq() { # dir args...
	printf '%q ' "$@" >>"$T/mk.list"
	echo >>"$T/mk.list"
}
mk_all() {
	/usr/bin/python3 "$REF" make-many "$T/mk.list"
	rm -f "$T/mk.list"
}

# The set of every architecture and hook point, in $T/set.
make_set() {
	local D="$T/set"
	mkq "$D/a_std" --arch standard --hook blocks.0.hook_resid_pre --d-in 24 --d-sae 64 --seed 1
	mkq "$D/b_topk" --arch topk --hook blocks.1.hook_resid_post --d-in 24 --d-sae 48 --k 6 --seed 2 --dtype F16
	mkq "$D/c_jump" --arch jumprelu --hook blocks.0.hook_attn_out --d-in 24 --d-sae 64 --seed 3 --dtype BF16 --apply-b-dec 0
	mkq "$D/d_gated" --arch gated --hook blocks.1.hook_mlp_out --d-in 24 --d-sae 64 --seed 4
	mkq "$D/e_z" --arch standard --hook blocks.1.attn.hook_z --d-in 24 --d-sae 64 --seed 5
	mkq "$D/f_mid" --arch standard --hook blocks.0.hook_resid_mid --d-in 24 --d-sae 64 --seed 6 --scale 0.5
	mkq "$D/g_mlpin" --arch standard --hook blocks.1.hook_mlp_in --d-in 24 --d-sae 64 --seed 7
	mkq "$D/h_tc" --arch transcoder --hook blocks.0.ln2.hook_normalized --hook-out blocks.0.hook_mlp_out --d-in 24 --d-sae 64 --seed 8
	mkq "$D/i_skip" --arch skip_transcoder --hook blocks.1.hook_resid_mid --hook-out blocks.1.hook_mlp_out --d-in 24 --d-sae 64 --seed 9
	mkq "$D/j_jtc" --arch jumprelu_transcoder --hook blocks.1.ln2.hook_normalized --hook-out blocks.1.hook_mlp_out --d-in 24 --d-sae 64 --seed 10 --fold-ln 0
	mk_all
}

check_eval() { # set [circ-forward options]
	circ-forward --model $M --dict "$@" --json $TOK >"$T/c.jsonl"
	/usr/bin/python3 "$REF" eval $M "$1" $TOK >"$T/r.jsonl"
	run /usr/bin/python3 "$REF" compare-eval "$T/c.jsonl" "$T/r.jsonl"
	echo "$output"
	[ "$status" -eq 0 ]
}

check_harvest() { # set
	circ-harvest --model $M --dict "$1" --json $TOK >"$T/c.jsonl"
	/usr/bin/python3 "$REF" harvest $M "$1" $TOK >"$T/r.jsonl"
	run /usr/bin/python3 "$REF" compare-harvest "$T/c.jsonl" "$T/r.jsonl"
	echo "$output"
	[ "$status" -eq 0 ]
}

@test "circ-forward --dict: every architecture and hook point against the reference (10 dictionaries)" {
	make_set
	check_eval "$T/set"
	[ "$(grep -c '"dict"' "$T/c.jsonl")" -eq 10 ]
}

@test "every model family: dictionaries at every hook point (attn.hook_z, ln2.hook_normalized folded or not, ...) against the reference" {
	for d in tests/data/families/*/; do
		d=${d%/}
		[ -f "$d/config.json" ] || continue
		t=$(jq -r .model_type "$d/config.json")
		C=$(jq .hidden_size "$d/config.json")
		Q=$(jq '.num_attention_heads * (.head_dim // (.hidden_size / .num_attention_heads))' "$d/config.json")
		par=$(jq -r '.use_parallel_residual // false' "$d/config.json")
		post=0
		case $t in gemma2 | gemma3_text | olmo2) post=1 ;; esac
		S="$T/$t-$(basename "$d")"
		mkq "$S/eval/a_pre" --arch topk --hook blocks.0.hook_resid_pre --d-in $C --d-sae 48 --k 6 --seed 1
		mkq "$S/eval/b_post" --arch standard --hook blocks.1.hook_resid_post --d-in $C --d-sae 64 --seed 2 --dtype BF16
		mkq "$S/eval/c_mlp" --arch jumprelu --hook blocks.0.hook_mlp_out --d-in $C --d-sae 64 --seed 3
		mkq "$S/harvest/z" --arch standard --hook blocks.1.attn.hook_z --d-in $Q --d-sae 64 --seed 4
		mkq "$S/harvest/pre" --arch topk --hook blocks.0.hook_resid_pre --d-in $C --d-sae 48 --k 6 --seed 1
		if [ "$post" = 0 ]; then
			mkq "$S/eval/d_z" --arch standard --hook blocks.1.attn.hook_z --d-in $Q --d-sae 64 --seed 4
		fi
		if [ "$par" != true ]; then
			mkq "$S/eval/e_attn" --arch standard --hook blocks.1.hook_attn_out --d-in $C --d-sae 64 --seed 5
			mkq "$S/eval/f_mid" --arch standard --hook blocks.0.hook_resid_mid --d-in $C --d-sae 64 --seed 6
		else # parallel blocks: an SAE on the MLP's input (the block's input) changes only the MLP
			mkq "$S/eval/f_min" --arch standard --hook blocks.0.hook_mlp_in --d-in $C --d-sae 64 --seed 6
		fi
		mkq "$S/eval/g_tc" --arch transcoder --hook blocks.0.ln2.hook_normalized --hook-out blocks.0.hook_mlp_out --d-in $C --d-sae 64 --seed 7
		mkq "$S/eval/h_tcw" --arch jumprelu_transcoder --hook blocks.1.ln2.hook_normalized --hook-out blocks.1.hook_mlp_out --d-in $C --d-sae 64 --seed 8 --fold-ln 0
		mkq "$S/eval/i_skip" --arch skip_transcoder --hook blocks.1.hook_mlp_in --hook-out blocks.1.hook_mlp_out --d-in $C --d-sae 64 --seed 9
		mkq "$S/harvest/ln2" --arch standard --hook blocks.1.ln2.hook_normalized --d-in $C --d-sae 64 --seed 10
		mk_all
		M=$d check_eval "$S/eval"
		M=$d check_harvest "$S/harvest"
		if [ "$post" = 1 ]; then # a z SAE is harvested, not spliced, where the attention has a norm of its own
			mk "$S/z" --arch standard --hook blocks.1.attn.hook_z --d-in $Q --d-sae 64 --seed 4
			run --separate-stderr circ-forward --model "$d" --dict "$S/z" --json $TOK
			assert_failure
			[[ "$stderr" == *"cannot be spliced into $t"* ]]
		fi
	done
}

@test "circ-forward --dict: the measures do not depend on the batch size or the thread count" {
	make_set
	circ-forward --model $M --dict "$T/set" --batch 1 --threads 1 --json $TOK | tail -n +2 >"$T/a"
	circ-forward --model $M --dict "$T/set" --batch 3 --threads 2 --json $TOK | tail -n +2 >"$T/b"
	/usr/bin/python3 - "$T/a" "$T/b" <<'PY'
import json, sys
a = [json.loads(l) for l in open(sys.argv[1])]
b = [json.loads(l) for l in open(sys.argv[2])]
assert len(a) == len(b) == 11
for x, y in zip(a[:-1], b[:-1]):
    for k, v in x.items():
        if isinstance(v, float):
            assert abs(v - y[k]) <= 1e-6 * abs(v) + 1e-9, (k, v, y[k])
        else:
            assert v == y[k], (k, v, y[k])
PY
}

@test "circ-harvest --dict: feature activations of every architecture and hook point against the reference" {
	make_set
	check_harvest "$T/set"
}

@test "circuit-tracer transcoder files: JumpReLU with skip (default hooks) and ReLU on mlp.hook_in" {
	/usr/bin/python3 "$REF" make-ct "$T/ct" --layers 2 --d-in 24 --d-sae 32 --jumprelu --skip --seed 3
	check_eval "$T/ct"
	check_harvest "$T/ct"
	/usr/bin/python3 "$REF" make-ct "$T/ct2" --layers 2 --d-in 24 --d-sae 32 --seed 4 --in-hook mlp.hook_in --out-hook mlp.hook_out
	check_eval "$T/ct2"
	jq -e -s '.[2] | .dict == 1 and .hook_name == "blocks.1.mlp.hook_in" and .architecture == "transcoder"' "$T/c.jsonl"
}

@test "a dictionary that reconstructs exactly changes nothing: fvu 0, CE loss recovered 1, KL 0" {
	mk "$T/id/a" --arch standard --hook blocks.0.hook_resid_mid --d-in 24 --d-sae 48 --identity --apply-b-dec 0
	mk "$T/id/b" --arch standard --hook blocks.1.attn.hook_z --d-in 24 --d-sae 48 --identity
	mk "$T/id/c" --arch standard --hook blocks.1.hook_mlp_in --d-in 24 --d-sae 48 --identity
	circ-forward --model $M --dict "$T/id" --json $TOK >"$T/o"
	run jq -e -s '.[1:-1] | length == 3 and all(.fvu == 0 and .mse == 0 and (.ce_spliced - .ce_clean | fabs) < 1e-9 and (.ce_loss_recovered - 1 | fabs) < 1e-9 and (.kl | fabs) < 1e-9)' "$T/o"
	[ "$status" -eq 0 ]
}

@test "the shipped example set (tests/data/dict/tiny) matches the reference" {
	check_eval tests/data/dict/tiny
	check_harvest tests/data/dict/tiny
}

@test "the dictionaries shipped with induction-trained (make fixtures-dicts) measure as fixtures/README.md says" {
	F=fixtures/induction-trained
	circ-dataset induction --len 12 --vocab-lo 0 --vocab-hi 256 --n 500 --seed 0 | circ-tokenize --model-dir $F >"$T/tok"
	run bash -o pipefail -c "circ-forward --model $F --dict $F/saes --json <'$T/tok' | sed -n 2p | jq -r '[.architecture, .l0, (.fvu < 0.02), (.ce_loss_recovered > 0.93), (.kl < 0.05)] | @tsv'"
	assert_success
	assert_output "$(printf 'topk\t16\ttrue\ttrue\ttrue')"
	run bash -o pipefail -c "circ-forward --model $F --dict $F/transcoders --json <'$T/tok' | sed -n '2,3p' | jq -r '[.hook_name_out, (.fvu < 0.01), (.ce_loss_recovered > 0.99), (.kl < 0.005)] | @tsv'"
	assert_success
	assert_output "$(printf 'blocks.0.hook_mlp_out\ttrue\ttrue\ttrue\nblocks.1.hook_mlp_out\ttrue\ttrue\ttrue')"
}

@test "the streams follow schemas/dict-eval.schema.json and dict-acts.schema.json (and a missing key fails them)" {
	circ-forward --model $M --dict tests/data/dict/tiny --json $TOK >"$T/e"
	/usr/bin/python3 tests/validate.py schemas/dict-eval.schema.json "$T/e"
	circ-harvest --model $M --dict tests/data/dict/tiny --json $TOK >"$T/h"
	/usr/bin/python3 tests/validate.py schemas/dict-acts.schema.json "$T/h"
	sed '2s/"fvu":[^,]*,//' "$T/e" >"$T/e2"
	run /usr/bin/python3 tests/validate.py schemas/dict-eval.schema.json "$T/e2"
	[ "$status" -ne 0 ]
	sed '2s/"row_ptr":/"rowptr":/' "$T/h" >"$T/h2"
	run /usr/bin/python3 tests/validate.py schemas/dict-acts.schema.json "$T/h2"
	[ "$status" -ne 0 ]
}

@test "binary output equals the JSON lines (circ cat)" {
	circ-forward --model $M --dict tests/data/dict/tiny -o "$T/e.circ" $TOK
	circ-forward --model $M --dict tests/data/dict/tiny --json $TOK | sed 1d >"$T/j"
	circ cat --json "$T/e.circ" | sed 1d >"$T/k"
	cmp "$T/j" "$T/k"
}

@test "--dict: options that do not apply are usage errors" {
	run --separate-stderr -2 circ-forward --model $M --dict tests/data/dict/tiny --corrupt $TOK
	[[ "$stderr" == *"--dict: --logits and --corrupt do not apply"* ]]
	run --separate-stderr -2 circ-harvest --model $M --dict tests/data/dict/tiny --ablation mean $TOK
	[[ "$stderr" == *"--dict: --ablation does not apply"* ]]
	circ-forward --help | grep -q -- '--dict DIR'
	circ-harvest --help | grep -q -- '--dict DIR'
}

@test "dict_ref.py cfgcheck (run by test_dict on what circ writes) fails on a missing key and a wrong type" {
	mk "$T/d" --arch topk --k 4 --hook blocks.0.hook_resid_pre --d-in 24 --d-sae 32
	/usr/bin/python3 "$REF" cfgcheck "$T/d"
	jq '.d_in = "24"' "$T/d/cfg.json" >"$T/c" && cp "$T/c" "$T/d/cfg.json"
	run /usr/bin/python3 "$REF" cfgcheck "$T/d"
	[ "$status" -ne 0 ] && [[ "$output" == *"key 'd_in'"* ]]
	jq 'del(.d_in) | del(.hook_layer)' "$T/d/cfg.json" >"$T/c" && cp "$T/c" "$T/d/cfg.json"
	run /usr/bin/python3 "$REF" cfgcheck "$T/d"
	[ "$status" -ne 0 ] && [[ "$output" == *"key 'd_in' missing"* ]]
}

iv_check() { # circ-forward interventions (names) -- reference specs
	local c=() r=()
	while [ "$1" != "--" ]; do c+=(--intervene "$1"); shift; done
	shift
	circ-forward --model $M --dict tests/data/dict/tiny "${c[@]}" --json $TOK >"$T/iv.jsonl"
	/usr/bin/python3 "$REF" intervene $M tests/data/dict/tiny $TOK "$@" >"$T/ivr.jsonl"
	/usr/bin/python3 - "$T/iv.jsonl" "$T/ivr.jsonl" <<'PY'
import json, sys
c = {r["id"]: r["metric"] for r in map(json.loads, open(sys.argv[1])) if "id" in r and "metric" in r}
r = {x["id"]: x["metric"] for x in map(json.loads, open(sys.argv[2]))}
assert c.keys() == r.keys() and c, (c, r)
scale = max(abs(v) for v in r.values())
worst = max(abs(c[k] - r[k]) for k in r) / scale
print("worst", worst)
assert worst < 1e-5, worst
PY
}

@test "circ-forward --dict --intervene: set and scale features of an SAE and a skip transcoder against the reference; an identity edit gives the model back" {
	iv_check 'resid_pre0.f3@2=4' 'resid_pre0.f10@5*0' -- '0:3@2=4' '0:10@5*0'
	iv_check 'tc1.f7@6=2.5' 'tc1.f0@3*3' -- '1:7@6=2.5' '1:0@3*3'
	# the edit moves the metric (the check above can fail)
	circ-forward --model $M --json $TOK | jq -c 'select(.id != null) | .metric' >"$T/plain"
	jq -c 'select(.id != null) | .metric' "$T/iv.jsonl" >"$T/edited"
	run ! cmp -s "$T/plain" "$T/edited"
	# scaling by 1 keeps the error and every feature: the model's own metric
	circ-forward --model $M --dict tests/data/dict/tiny --intervene 'tc1.f7@6*1' --json $TOK |
		jq -c 'select(.id != null) | .metric' >"$T/same"
	/usr/bin/python3 - "$T/plain" "$T/same" <<'PY'
import sys
a = [float(l) for l in open(sys.argv[1])]
b = [float(l) for l in open(sys.argv[2])]
assert len(a) == len(b) and max(abs(x - y) for x, y in zip(a, b)) <= 1e-5 * max(map(abs, a)), (a, b)
PY
}

@test "circ-forward --intervene: bad specs and names are refused with a message" {
	run --separate-stderr circ-forward --model $M --intervene 'tc1.f7@6=2' $TOK
	[ "$status" -eq 2 ] && [[ "$stderr" == *"--intervene needs --dict DIR"* ]]
	for bad in 'tc1.f7=2' 'tc1.f7@6' 'tc1.fx@6=2' 'tc1.f7@6=abc'; do
		run --separate-stderr circ-forward --model $M --dict tests/data/dict/tiny --intervene "$bad" $TOK
		[ "$status" -eq 2 ] && [[ "$stderr" == *"--intervene '$bad'"* ]]
	done
	run --separate-stderr circ-forward --model $M --dict tests/data/dict/tiny --intervene 'mlp5.f1@0=1' $TOK
	[ "$status" -eq 1 ] && [[ "$stderr" == *"no dictionary named 'mlp5'"* ]]
	run --separate-stderr circ-forward --model $M --dict tests/data/dict/tiny --intervene 'tc1.f64@0=1' $TOK
	[ "$status" -eq 1 ] && [[ "$stderr" == *"feature 64 of 64"* ]]
	run --separate-stderr circ-forward --model $M --dict tests/data/dict/tiny --intervene 'tc1.f1@0=1' --intervene 'resid_pre0.f1@0=1' $TOK
	[ "$status" -eq 1 ] && [[ "$stderr" == *"one dictionary"* ]]
	run --separate-stderr circ-forward --model $M --dict tests/data/dict/tiny --intervene 'tc1.f1@7=1' $TOK
	[ "$status" -eq 1 ] && [[ "$stderr" == *"position 7: the prompts have 7 tokens"* ]]
}
