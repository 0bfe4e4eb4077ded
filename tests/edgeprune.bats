#!/usr/bin/env bats
# circ-prune --edge-pruning: the command line, the ground truth of the
# hand-built fixtures (edges ranked by the trained log_alpha: ROC AUC >=
# 0.95; the truth's own size recovers the truth), the training curve's
# stream, determinism from the seed, and bad input. The mask gradients are
# checked in tests/unit/test_edgeprune.c (finite differences, PyTorch).
load helper

MODELS="induction-hand ioi-hand"

setup_file() {
	local m
	for m in $MODELS; do
		circ-fixture "$m" --examples 32 --seed 1 |
			circ-tokenize --vocab-dir "fixtures/$m" >"$BATS_FILE_TMPDIR/$m.tok"
	done
}

@test "prune --help lists the edge-pruning options" {
	run --separate-stderr circ-prune --help
	assert_success
	for o in --edge-pruning --sparsity --target-edges --steps --warmup --lr --lr-lambda --init --node-sparsity --seed; do
		assert_output --partial -- "$o"
	done
}

@test "prune --edge-pruning: usage errors" {
	local tok="$BATS_FILE_TMPDIR/ioi-hand.tok"
	run --separate-stderr circ-prune --edge-pruning --sparsity 0.9 "$tok"
	assert_failure 2
	[[ "$stderr" == *"--edge-pruning needs --model DIR"* ]]
	run --separate-stderr circ-prune --edge-pruning --model fixtures/ioi-hand "$tok"
	assert_failure 2
	[[ "$stderr" == *"one of --sparsity S and --target-edges N"* ]]
	run --separate-stderr circ-prune --edge-pruning --model fixtures/ioi-hand --sparsity 0.5 --target-edges 3 "$tok"
	assert_failure 2
	run --separate-stderr circ-prune --edge-pruning --model fixtures/ioi-hand --sparsity 1 "$tok"
	assert_failure 2
	run --separate-stderr circ-prune --edge-pruning --model fixtures/ioi-hand --sparsity 0.5 --steps 10 --warmup 20 "$tok"
	assert_failure 2
	[[ "$stderr" == *"--warmup"* ]]
	run --separate-stderr circ-prune --edge-pruning --model fixtures/ioi-hand --target-edges 100000 "$tok"
	assert_failure 2
	[[ "$stderr" == *"more than the graph's"* ]]
	run --separate-stderr circ-prune --top-n 3 --sparsity 0.5 tests/data/prune/scores.jsonl
	assert_failure 2
	[[ "$stderr" == *"option '--sparsity' goes with --edge-pruning"* ]]
	run --separate-stderr circ-prune --acdc --model fixtures/ioi-hand --steps 3 "$tok"
	assert_failure 2
}

@test "prune --edge-pruning finds the fixtures' circuits (ROC AUC >= 0.95 by log_alpha)" {
	local m n auc
	for m in $MODELS; do
		n=$(circ-cat --no-header "fixtures/$m/truth.jsonl" | wc -l)
		circ-prune --edge-pruning --model "fixtures/$m" --target-edges "$n" --steps 100 \
			--truth "fixtures/$m/truth.jsonl" --report "$T/$m.json" --log "$T/$m.log" \
			-o "$T/$m.circ" "$BATS_FILE_TMPDIR/$m.tok" 2>"$T/err"
		grep -q "edge-pruning: 100 steps in" "$T/err"
		auc=$(jq .auc "$T/$m.json")
		echo "$m: auc $auc, tpr $(jq .tpr "$T/$m.json")"
		/usr/bin/python3 -c "import sys; sys.exit(0 if $auc >= 0.95 else 1)"
		# the truth's own size gives the truth
		[ "$(jq .tpr "$T/$m.json")" = 1 ]
		circ-cat "$T/$m.circ" | tests/validate.py schemas/circuit.schema.json
		[ "$(circ-cat "$T/$m.circ" | head -1 | jq -r .source.mode)" = edge-pruning ]
		circ-cat "$T/$m.log" | tests/validate.py schemas/edge-pruning.schema.json
		[ "$(circ-cat --no-header "$T/$m.log" | grep -c '"step"')" = 100 ]
	done
}

@test "prune --edge-pruning --node-sparsity: node masks too, the circuit still found" {
	local m=ioi-hand n
	n=$(circ-cat --no-header "fixtures/$m/truth.jsonl" | wc -l)
	circ-prune --edge-pruning --model "fixtures/$m" --target-edges "$n" --node-sparsity 0.5 \
		--steps 100 --truth "fixtures/$m/truth.jsonl" --report "$T/r.json" --log "$T/log" \
		-o "$T/c.circ" "$BATS_FILE_TMPDIR/$m.tok" 2>/dev/null
	/usr/bin/python3 -c "import sys; sys.exit(0 if $(jq .auc "$T/r.json") >= 0.95 else 1)"
	circ-cat "$T/log" | tests/validate.py schemas/edge-pruning.schema.json
	[ "$(circ-cat "$T/log" | head -1 | jq .node_sparsity)" = 0.5 ]
	circ-cat --no-header "$T/log" | tail -1 | jq -e '.nodes >= 1 and .node_target == 0.5'
}

@test "prune --edge-pruning is deterministic from the seed, whatever the thread count" {
	local tok="$BATS_FILE_TMPDIR/ioi-hand.tok"
	for run in "1 1" "1 2" "2 2"; do
		set -- $run
		circ-prune --edge-pruning --model fixtures/ioi-hand --sparsity 0.8 --steps 30 \
			--seed $1 --threads $2 --json "$tok" 2>/dev/null | circ-cat --no-header >"$T/s$1-t$2"
	done
	[ -s "$T/s1-t1" ]
	diff "$T/s1-t1" "$T/s1-t2"
	run ! diff -q "$T/s1-t2" "$T/s2-t2"
}

@test "prune --edge-pruning: a scores stream is no token stream" {
	run --separate-stderr circ-prune --edge-pruning --model tests/data/tiny/model --sparsity 0.5 tests/data/prune/scores.jsonl
	assert_failure 1
	[[ "$stderr" == *"expected 'tokens'"* ]]
}

# The families' per-node output gradients (tests/unit/test_family_outgrad.c
# checks them and the mask gradient against references): Llama, GPT-NeoX
# (parallel blocks) and Gemma 2 (norms after the blocks) train a few steps,
# the same bytes for 1 and 2 threads.
@test "prune --edge-pruning runs on the families (llama, gpt_neox, gemma2)" {
	local m
	for m in llama gpt_neox gemma2; do
		for th in 1 2; do
			circ-prune --edge-pruning --model "tests/data/families/$m" --sparsity 0.5 \
				--steps 6 --warmup 3 --threads $th --log "$T/$m.log" -o "$T/$m-$th.circ" \
				tests/data/tiny/tokens.jsonl 2>"$T/err"
			grep -q "edge-pruning: 6 steps in" "$T/err"
		done
		circ-cat "$T/$m-1.circ" | tests/validate.py schemas/circuit.schema.json
		diff <(circ-cat --no-header "$T/$m-1.circ") <(circ-cat --no-header "$T/$m-2.circ")
		circ-cat "$T/$m.log" | tests/validate.py schemas/edge-pruning.schema.json
		[ "$(circ-cat --no-header "$T/$m.log" | grep -c '"step"')" = 6 ]
		circ-cat --no-header "$T/$m.log" | jq -se 'map(select(.step)) | all(.loss | isfinite)'
	done
}

@test "PRUNE=edge-pruning through the pipeline" {
	run make --no-print-directory -f pipelines/induction.mk RUNS="$T/runs" N=16 PRUNE=edge-pruning EP_STEPS=30 report
	assert_success
	assert_output --partial "edge pruning (8 edges, 30 steps, loss kl)"
	assert_output --partial "ROC AUC"
	d=$(ls -d "$T"/runs/induction/*/n16-s0/edge-pruning-kl-n8-steps30-seed1-resample)
	circ-cat "$d/training.circ" | tests/validate.py schemas/edge-pruning.schema.json
}
