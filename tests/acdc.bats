#!/usr/bin/env bats
# circ-prune --acdc --acdc-order reference: ACDC in the reference
# implementation's order (ArthurConmy/Automatic-Circuit-Discovery), checked
# test by test against tests/ref/acdc_ref.py, an independent re-implementation
# of that order over tests/ref/patch_ref.py's exact patching (float64).
load helper

REF=tests/ref/acdc_ref.py

# Tokens of hand-built fixture $1 (16 examples) in $T/$1.tok and, as JSON
# lines, $T/$1.tok.jsonl.
fixture_tokens() {
	circ-fixture "$1" --examples 16 --seed 2 | circ-tokenize --vocab-dir "fixtures/$1" >"$T/$1.tok"
	circ-cat --no-header "$T/$1.tok" >"$T/$1.tok.jsonl"
}

# reference_run MODEL TOKENS NAME [circ-prune options]: ACDC in the
# reference order; $T/NAME.dec (decisions) and $T/NAME.circ (circuit) as
# JSON lines.
reference_run() {
	local model=$1 tok=$2 name=$3
	shift 3
	circ-prune --acdc --acdc-order reference --model "$model" --log "$T/$name.log" \
		--json "$@" "$tok" 2>"$T/$name.err" | circ-cat --no-header >"$T/$name.circ"
	circ-cat --no-header "$T/$name.log" >"$T/$name.dec"
}

@test "acdc order: usage errors" {
	tok=tests/data/tiny/tokens.jsonl
	run --separate-stderr circ-prune --acdc --model tests/data/tiny/model --acdc-order bogus $tok
	assert_failure 2
	[[ "$stderr" == *"'--acdc-order': 'bogus' is neither circ nor reference"* ]]
	run --separate-stderr circ-prune --acdc --model tests/data/tiny/model --acdc-order reference --acdc-indices sideways $tok
	assert_failure 2
	[[ "$stderr" == *"'--acdc-indices': 'sideways' is neither normal nor reverse"* ]]
	run --separate-stderr circ-prune --acdc --model tests/data/tiny/model --acdc-names reverse $tok
	assert_failure 2
	[[ "$stderr" == *"option '--acdc-names' goes with --acdc-order reference"* ]]
	run --separate-stderr circ-prune --acdc --model tests/data/tiny/model --acdc-order reference --group 4 $tok
	assert_failure 2
	[[ "$stderr" == *"no --group"* ]]
	run --separate-stderr circ-prune --acdc --model tests/data/tiny/model --acdc-order reference --level node $tok
	assert_failure 2
	[[ "$stderr" == *"needs --level edge"* ]]
	run --separate-stderr circ-prune --top-n 3 --acdc-order reference tests/data/prune/scores.jsonl
	assert_failure 2
	[[ "$stderr" == *"option '--acdc-order' goes with --acdc"* ]]
}

@test "acdc reference order: the reference's tests, order and decisions on the hand-built fixtures, every mode" {
	for m in induction-hand ioi-hand; do
		fixture_tokens $m
		for mode in "normal normal acdc" "reverse normal acdc" "normal reverse eap-ig" "reverse reverse acdc"; do
			set -- $mode
			reference_run fixtures/$m "$T/$m.tok" r --tau 0.001 --acdc-indices $1 --acdc-names $2 --convention $3
			run /usr/bin/python3 $REF fixtures/$m "$T/$m.tok.jsonl" "$T/r.dec" "$T/r.circ" \
				--tau 0.001 --indices $1 --names $2 --convention $3
			echo "$m $mode: $output"
			assert_success
			# the whole-input tests are there, and logged as the schema says
			grep -q '"receiver":"a[0-9]*.h[0-9]*<[qkv]>"' "$T/r.dec"
			circ-cat "$T/r.log" | tests/validate.py schemas/decisions.schema.json
			circ-cat "$T/r.log" | head -1 | jq -e ".order == \"reference\" and .indices_mode == \"$1\" and .names_mode == \"$2\"" >/dev/null
		done
	done
}

@test "acdc reference order: the check fails on another order or mode" {
	m=ioi-hand
	fixture_tokens $m
	# circ's own order is not the reference's
	circ-prune --acdc --model fixtures/$m --convention acdc --log "$T/c.log" --json "$T/$m.tok" 2>/dev/null |
		circ-cat --no-header >"$T/c.circ"
	circ-cat --no-header "$T/c.log" >"$T/c.dec"
	run /usr/bin/python3 $REF fixtures/$m "$T/$m.tok.jsonl" "$T/c.dec" "$T/c.circ"
	assert_failure 1
	assert_output --partial "FAIL: test 17: reference order a2.h1<v> kept=False, circ m1->a2.h1<v>"
	# indices reverse is another order than normal
	reference_run fixtures/$m "$T/$m.tok" r --convention acdc --acdc-indices reverse
	run /usr/bin/python3 $REF fixtures/$m "$T/$m.tok.jsonl" "$T/r.dec" "$T/r.circ" --indices normal
	assert_failure 1
	assert_output --partial "FAIL: test 2: reference order a2.h3->logits kept=False, circ a2.h0->logits"
}

@test "acdc orders: the same circuit on the hand-built fixtures, another on a random model with interacting edges" {
	# hand-built: every true edge carries its effect alone, nothing else
	# matters, so the order cannot change the circuit; the tests differ
	for m in induction-hand ioi-hand; do
		fixture_tokens $m
		circ-prune --acdc --model fixtures/$m --convention acdc --log "$T/c.log" --json "$T/$m.tok" 2>/dev/null |
			circ-cat --no-header | jq -r .edge >"$T/c.edges"
		for idx in normal reverse; do
			reference_run fixtures/$m "$T/$m.tok" r --convention acdc --acdc-indices $idx
			diff "$T/c.edges" <(jq -r .edge "$T/r.circ")
			run ! diff -q <(circ-cat --no-header "$T/c.log" | jq -r .edge) <(jq -r '.edge // .receiver' "$T/r.dec") >/dev/null
		done
		# and it is the planted circuit (ROC AUC 1 against the truth, whose
		# graph has circ's default convention)
		circ-prune --acdc --acdc-order reference --model fixtures/$m --truth fixtures/$m/truth.jsonl \
			--report "$T/roc.json" -o /dev/null "$T/$m.tok" 2>/dev/null
		jq -e '.auc == 1' "$T/roc.json"
	done
	# a random model (tests/data/tiny) at tau 0.01: edges interact, and the
	# order decides which of them stay; the reference order's circuit is the
	# reference's own (checked), and not circ's order's
	tok=tests/data/tiny/tokens.jsonl
	circ-cat --no-header $tok >"$T/tiny.jsonl"
	reference_run tests/data/tiny/model $tok r --convention acdc --tau 0.01
	run /usr/bin/python3 $REF tests/data/tiny/model "$T/tiny.jsonl" "$T/r.dec" "$T/r.circ" --tau 0.01
	assert_success
	circ-prune --acdc --model tests/data/tiny/model --convention acdc --tau 0.01 --json $tok 2>/dev/null |
		circ-cat --no-header | jq -r .edge >"$T/c.edges"
	run diff "$T/c.edges" <(jq -r .edge "$T/r.circ")
	assert_failure
	assert_output --partial "input->a0.h1<q>"
	# no decision was close to tau: float32 (circ) and float64 (reference) agree
	jq -s -e 'map(.change - 0.01 | fabs) | min > 0.001' "$T/r.dec" >/dev/null
}

@test "acdc reference order: the reference's decisions with a task metric, zero ablation and |change|" {
	tok=tests/data/tiny/tokens.jsonl
	circ-cat --no-header $tok >"$T/tiny.jsonl"
	for opts in "--metric logit_diff --tau 0.05" "--ablation zero --tau 0.03" "--abs-change --tau 0.01" \
		"--metric logit_diff --abs-change --ablation zero --tau 0.05"; do
		reference_run tests/data/tiny/model $tok r --convention acdc $opts
		run /usr/bin/python3 $REF tests/data/tiny/model "$T/tiny.jsonl" "$T/r.dec" "$T/r.circ" $opts
		echo "$opts: $output"
		assert_success
		# no decision within 1e-4 of tau (float32 against float64 cannot flip one)
		abs=false
		[[ "$opts" == *abs-change* ]] && abs=true
		jq -s -e --argjson abs $abs --argjson tau "${opts##* }" \
			'map((.change | if $abs then fabs else . end) - $tau | fabs) | min > 1e-4' "$T/r.dec" >/dev/null
	done
}

@test "acdc reference order on every model family: the reference's tests and decisions; parallel blocks as circ's graph has them" {
	tok=tests/data/tiny/tokens.jsonl
	circ-cat --no-header $tok >"$T/tiny.jsonl"
	n=0
	for d in tests/data/families/*/; do
		[ -e "$d/config.json" ] || continue
		reference_run "$d" $tok r --tau 0.005 --acdc-names reverse
		run /usr/bin/python3 $REF "$d" "$T/tiny.jsonl" "$T/r.dec" "$T/r.circ" --tau 0.005 --names reverse
		echo "$(basename "$d"): $output"
		assert_success
		# no decision within 2e-5 of tau (float32 against float64 cannot flip one)
		jq -s -e 'map(.change - 0.005 | fabs) | min > 2e-5' "$T/r.dec" >/dev/null
		n=$((n + 1))
	done
	[ "$n" -ge 10 ]
	# GPT-NeoX's parallel blocks: the reference's own graph (TLACDCCorrespondence)
	# gives a layer's heads edges into that layer's MLP input, which a parallel
	# block's MLP does not read; removing one puts the head's corrupted minus
	# clean output into the MLP's input. circ has no such edges: both indices
	# modes agree with the reference order over circ's graph, and the reference's
	# graph tests (here: keeps) an edge that is not in the computation.
	d=tests/data/families/gpt_neox
	for idx in normal reverse; do
		reference_run $d $tok r --tau 0.002 --acdc-indices $idx
		run /usr/bin/python3 $REF $d "$T/tiny.jsonl" "$T/r.dec" "$T/r.circ" --tau 0.002 --indices $idx
		assert_success
		jq -s -e 'map(.change - 0.002 | fabs) | min > 2e-5' "$T/r.dec" >/dev/null
		run /usr/bin/python3 $REF $d "$T/tiny.jsonl" "$T/r.dec" "$T/r.circ" --tau 0.002 --indices $idx --parallel reference
		assert_failure 1
		assert_output --regexp "FAIL: test 12: reference order a1\.h[03]->m1 kept=True, circ m0->m1"
	done
}
