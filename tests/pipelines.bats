#!/usr/bin/env bats
# The make pipelines end to end on the shipped fixture models: caching (a
# rerun does nothing, a changed setting reruns only what depends on it), no
# half-written targets, sweeps with GNU parallel over local "hosts", shards.
load helper

setup() {
	T="$BATS_TEST_TMPDIR"
	cd "$ROOT"
	RUNS="$T/runs"
}

pipe() { make --no-print-directory -f pipelines/induction.mk RUNS="$RUNS" N=16 "$@"; }

@test "the induction pipeline runs end to end and reports" {
	run pipe METHOD=eap report
	assert_success
	assert_output --partial "faithfulness"
	assert_output --partial "ROC AUC"
	assert_output --partial "CPR"
	d=$(ls -d "$RUNS"/induction/*/n16-s0/eap-resample/top-n*)
	for f in circuit.circ circuit.svg circuit.html circuit.txt faithfulness.circ report.txt; do
		[ -s "$d/$f" ] || { echo "missing $d/$f"; return 1; }
	done
	circ-cat "$d/circuit.circ" | tests/validate.py schemas/circuit.schema.json
}

@test "a rerun does nothing; a changed setting reruns only what depends on it" {
	pipe METHOD=eap report >/dev/null
	run pipe METHOD=eap -n report
	assert_success
	refute_output --partial "circ-" # nothing to remake: only the report is shown
	tok=$(ls "$RUNS"/induction/*/n16-s0/tokens.circ)
	before=$(stat -c %Y "$tok")
	sleep 1
	run pipe METHOD=exact report
	assert_success
	[ "$(stat -c %Y "$tok")" = "$before" ] # the dataset and tokens are reused
	ls -d "$RUNS"/induction/*/n16-s0/exact-resample >/dev/null
}

@test "an interrupted step leaves no half-written target" {
	pipe METHOD=eap scores >/dev/null
	s=$(ls "$RUNS"/induction/*/n16-s0/eap-resample/scores.circ)
	rm "$s"
	# a failing scorer: its target must not appear
	run pipe METHOD=eap CIRCBIN=/nonexistent/ scores
	assert_failure
	[ ! -e "$s" ]
	[ -z "$(find "$RUNS" -name '*.tmp*')" ]
}

@test "ACDC through the pipeline" {
	run pipe PRUNE=acdc report
	assert_success
	assert_output --partial "acdc"
	assert_output --partial "ROC AUC"
}

@test "a sweep over methods and seeds runs on two local 'hosts' through --sshlogin" {
	PARALLEL_SSH="$ROOT/tests/fake-ssh" run pipelines/sweep.sh -S "1/hostA,1/hostB" -m "eap eap-ig" -s "0 1" -- RUNS="$RUNS" N=8
	assert_success
	[ "$(ls -d "$RUNS"/induction/*/n8-s*/eap*-resample* | wc -l)" -eq 4 ]
}

@test "shards scored on two hosts and merged equal one run" {
	pipe METHOD=eap scores >/dev/null
	tok=$(ls "$RUNS"/induction/*/n16-s0/tokens.circ)
	PARALLEL_SSH="$ROOT/tests/fake-ssh" pipelines/shards.sh -k 3 -S "1/hostA,1/hostB" -o "$T/m.circ" "$tok" -- --model fixtures/induction-hand --method exact
	circ-score --model fixtures/induction-hand --method exact -o "$T/one.circ" "$tok"
	/usr/bin/python3 - "$T/m.circ" "$T/one.circ" <<'PY'
import json, subprocess, sys
def load(p):
    out = subprocess.run(["circ-cat", "--no-header", p], capture_output=True, text=True, check=True).stdout
    return {r["edge"]: r["score"] for r in map(json.loads, out.splitlines())}
a, b = load(sys.argv[1]), load(sys.argv[2])
assert a.keys() == b.keys()
worst = max(abs(a[k] - b[k]) for k in a)
# merging adds sums exactly; batches of other sizes round differently in float32
assert worst < 1e-6 * max(1.0, max(abs(v) for v in b.values())), worst
PY
}

@test "the IOI pipeline recovers the hand-built IOI circuit" {
	run make --no-print-directory -s -f pipelines/ioi.mk MODEL=fixtures/ioi-hand RUNS="$RUNS" N=16 METHOD=eap-ig report
	assert_success
	auc=$(jq .auc "$RUNS"/ioi/ioi-hand/n16-s0/eap-ig-resample-steps5/top-n*/roc.json)
	awk -v a="$auc" 'BEGIN { exit !(a >= 0.95) }'
}

@test "ioi, greater-than and docstring pipelines run on GPT-2's tokenizer" {
	circ-fixture --random --vocab-dir fixtures/gpt2-tokenizer --out "$T/gpt2-random"
	for task in ioi greater-than docstring; do
		run make --no-print-directory -s -f pipelines/$task.mk MODEL="$T/gpt2-random" RUNS="$RUNS" N=6 METHOD=eap report
		assert_success
		assert_output --partial "faithfulness"
		[ -s "$RUNS/$task/gpt2-random/n6-s0/eap-resample/top-n20/circuit.html" ]
	done
}
