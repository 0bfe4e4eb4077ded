#!/usr/bin/env bats
# fixtures/induction-llama, a Llama-architecture model (RMSNorm, RoPE,
# SwiGLU, grouped-query attention with 4 heads over 2 key/value heads, q/k/v/o
# biases) trained by circ-train with the Makefile's FIXTURE_TRAIN_induction_llama
# recipe: its induction circuit (fixtures/README.md) is found by attention
# diagnostics, and the whole pipeline recovers it: circ-dataset ->
# circ-tokenize -> circ-score (eap, eap-ig, exact) -> circ-prune (top-n,
# ACDC) -> circ-patch. Every check fails on an untrained model of the same
# shape (circ-train ... --steps 1): its best layer-0 previous-token score is
# about 0.15 and no layer-1 head attends to the induction position.
load helper

M=fixtures/induction-llama

setup_file() {
	[ -d "$ROOT/$M" ] || return 0
	cd "$ROOT"
	D="$BATS_FILE_TMPDIR"
	args=$(sed -n 's/^DATASET_ARGS ?= *//p' $M/circ.mk)
	bin/circ-dataset induction --n 16 --model-dir $M $args | bin/circ-tokenize --model-dir $M -o "$D/tok.circ"
	bin/circ-train --diagnose $M >"$D/diag"
}

# The heads of the circuit, from the diagnostics: P, layer 0's best
# previous-token head; I, the layer-1 heads whose induction score is above 0.5.
heads() {
	[ -d $M ] || fail "$M is missing (make fixtures)"
	P=$(awk -F'\t' '$1 == 0 && $3 > best { best = $3; h = $2 } END { print h }' "$BATS_FILE_TMPDIR/diag")
	I=$(awk -F'\t' '$1 == 1 && $4 > 0.5 { printf "%s ", $2 }' "$BATS_FILE_TMPDIR/diag")
}

# The top n edges (by score) of a scores stream.
top_edges() { # scores n
	circ-cat --no-header "$1" | jq -r '[.score, .edge] | @tsv' | sort -gr | head -"$2" | cut -f2
}

# How many induction heads' keys read P among the edges in file f.
k_comp() { # f
	local n=0 h
	for h in $I; do
		if grep -qxF "a0.h$P->a1.h$h<k>" "$1"; then n=$((n + 1)); fi
	done
	echo $n
}

# The circuit's heads are there (the untrained model: 0.15 and 0.08).
@test "induction-llama: a Llama with grouped-query attention, a previous-token head in layer 0 and induction heads in layer 1" {
	heads
	run jq -r '.model_type, .num_attention_heads, .num_key_value_heads, .attention_bias, .torch_dtype' $M/config.json
	assert_output "$(printf 'llama\n4\n2\ntrue\nfloat32')"
	cat "$BATS_FILE_TMPDIR/diag"
	awk -F'\t' -v p="$P" '$1 == 0 && $2 == p { exit !($3 > 0.8) }' "$BATS_FILE_TMPDIR/diag"
	echo "previous-token head a0.h$P, induction heads in layer 1: $I"
	[ "$(wc -w <<<"$I")" -ge 2 ]
	awk -F'\t' '$1 == 1 && $4 > 0.7 { n++ } END { exit !(n >= 2) }' "$BATS_FILE_TMPDIR/diag"
}

# Patching each edge, and the two gradient methods: the previous-token
# head's value input (the token it moves) and its output into the induction
# heads' keys (K-composition) rank near the top. EAP ranks the K-composition
# edges lower than patching does (8th, 18th, 22nd) and a0.hP->m0 first.
@test "induction-llama: exact, eap-ig and eap rank the previous-token head's value input and its K-composition near the top" {
	heads
	for spec in exact:12:3 eap-ig:12:3 eap:25:2; do
		IFS=: read -r method n want <<<"$spec"
		circ-score --model $M --method $method -o "$T/s.circ" "$BATS_FILE_TMPDIR/tok.circ" 2>/dev/null
		top_edges "$T/s.circ" "$n" >"$T/top"
		echo "$method, top $n:" $(cat "$T/top")
		grep -qxF "input->a0.h$P<v>" "$T/top"
		[ "$(k_comp "$T/top")" -ge "$want" ]
	done
}

# ACDC (patching edges one by one, KL, tau 0.01) keeps the whole circuit and
# little else; circ-patch finds the kept edges faithful. Then the top edges by
# exact patching, pruned with --top-n, are patched the same way.
@test "induction-llama: ACDC and top-n keep the circuit; circ-patch measures it faithful" {
	heads
	circ-prune --acdc --model $M --tau 0.01 -o "$T/acdc.circ" "$BATS_FILE_TMPDIR/tok.circ" 2>/dev/null
	circ-cat --no-header "$T/acdc.circ" | jq -r .edge >"$T/kept"
	echo "ACDC kept:" $(cat "$T/kept")
	grep -qxF "input->a0.h$P<v>" "$T/kept"
	[ "$(k_comp "$T/kept")" -ge 3 ]
	for h in $I; do grep -qxF "a1.h$h->logits" "$T/kept"; done
	[ "$(wc -l <"$T/kept")" -le 40 ]
	run --separate-stderr circ-patch --model $M --circuit "$T/acdc.circ" -o "$T/f.circ" "$BATS_FILE_TMPDIR/tok.circ"
	assert_success
	echo "$stderr"
	f=$(sed -n 's/.*faithfulness \([-0-9.]*\).*/\1/p' <<<"$stderr")
	awk -v f="$f" 'BEGIN { exit !(f > 0.8) }'
	circ-score --model $M --method exact -o "$T/s.circ" "$BATS_FILE_TMPDIR/tok.circ" 2>/dev/null
	circ-prune --top-n 20 -o "$T/top.circ" "$T/s.circ"
	run --separate-stderr circ-patch --model $M --circuit "$T/top.circ" -o "$T/f2.circ" "$BATS_FILE_TMPDIR/tok.circ"
	assert_success
	echo "$stderr"
	f=$(sed -n 's/.*faithfulness \([-0-9.]*\).*/\1/p' <<<"$stderr")
	awk -v f="$f" 'BEGIN { exit !(f > 0.6) }'
}

# The pipeline as users run it (pipelines/induction.mk with the fixture's
# circ.mk settings): EAP-IG, top-n, patching, rendering.
@test "induction-llama: make -f pipelines/induction.mk runs end to end" {
	[ -d $M ] || fail "$M is missing (make fixtures)"
	run make --no-print-directory -s -f pipelines/induction.mk MODEL=$M RUNS="$T/runs" N=16 METHOD=eap-ig K=20 report
	assert_success
	assert_output --partial "faithfulness"
	s=$(ls "$T"/runs/induction/induction-llama/n16-s0/eap-ig-resample-steps5/scores.circ)
	circ-cat "$s" | head -1 | jq -e '.graph.model_type == "llama"'
}
