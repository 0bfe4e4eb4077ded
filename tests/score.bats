#!/usr/bin/env bats
# circ-score, circ-patch, circ-harvest and circ-prune --acdc against an
# independent PyTorch reference (tests/ref/patch_ref.py, float64), on small
# random models with several shapes and metrics. Tolerance: every score
# within 2e-4 x the largest |score| (plus 1e-3 relative) of the reference.
load helper

REF=tests/ref/patch_ref.py

setup_file() {
	export D="$BATS_FILE_TMPDIR"
	cd "$(dirname "$BATS_TEST_FILENAME")/.."
	/usr/bin/python3 tests/ref/patch_ref.py make "$D/ld" --metric logit_diff --layers 2 --heads 3 --embd 24 --n 3 --tau 0.02
	/usr/bin/python3 tests/ref/patch_ref.py make "$D/kl" --metric kl --layers 3 --heads 2 --embd 16 --T 6 --n 4 --seed 3 --tau 0.005
	/usr/bin/python3 tests/ref/patch_ref.py make "$D/pd" --metric prob_diff --layers 2 --heads 2 --embd 16 --T 5 --n 3 --seed 5
	/usr/bin/python3 tests/ref/patch_ref.py make "$D/lp" --metric logprob --layers 1 --heads 4 --embd 32 --T 9 --n 2 --seed 9
}

compare() { # dir method key [circ-score options]
	local d=$1 m=$2 k=$3
	shift 3
	circ-score --model "$d/model" --method "$m" --json "$@" "$d/tokens.jsonl" >"$T/$k.jsonl"
	/usr/bin/python3 $REF compare "$d/ref.json" "$k" "$T/$k.jsonl"
}

@test "exact patching matches the reference for every edge and metric" {
	for d in ld kl pd lp; do compare "$D/$d" exact exact --batch 2; done
}

@test "eap matches the reference" {
	for d in ld kl pd lp; do compare "$D/$d" eap eap; done
}

@test "eap-ig matches the reference" {
	for d in ld kl pd lp; do compare "$D/$d" eap-ig eap-ig --steps 5 --batch 3; done
}

@test "eap-ig-activations matches the reference" {
	for d in ld pd; do compare "$D/$d" eap-ig-activations eap-ig-activations; done
}

@test "exact patching with mean ablation matches the reference" {
	for d in ld kl; do compare "$D/$d" exact exact-mean --ablation mean; done
}

@test "circ-patch: faithfulness of a circuit matches the reference" {
	run --separate-stderr circ-patch --model "$D/ld/model" --circuit "$D/ld/circuit.jsonl" --json "$D/ld/tokens.jsonl"
	assert_success
	want=$(jq -r .circuit.faithfulness "$D/ld/ref.json")
	got=$(circ-cat --no-header <<<"$output" | tail -1 | jq -r .faithfulness)
	awk -v a="$got" -v b="$want" 'BEGIN { d = a - b; if (d < 0) d = -d; exit !(d < 1e-4) }'
	[[ "$stderr" == *"faithfulness"* ]]
	circ-cat --no-header <<<"$output" | tail -1 | jq -e '.summary == true and .n == 3'
	circ-patch --model "$D/ld/model" --circuit "$D/ld/circuit.jsonl" "$D/ld/tokens.jsonl" 2>/dev/null |
		circ-cat | tests/validate.py schemas/patch.schema.json
}

@test "circ-patch: no edge patched keeps f = 1, every edge patched gives f = 0" {
	circ-score --model "$D/ld/model" --list-edges | awk '{print "{\"edge\":\"" $0 "\"}"}' >"$T/all.jsonl"
	run --separate-stderr circ-patch --model "$D/ld/model" --edges "$T/all.jsonl" --json "$D/ld/tokens.jsonl"
	assert_success
	circ-cat --no-header <<<"$output" | tail -1 | jq -e '(.faithfulness | fabs) < 1e-6'
	echo '{"format":"circ","version":1,"kind":"circuit","graph":{"n_layer":2,"n_head":3,"level":"edge"}}' >"$T/none.jsonl"
	cat "$T/all.jsonl" >>"$T/none.jsonl"
	run --separate-stderr circ-patch --model "$D/ld/model" --circuit "$T/none.jsonl" --json "$D/ld/tokens.jsonl"
	assert_success
	circ-cat --no-header <<<"$output" | tail -1 | jq -e '(.faithfulness - 1 | fabs) < 1e-6'
}

@test "circ-patch --nodes patches whole nodes; --curve writes a faithfulness curve" {
	run --separate-stderr circ-patch --model "$D/ld/model" --nodes a0.h1,m1 --json "$D/ld/tokens.jsonl"
	assert_success
	circ-score --model "$D/ld/model" --method exact -o "$T/s.circ" "$D/ld/tokens.jsonl"
	run --separate-stderr circ-patch --model "$D/ld/model" --curve "$T/s.circ" --json "$D/ld/tokens.jsonl"
	assert_success
	circ-cat --no-header <<<"$output" | tail -1 | jq -e '.summary == true and (.cpr | type) == "number"'
	# the full graph is the last point: f = 1
	circ-cat --no-header <<<"$output" | tail -2 | head -1 | jq -e '.fraction == 1 and ((.faithfulness - 1) | fabs) < 1e-6'
	circ-patch --model "$D/ld/model" --curve "$T/s.circ" "$D/ld/tokens.jsonl" | circ-cat |
		tests/validate.py schemas/curve.schema.json
}

@test "acdc matches a brute-force reference (kl and logit_diff)" {
	circ-prune --acdc --model "$D/ld/model" --tau 0.02 --metric logit_diff --json "$D/ld/tokens.jsonl" >"$T/a.jsonl"
	/usr/bin/python3 $REF compare "$D/ld/ref.json" acdc "$T/a.jsonl"
	circ-prune --acdc --model "$D/kl/model" --tau 0.005 --batch 3 --log "$T/dec.circ" --json "$D/kl/tokens.jsonl" >"$T/b.jsonl"
	/usr/bin/python3 $REF compare "$D/kl/ref.json" acdc "$T/b.jsonl"
	circ-cat "$T/dec.circ" | tests/validate.py schemas/decisions.schema.json
	[ "$(circ-cat --no-header "$T/dec.circ" | jq -s 'map(select(.kept)) | length')" -ge 1 ]
}

@test "harvest then score --acts equals eap, and its stream validates" {
	circ-harvest --model "$D/ld/model" -o "$T/acts.circ" "$D/ld/tokens.jsonl"
	circ-cat "$T/acts.circ" | tests/validate.py schemas/acts.schema.json
	circ-score --acts "$T/acts.circ" --json >"$T/eap.jsonl"
	/usr/bin/python3 $REF compare "$D/ld/ref.json" eap "$T/eap.jsonl"
	# shards of a harvest concatenate
	run circ-cat --no-header "$T/acts.circ"
	[ "${#lines[@]}" -eq 3 ]
}

@test "score --acts reads f16 and bf16 tensors as f32 (no overflow of the f32 copies)" {
	circ-harvest --model "$D/ld/model" --json "$D/ld/tokens.jsonl" >"$T/acts.jsonl"
	jq -c 'if .diff then .diff.dtype = "f16" | .grad.dtype = "bf16" else . end' "$T/acts.jsonl" >"$T/acts16.jsonl"
	circ-score --acts --json "$T/acts.jsonl" | circ-cat --no-header >"$T/32.jsonl"
	circ-score --acts --json "$T/acts16.jsonl" | circ-cat --no-header >"$T/16.jsonl"
	# bf16 keeps 8 bits of mantissa: within 2% of the largest score
	jq -s -e '(.[0] | map(.score | fabs) | max) as $m |
		[.[0], .[1]] | transpose | all(.[0].edge == .[1].edge and ((.[0].score - .[1].score) | fabs) < 0.02 * $m)' \
		<(jq -s . "$T/32.jsonl") <(jq -s . "$T/16.jsonl")
}

@test "score --acts: a NaN or infinity in an activation is an error naming record and field" {
	circ-harvest --model "$D/ld/model" --json "$D/ld/tokens.jsonl" >"$T/acts.jsonl"
	jq -c 'if .id == 1 then .grad.data[5] = {"$f64": "NaN"} else . end' "$T/acts.jsonl" >"$T/nan.jsonl"
	run --separate-stderr circ-score --acts --json "$T/nan.jsonl"
	assert_failure 1
	[[ "$stderr" == *"nan.jsonl': record 2: field 'grad': element 5 is nan"* ]]
	jq -c 'if .id == 0 then .diff.data[0] = {"$f64": "-Infinity"} else . end' "$T/acts.jsonl" >"$T/inf.jsonl"
	run --separate-stderr circ-score --acts --json "$T/inf.jsonl"
	assert_failure 1
	[[ "$stderr" == *"record 1: field 'diff': element 0 is infinite"* ]]
	# let through on purpose
	run --separate-stderr circ-score --acts --allow-nonfinite --json "$T/nan.jsonl"
	assert_success
}

@test "a headerless JSON-lines token file scores like the same file with its header" {
	circ-score --model "$D/ld/model" --method eap --json "$D/ld/tokens.jsonl" | tail -n +2 >"$T/a.jsonl"
	tail -n +2 "$D/ld/tokens.jsonl" | jq -c 'del(.id)' >"$T/nh.jsonl"
	circ-score --model "$D/ld/model" --method eap --json "$T/nh.jsonl" | tail -n +2 | cmp - "$T/a.jsonl"
	circ-patch --model "$D/ld/model" --nodes m0 --json "$T/nh.jsonl" >/dev/null
}

@test "shards scored apart and merged equal one run" {
	circ-cat "$D/kl/tokens.jsonl" | head -3 >"$T/a.jsonl"
	{ head -1 "$D/kl/tokens.jsonl"; tail -2 "$D/kl/tokens.jsonl"; } >"$T/b.jsonl"
	circ-score --model "$D/kl/model" --method eap-ig -o "$T/a.circ" "$T/a.jsonl"
	circ-score --model "$D/kl/model" --method eap-ig -o "$T/b.circ" "$T/b.jsonl"
	circ-score --merge "$T/a.circ" "$T/b.circ" --json >"$T/m1.jsonl"
	cat "$T/a.circ" "$T/b.circ" | circ-score --merge --json >"$T/m2.jsonl"
	cmp <(circ-cat --no-header "$T/m1.jsonl") <(circ-cat --no-header "$T/m2.jsonl")
	/usr/bin/python3 $REF compare "$D/kl/ref.json" eap-ig "$T/m1.jsonl"
	head -1 "$T/m1.jsonl" | jq -e '.n_examples == 4'
	# concatenated, every part's n_examples counts (not the first header's alone)
	head -1 "$T/m2.jsonl" | jq -e '.n_examples == 4'
	# the same shard twice is refused, as files and concatenated
	run --separate-stderr circ-score --merge "$T/a.circ" "$T/a.circ"
	assert_failure 1
	[[ "$stderr" == *"a.circ': record 0: the same header as"* ]]
	run --separate-stderr bash -c "cat '$T/a.circ' '$T/b.circ' '$T/a.circ' | circ-score --merge"
	assert_failure 1
	[[ "$stderr" == *"concatenated stream repeats the header of part 1"* ]]
	circ-cat "$T/a.circ" | tests/validate.py schemas/scores.schema.json
}

@test "scores made with --merge or --acts keep ablation and sign (and steps), and validate" {
	circ-cat "$D/kl/tokens.jsonl" | head -3 >"$T/a.jsonl"
	{ head -1 "$D/kl/tokens.jsonl"; tail -2 "$D/kl/tokens.jsonl"; } >"$T/b.jsonl"
	circ-score --model "$D/kl/model" --method eap-ig --ablation zero -o "$T/a.circ" "$T/a.jsonl"
	circ-score --model "$D/kl/model" --method eap-ig --ablation zero -o "$T/b.circ" "$T/b.jsonl"
	circ-score --merge "$T/a.circ" "$T/b.circ" -o "$T/m.circ"
	circ-cat "$T/m.circ" | tests/validate.py schemas/scores.schema.json
	circ-cat --header "$T/a.circ" | jq -c '{ablation, sign, steps}' >"$T/want"
	circ-cat --header "$T/m.circ" | jq -c '{ablation, sign, steps}' | cmp - "$T/want"
	grep -q '"ablation":"zero"' "$T/want"
	# shards made with another ablation are not merged
	circ-score --model "$D/kl/model" --method eap-ig -o "$T/c.circ" "$T/b.jsonl"
	run --separate-stderr circ-score --merge "$T/a.circ" "$T/c.circ"
	assert_failure 1
	[[ "$stderr" == *"c.circ': scores made with another ablation"* ]]
	# --acts: the harvest's ablation
	circ-harvest --model "$D/ld/model" --ablation zero -o "$T/acts.circ" "$D/ld/tokens.jsonl"
	circ-score --acts "$T/acts.circ" -o "$T/s.circ"
	circ-cat "$T/s.circ" | tests/validate.py schemas/scores.schema.json
	circ-cat --header "$T/s.circ" | jq -e '.ablation == "zero" and (.sign | startswith("positive")) and .steps == 0'
}

@test "node-level graphs and the ACDC convention" {
	run --separate-stderr circ-score --model "$D/ld/model" --level node --method eap --json "$D/ld/tokens.jsonl"
	assert_success
	[ "${#lines[@]}" -eq $((2 + $(circ-render --list-edges --graph 2,3,node | wc -l))) ]
	run --separate-stderr circ-score --model "$D/ld/model" --convention acdc --method exact --json "$D/ld/tokens.jsonl"
	assert_success
	head -1 <<<"$output" | jq -e '.graph.convention == "acdc"'
}

@test "the same inputs give byte-identical scores" {
	circ-score --model "$D/ld/model" --method eap-ig "$D/ld/tokens.jsonl" >"$T/1.circ"
	circ-score --model "$D/ld/model" --method eap-ig "$D/ld/tokens.jsonl" >"$T/2.circ"
	cmp "$T/1.circ" "$T/2.circ"
}

@test "--max-memory cuts batches (one example each under 1K) and changes no score" {
	for m in eap eap-ig exact; do
		circ-score --model "$D/kl/model" --method $m --json "$D/kl/tokens.jsonl" >"$T/a.jsonl"
		circ-score --model "$D/kl/model" --method $m --json --max-memory 1K "$D/kl/tokens.jsonl" >"$T/b.jsonl"
		/usr/bin/python3 - "$T/a.jsonl" "$T/b.jsonl" <<'PY'
import json, sys
a, b = ([json.loads(l) for l in open(p)] for p in sys.argv[1:])
sa = {r["edge"]: r["score"] for r in a[1:] if "edge" in r}
sb = {r["edge"]: r["score"] for r in b[1:] if "edge" in r}
assert sa.keys() == sb.keys() and len(sa) > 0
top = max(abs(v) for v in sa.values())
worst = max(abs(sa[k] - sb[k]) for k in sa)
assert worst <= 1e-6 * top, worst
PY
	done
	for mm in 0 1K 3G 2048M 1GiB; do
		run --separate-stderr circ-score --model "$D/kl/model" --method eap --max-memory $mm -o "$T/o.circ" "$D/kl/tokens.jsonl"
		assert_success
	done
	# on a wider model, the cut batches hold a fraction of the memory (peak
	# RSS), with the same scores bit for bit
	circ-fixture --random --vocab-dir fixtures/induction-trained --out "$T/m" --layers 4 --heads 8 --embd 256 --ctx 128
	circ-dataset induction --len 60 --vocab-lo 0 --vocab-hi 256 --n 16 | circ-tokenize --model-dir "$T/m" >"$T/tok"
	for mm in 0 16M; do
		/usr/bin/time -f %M -o "$T/rss-$mm" circ-score --model "$T/m" --max-memory $mm --json "$T/tok" | tail -n +2 >"$T/s-$mm"
	done
	cmp "$T/s-0" "$T/s-16M"
	echo "peak RSS $(cat "$T/rss-0") KB without a limit, $(cat "$T/rss-16M") KB under 16M"
	[ "$(cat "$T/rss-16M")" -lt $(($(cat "$T/rss-0") / 3)) ]
	for bad in -1 1X 1.5G '' G; do
		run --separate-stderr circ-score --model "$D/kl/model" --method eap --max-memory "$bad" "$D/kl/tokens.jsonl"
		assert_failure 2
		[[ "$stderr" == *"'--max-memory'"*"is not a size"* ]]
	done
}

@test "bad input: an edge that is not in the graph" {
	echo '{"edge":"a5.h0->logits"}' >"$T/e.jsonl"
	run --separate-stderr circ-patch --model "$D/ld/model" --edges "$T/e.jsonl" "$D/ld/tokens.jsonl"
	assert_failure 1
	[[ "$stderr" == "circ-patch: '$T/e.jsonl': record 1: edge 'a5.h0->logits': node 'a5.h0': no layer 5 (the graph has layers 0-1)" ]]
	run --separate-stderr circ-patch --model "$D/ld/model" --nodes a0.h9 "$D/ld/tokens.jsonl"
	assert_failure 2
	[[ "$stderr" == *"node 'a0.h9'"* ]]
}

@test "bad input: token ids from another vocabulary, sequences past the context" {
	sed 's/"data": \[[0-9]*/"data": [900/' "$D/ld/tokens.jsonl" >"$T/v.jsonl"
	run --separate-stderr circ-score --model "$D/ld/model" "$T/v.jsonl"
	assert_failure 1
	[[ "$stderr" == "circ-score: '$T/v.jsonl': record 1: field 'clean': token 900 at position 0 is outside the vocabulary (40 tokens; was the stream made with another tokenizer?)" ]]
	/usr/bin/python3 - "$D/ld/tokens.jsonl" >"$T/long.jsonl" <<'PY'
import json, sys
for i, l in enumerate(open(sys.argv[1])):
    r = json.loads(l)
    if i:
        for k in ("clean", "corrupt"):
            r[k]["data"] = r[k]["data"] * 3
            r[k]["shape"] = [len(r[k]["data"])]
    print(json.dumps(r))
PY
	run --separate-stderr circ-patch --model "$D/ld/model" --nodes m0 "$T/long.jsonl"
	assert_failure 1
	[[ "$stderr" == *"record 1: field 'clean': 21 tokens, longer than the model's context (16)"* ]]
}

@test "bad input: a harvest or circuit made from another model" {
	circ-harvest --model "$D/ld/model" -o "$T/acts.circ" "$D/ld/tokens.jsonl"
	run --separate-stderr circ-score --acts "$T/acts.circ" --model "$D/kl/model"
	assert_failure 1
	[[ "$stderr" == "circ-score: '$T/acts.circ': harvested from another model than '$D/kl/model' (model_digest differs)" ]]
	circ-score --model "$D/ld/model" -o "$T/s.circ" "$D/ld/tokens.jsonl"
	run --separate-stderr circ-patch --model "$D/pd/model" --curve "$T/s.circ" "$D/pd/tokens.jsonl"
	assert_failure 1
	[[ "$stderr" == *"scores of another model (model_digest differs)"* ]]
}

@test "usage errors exit 2" {
	run --separate-stderr circ-score --method nope --model x
	assert_failure 2
	run --separate-stderr circ-score "$D/ld/tokens.jsonl"
	assert_failure 2
	[[ "$stderr" == *"--model DIR is required"* ]]
	run --separate-stderr circ-patch --model "$D/ld/model" "$D/ld/tokens.jsonl"
	assert_failure 2
	run --separate-stderr circ-prune --acdc "$D/ld/tokens.jsonl"
	assert_failure 2
	[[ "$stderr" == *"--acdc needs --model DIR"* ]]
}

@test "output to a full disk fails with exit 1" {
	run --separate-stderr bash -c "circ-score --model '$D/ld/model' '$D/ld/tokens.jsonl' >/dev/full"
	assert_failure 1
	[[ "$stderr" == *"No space left on device"* ]]
	[ -c /dev/full ]
}
