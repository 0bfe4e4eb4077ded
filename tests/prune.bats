#!/usr/bin/env bats
# circ-prune: selection modes against goldens and against an independent
# Python reference of EAP-IG's selection and pruning, the path property of
# every circuit, ground-truth evaluation, and bad input.
load helper

D=tests/data/prune
PY=/usr/bin/python3

# Edge names of a circuit stream, one a line.
edges_of() {
	circ-cat --no-header "$1" | jq -r .edge
}

@test "prune --help lists every option and exits 0" {
	run --separate-stderr circ-prune --help
	assert_success
	for o in --top-n --threshold --greedy --acdc --signed --truth --report --output --json; do
		assert_output --partial -- "$o"
	done
}

@test "prune: a bad flag, no mode, two modes and bad sizes are usage errors" {
	run --separate-stderr circ-prune --nope
	assert_failure 2
	[[ "$stderr" == *"circ-prune: unknown option '--nope'"* ]]
	run --separate-stderr circ-prune $D/scores.jsonl
	assert_failure 2
	[[ "$stderr" == *"choose a mode"* ]]
	run --separate-stderr circ-prune --top-n 3 --greedy 3 $D/scores.jsonl
	assert_failure 2
	[[ "$stderr" == *"--top-n and --greedy exclude each other"* ]]
	run --separate-stderr circ-prune --top-n -3 $D/scores.jsonl
	assert_failure 2
	run --separate-stderr circ-prune --top-n 150% $D/scores.jsonl
	assert_failure 2
	[[ "$stderr" == *"not a percentage"* ]]
	run --separate-stderr circ-prune --threshold abc $D/scores.jsonl
	assert_failure 2
	run --separate-stderr circ-prune --top-n 3 --report "$T/r.json" $D/scores.jsonl
	assert_failure 2
	[[ "$stderr" == *"--report needs --truth"* ]]
}

@test "prune --acdc needs a model and a token stream" {
	run --separate-stderr circ-prune --acdc $D/scores.jsonl
	assert_failure 2
	[[ "$stderr" == *"--acdc needs --model DIR"* ]]
	run --separate-stderr circ-prune --acdc --model tests/data/tiny/model $D/scores.jsonl
	assert_failure 1
	[[ "$stderr" == *"stream kind is 'scores', expected 'tokens'"* ]]
}

# An ACDC token stream of fixture $1 (32 examples) in $T/$1.tok.
acdc_tokens() {
	circ-fixture "$1" --examples 32 --seed 1 | circ-tokenize --vocab-dir "fixtures/$1" >"$T/$1.tok"
}

# The decisions of log $1 without the group key, one JSON line each.
decisions() {
	circ-cat --no-header "$1" | jq -c 'del(.group)'
}

@test "prune --acdc --group: usage errors" {
	run --separate-stderr circ-prune --acdc --model tests/data/tiny/model --group 0 tests/data/tiny/tokens.jsonl
	assert_failure 2
	[[ "$stderr" == *"'--group'"* ]]
	run --separate-stderr circ-prune --top-n 3 --group 4 $D/scores.jsonl
	assert_failure 2
	[[ "$stderr" == *"option '--group' goes with --acdc"* ]]
}

@test "prune --acdc --group 1 makes exact ACDC's decisions, tests and circuit" {
	for m in induction-hand ioi-hand; do
		acdc_tokens $m
		circ-prune --acdc --model fixtures/$m --log "$T/exact.log" --json "$T/$m.tok" \
			>"$T/exact.jsonl" 2>"$T/exact.err"
		circ-prune --acdc --model fixtures/$m --group 1 --log "$T/g1.log" --json "$T/$m.tok" \
			>"$T/g1.jsonl" 2>"$T/g1.err"
		diff <(decisions "$T/exact.log") <(decisions "$T/g1.log")
		diff <(circ-cat --no-header "$T/exact.jsonl") <(circ-cat --no-header "$T/g1.jsonl")
		# every record of the group run names its group of 1; the header the option
		circ-cat --no-header "$T/g1.log" | jq -e '.group == 1' >/dev/null
		circ-cat "$T/g1.log" | head -1 | jq -e '.group == 1' >/dev/null
		circ-cat "$T/exact.log" | head -1 | jq -e 'has("group") | not' >/dev/null
		n=$(circ-cat --no-header "$T/exact.log" | wc -l)
		grep -q "acdc: $n edge tests" "$T/exact.err"
		grep -q "acdc: $n edges decided by $n group tests" "$T/g1.err"
	done
	circ-cat "$T/g1.log" | tests/validate.py schemas/decisions.schema.json
}

@test "prune --acdc --group 8: fewer tests; groups dropped below tau, kept edges alone at or above it" {
	for m in induction-hand ioi-hand; do
		acdc_tokens $m
		circ-prune --acdc --model fixtures/$m --log "$T/exact.log" --json "$T/$m.tok" \
			>"$T/exact.jsonl" 2>/dev/null
		circ-prune --acdc --model fixtures/$m --group 8 --log "$T/g8.log" --json "$T/$m.tok" \
			>"$T/g8.jsonl" 2>"$T/g8.err"
		circ-cat "$T/g8.log" | tests/validate.py schemas/decisions.schema.json
		# each edge decided once; a kept edge was tested alone, at or above tau
		circ-cat --no-header "$T/g8.log" | jq -s -e \
			'(map(.edge) | length == (unique | length)) and
			 all(.[]; if .kept then .group == 1 and .change >= 0.01 else .change < 0.01 end) and
			 any(.[]; .group > 1)' >/dev/null
		# fewer forwards than edges decided
		read -r dec tests < <(sed -n 's/.*acdc: \([0-9]*\) edges decided by \([0-9]*\) group tests.*/\1 \2/p' "$T/g8.err")
		[ "$tests" -lt "$dec" ]
		# on these fixtures (effects nearly additive) the same edges kept and decided as exact ACDC
		diff <(circ-cat --no-header "$T/exact.log" | jq -r '"\(.edge) \(.kept)"' | sort) \
			<(circ-cat --no-header "$T/g8.log" | jq -r '"\(.edge) \(.kept)"' | sort)
		diff <(circ-cat --no-header "$T/exact.jsonl" | jq -r .edge) <(circ-cat --no-header "$T/g8.jsonl" | jq -r .edge)
	done
}

@test "prune --acdc --screen: usage errors" {
	acdc_tokens ioi-hand
	tok="$T/ioi-hand.tok"
	for f in 0 -1 nan inf x; do
		run --separate-stderr circ-prune --acdc --model fixtures/ioi-hand --screen "$f" "$tok"
		assert_failure 2
		[[ "$stderr" == *"option '--screen'"* ]]
	done
	run --separate-stderr circ-prune --acdc --model fixtures/ioi-hand --screen 1 --screen-method exact "$tok"
	assert_failure 2
	[[ "$stderr" == *"option '--screen-method': 'exact' is neither eap-ig nor eap"* ]]
	run --separate-stderr circ-prune --acdc --model fixtures/ioi-hand --screen-method eap "$tok"
	assert_failure 2
	[[ "$stderr" == *"option '--screen-method' goes with --screen F"* ]]
	run --separate-stderr circ-prune --acdc --model fixtures/ioi-hand --screen 1 --acdc-order reference "$tok"
	assert_failure 2
	[[ "$stderr" == *"no --screen"* ]]
	run --separate-stderr circ-prune --top-n 3 --screen 1 $D/scores.jsonl
	assert_failure 2
	[[ "$stderr" == *"option '--screen' goes with --acdc"* ]]
	run --separate-stderr circ-prune --top-n 3 --screen-method eap $D/scores.jsonl
	assert_failure 2
	[[ "$stderr" == *"option '--screen-method' goes with --acdc"* ]]
	run --separate-stderr circ-prune --edge-pruning --model fixtures/ioi-hand --sparsity 0.5 --screen 1 "$tok"
	assert_failure 2
	[[ "$stderr" == *"--screen do not apply to --edge-pruning"* ]]
}

@test "prune --acdc without --screen: decisions and circuits as before the screen" {
	# goldens from the build before --screen (tests/data/prune/acdc-*.jsonl):
	# the same tests in the same order, the same decisions and circuits,
	# every number within 1e-5 relative (tests/golden.py same; they were
	# byte-identical until the forward's products moved to circ's panel
	# kernels, which round differently from OpenBLAS's: at most 5.4e-7
	# relative, on these fixtures, on an AMD EPYC)
	for m in induction-hand ioi-hand; do
		acdc_tokens $m
		for g in 0 8; do
			opt=
			[ $g = 0 ] || opt="--group $g"
			circ-prune --acdc --model fixtures/$m $opt --log "$T/d.log" --json "$T/$m.tok" \
				>"$T/c.jsonl" 2>/dev/null
			circ-cat --no-header "$T/d.log" >"$T/d.jsonl"
			circ-cat --no-header "$T/c.jsonl" >"$T/c2.jsonl"
			/usr/bin/python3 tests/golden.py same "$T/d.jsonl" $D/acdc-$m-g$g-decisions.jsonl
			/usr/bin/python3 tests/golden.py same "$T/c2.jsonl" $D/acdc-$m-g$g-circuit.jsonl
		done
	done
}

@test "prune --acdc --screen F: log records; edges below F*tau dropped untested in one forward; fewer tests" {
	for m in induction-hand ioi-hand; do
		acdc_tokens $m
		circ-prune --acdc --model fixtures/$m --log "$T/exact.log" "$T/$m.tok" -o "$T/exact.circ" 2>"$T/exact.err"
		circ-prune --acdc --model fixtures/$m --screen 1 --log "$T/s.log" "$T/$m.tok" -o /dev/null 2>"$T/s.err"
		circ-cat "$T/s.log" | tests/validate.py schemas/decisions.schema.json
		circ-cat "$T/s.log" | head -1 | jq -e '.screen == 1 and .screen_method == "eap-ig"' >/dev/null
		circ-cat "$T/exact.log" | head -1 | jq -e 'has("screen") | not' >/dev/null
		circ-cat --no-header "$T/exact.log" | jq -e 'has("screened") or has("attribution") | not' >/dev/null
		# every edge decided once, with its attribution; the screened ones first, below
		# the bound (tau 0.01), all dropped by one forward (one before, after and group:
		# their number); the others at or above it, tested alone, kept at or above tau
		circ-cat --no-header "$T/s.log" | jq -s -e \
			'(map(.edge) | length == (unique | length)) and
			 (map(select(.screened)) as $s | ($s | length) > 1 and
			  ($s | map([.before, .after, .group]) | unique | length) == 1 and
			  $s[0].group == ($s | length) and all($s[]; (.attribution | fabs) < 0.01 and (.kept | not))) and
			 (map(.screened) | . == sort_by(. | not)) and
			 all(.[]; (.attribution | type) == "number") and
			 all(.[] | select(.screened | not); (.attribution | fabs) >= 0.01 and .group == 1 and
			     (if .kept then .change >= 0.01 else .change < 0.01 end))' >/dev/null
		n=$(circ-cat --no-header "$T/s.log" | jq -s 'map(select(.screened)) | length')
		grep -q "acdc: screen: eap-ig attribution of" "$T/s.err"
		read -r dec tests below < <(sed -n 's/.*acdc: \([0-9]*\) edges decided by \([0-9]*\) tests.*, \([0-9]*\) edges below the screen (1\*tau).*/\1 \2 \3/p' "$T/s.err")
		[ "$below" = "$n" ]
		# one forward for the screened edges, one per other edge
		[ "$tests" = $((dec - n + 1)) ]
		exact=$(circ-cat --no-header "$T/exact.log" | wc -l)
		[ "$tests" -lt "$exact" ]
		# the edges not logged went untested with a receiver that no longer reaches
		# the logits (exact ACDC drops most of the hand-built models' that way)
		total=$(circ-cat "$T/exact.circ" | head -1 | jq .n_edges_total)
		for run in exact s; do
			logged=$(circ-cat --no-header "$T/$run.log" | wc -l)
			unreach=$(sed -n 's/.*, \([0-9]*\) edges dropped untested with a receiver left unreachable$/\1/p' "$T/$run.err")
			[ $((logged + unreach)) -eq "$total" ]
			[ "$run" = s ] || [ "$unreach" -gt 0 ]
		done
	done
	# eap: the attribution of kl on the clean run is zero (its gradient vanishes
	# there), so every edge is screened
	circ-prune --acdc --model fixtures/ioi-hand --screen 1 --screen-method eap --log "$T/e.log" \
		"$T/ioi-hand.tok" -o /dev/null 2>/dev/null
	circ-cat "$T/e.log" | head -1 | jq -e '.screen_method == "eap"' >/dev/null
	circ-cat --no-header "$T/e.log" | jq -s -e 'all(.[]; .screened) and length == 262' >/dev/null
}

@test "prune --acdc --screen keeps the known circuit of the hand-built fixtures" {
	for m in induction-hand ioi-hand; do
		acdc_tokens $m
		circ-prune --acdc --model fixtures/$m --json "$T/$m.tok" >"$T/exact.jsonl" 2>/dev/null
		for f in 0.5 1 4; do
			circ-prune --acdc --model fixtures/$m --screen $f --truth fixtures/$m/truth.jsonl \
				--json "$T/$m.tok" >"$T/s.jsonl" 2>/dev/null
			# the planted circuit exactly, and exact ACDC's circuit
			circ-cat "$T/s.jsonl" | head -1 | jq -e '.eval.auc == 1 and .eval.fp == 0 and .eval.fn == 0' >/dev/null
			diff <(circ-cat --no-header "$T/exact.jsonl" | jq -r .edge) <(circ-cat --no-header "$T/s.jsonl" | jq -r .edge)
		done
	done
}

@test "prune: golden circuits for top-n, greedy and signed threshold" {
	circ-prune --json --top-n 8 $D/scores.jsonl | circ-cat --no-header | cmp - $D/golden-top8.jsonl
	circ-prune --json --greedy 6 $D/scores.jsonl | circ-cat --no-header | cmp - $D/golden-greedy6.jsonl
	circ-prune --json --threshold 0.3 --signed $D/scores.jsonl | circ-cat --no-header |
		cmp - $D/golden-threshold-signed.jsonl
}

@test "prune: the header records the graph, the source and the model" {
	run --separate-stderr bash -c "circ-prune --json --top-n 10% $D/scores.jsonl | head -1"
	assert_success
	h="$output"
	[ "$(jq -c .graph <<<"$h")" = '{"n_layer":2,"n_head":2,"level":"edge"}' ]
	[ "$(jq -c .source <<<"$h")" = '{"method":"eap-ig","mode":"top-n","n":4,"signed":false,"metric":"logit_diff"}' ]
	[ "$(jq -r .kind <<<"$h")" = circuit ]
	[ "$(jq -r .n_edges_total <<<"$h")" = 46 ]
	[ "$(jq -r .model_digest <<<"$h")" = "$(head -1 $D/scores.jsonl | jq -r .model_digest)" ]
}

@test "prune: output follows the circuit schema; binary by default" {
	circ-prune --greedy 8 --truth $D/truth.jsonl $D/scores.jsonl >"$T/c.circ"
	run zstd -t "$T/c.circ"
	assert_success
	circ-cat "$T/c.circ" | $PY tests/validate.py schemas/circuit.schema.json
	$PY tests/validate.py schemas/scores.schema.json $D/scores.jsonl
}

@test "prune matches the Python reference of EAP-IG's selection on a GPT-2-small-shaped graph" {
	$PY $D/random_scores.py 12 12 3 >"$T/s.jsonl"
	for args in "top-n 3000" "top-n 6000 signed" "threshold 1.5" "greedy 400" "greedy 3000 signed"; do
		set -- $args
		flags="--$1 $2"
		[ "${3:-}" = signed ] && flags="$flags --signed"
		$PY $D/ref_select.py $args <"$T/s.jsonl" >"$T/ref.txt"
		circ-prune $flags "$T/s.jsonl" >"$T/c.circ"
		edges_of "$T/c.circ" >"$T/mine.txt"
		[ -s "$T/ref.txt" ]
		cmp "$T/ref.txt" "$T/mine.txt"
	done
}

@test "prune: every kept edge lies on a path input -> ... -> logits" {
	$PY $D/random_scores.py 4 3 5 >"$T/s.jsonl"
	for mode in "--top-n 60" "--threshold 0.8" "--greedy 30" "--top-n 50%"; do
		circ-prune $mode "$T/s.jsonl" >"$T/c.circ"
		edges_of "$T/c.circ" | $PY -c '
import re, sys
edges = [re.match(r"(.*)->([^<]*)", l).groups() for l in sys.stdin.read().split()]
fwd, bwd = {"input"}, {"logits"}
for _ in range(20):  # grow to a fixpoint; the graph has < 20 ranks
    for u, v in edges:
        if u in fwd: fwd.add(v)
        if v in bwd: bwd.add(u)
bad = [f"{u}->{v}" for u, v in edges if u not in fwd or v not in bwd]
assert edges and not bad, bad
'
	done
}

@test "prune: sizes may be percentages of the graph's edges (floor, as MIB)" {
	run --separate-stderr bash -c "circ-prune --json --greedy 50% $D/scores.jsonl | head -1 | jq .source.n"
	assert_output 23
	run --separate-stderr bash -c "circ-prune --json --top-n 0 $D/scores.jsonl | wc -l"
	assert_output 2
}

@test "prune --truth records AUC, MIB AUROC, TPR and FPR in the header and the report" {
	circ-prune --json --top-n 7 --truth $D/truth.jsonl --report "$T/r.json" $D/scores.jsonl >"$T/c.jsonl"
	ev=$(head -1 "$T/c.jsonl" | jq -c .eval)
	[ "$(jq .auc <<<"$ev")" = 1 ]
	[ "$(jq .n_truth <<<"$ev")" = 7 ]
	[ "$(jq .tp <<<"$ev")" = "$(circ-cat --no-header "$T/c.jsonl" | jq -s '[.[].edge] - ["input->a1.h0<v>"] | length')" ]
	[ "$(jq .truth <<<"$ev")" = "\"sha256:$(sha256sum $D/truth.jsonl | cut -c1-64)\"" ]
	[ "$(jq -c '[.auc, .tpr, .tp + .fp + .fn + .tn]' "$T/r.json")" = "[1,$(jq .tpr <<<"$ev"),46]" ]
	[ "$(jq '.mib_tpr | length' "$T/r.json")" = 10 ]
	awk -v a="$(jq .mib_auroc "$T/r.json")" 'BEGIN { exit !(a > 0.9 && a <= 1) }'
	# Inverted scores rank the truth last.
	jq -c 'if .score then .score = -.score | .sum = -.sum else . end' $D/scores.jsonl >"$T/neg.jsonl"
	circ-prune --json --top-n 7 --signed --truth $D/truth.jsonl --report "$T/r2.json" "$T/neg.jsonl" >/dev/null
	awk -v a="$(jq .auc "$T/r2.json")" 'BEGIN { exit !(a < 0.8) }'
}

@test "prune --truth: an edge that is not in the graph is an error naming the record" {
	printf '{"edge":"input->m0"}\n{"edge":"a2.h0->logits"}\n' >"$T/t.jsonl"
	run --separate-stderr circ-prune --top-n 5 --truth "$T/t.jsonl" $D/scores.jsonl
	assert_failure 1
	[[ "$stderr" == *"'$T/t.jsonl': record 2: edge 'a2.h0->logits': node 'a2.h0': no layer 2 (the graph has layers 0-1)"* ]]
}

@test "prune --truth: a truth circuit from another model is refused" {
	circ-prune --json --top-n 8 $D/scores.jsonl |
		jq -c 'if .model_digest then .model_digest = "sha256:'"$(printf '%064d' 0)"'" else . end' >"$T/t.jsonl"
	run --separate-stderr circ-prune --top-n 5 --truth "$T/t.jsonl" $D/scores.jsonl
	assert_failure 1
	[[ "$stderr" == *"model_digest differs"* ]]
}

@test "prune: an edge name that does not exist in the graph is a clear error" {
	{ head -2 $D/scores.jsonl; echo '{"edge":"a12.h0->logits","score":1}'; } >"$T/s.jsonl"
	run --separate-stderr circ-prune --top-n 1 "$T/s.jsonl"
	assert_failure 1
	[[ "$stderr" == *"record 2: edge 'a12.h0->logits': node 'a12.h0': no layer 12 (the graph has layers 0-1)"* ]]
	{ head -1 $D/scores.jsonl; echo '{"edge":"input->a0.h0","score":1}'; } >"$T/s.jsonl"
	run --separate-stderr circ-prune --top-n 1 "$T/s.jsonl"
	assert_failure 1
	[[ "$stderr" == *"needs its receiver <q>, <k> or <v>"* ]]
	{ head -1 $D/scores.jsonl; echo '{"edge":"m1->a0.h0<q>","score":1}'; } >"$T/s.jsonl"
	run --separate-stderr circ-prune --top-n 1 "$T/s.jsonl"
	assert_failure 1
	[[ "$stderr" == *"no such edge"* ]]
}

@test "prune: more edges than are scored is an error" {
	run --separate-stderr circ-prune --top-n 47 $D/scores.jsonl
	assert_failure 1
	[[ "$stderr" == *"cannot keep 47 edges: 46 of the graph's 46 edges have scores"* ]]
}

@test "prune: concatenated shards merge exactly through sum and count" {
	# Two half-shards whose sums add up to the whole.
	jq -c 'if .edge then .sum = .sum / 2 | .count = 4 | .score = .sum / 4 else . end' $D/scores.jsonl >"$T/half.jsonl"
	jq -c 'if .format then .shard = 1 else . end' "$T/half.jsonl" >"$T/half2.jsonl"
	cat "$T/half.jsonl" "$T/half2.jsonl" >"$T/both.jsonl"
	circ-prune --json --top-n 8 "$T/both.jsonl" | circ-cat --no-header | jq -r .edge >"$T/a.txt"
	jq -r .edge $D/golden-top8.jsonl | cmp - "$T/a.txt"
	# The same shard twice (identical headers) would double its counts: refused.
	cat "$T/half.jsonl" "$T/half.jsonl" >"$T/twice.jsonl"
	run --separate-stderr circ-prune --top-n 8 "$T/twice.jsonl"
	assert_failure 1
	[[ "$stderr" == *"twice.jsonl': record 47: concatenated stream repeats the header of part 1"* ]]
	# A repeated edge without sum and count cannot be merged.
	{ head -n -1 $D/scores.jsonl; echo '{"edge":"input->m0","score":1}'; echo '{"$end":{"records":47}}'; } >"$T/dup.jsonl"
	run --separate-stderr circ-prune --top-n 3 "$T/dup.jsonl"
	assert_failure 1
	[[ "$stderr" == *"edge 'input->m0' listed twice"* ]]
}

@test "prune: empty input, wrong kind and a truncated stream are errors" {
	run --separate-stderr circ-prune --top-n 3 </dev/null
	assert_failure 1
	circ-prune --top-n 8 $D/scores.jsonl >"$T/c.circ"
	run --separate-stderr circ-prune --top-n 3 "$T/c.circ"
	assert_failure 1
	[[ "$stderr" == *"circuit"* ]]
	circ-cat --to-msgpack --no-compress $D/scores.jsonl >"$T/s.circ"
	head -c 1000 "$T/s.circ" >"$T/cut.circ"
	run --separate-stderr circ-prune --top-n 3 "$T/cut.circ"
	assert_failure 1
	# The whole binary stream works and gives the golden circuit.
	circ-prune --json --top-n 8 "$T/s.circ" | circ-cat --no-header | cmp - $D/golden-top8.jsonl
}

@test "prune: a write error is reported (exit 1)" {
	run --separate-stderr circ-prune --json --top-n 8 -o /dev/full $D/scores.jsonl
	assert_failure 1
	run --separate-stderr circ-prune --top-n 8 --truth $D/truth.jsonl --report /dev/full/x $D/scores.jsonl
	assert_failure 1
	run --separate-stderr circ-prune --top-n 8 --truth $D/truth.jsonl --report /dev/full $D/scores.jsonl
	assert_failure 1
	[[ "$stderr" == *"'/dev/full': write error"* ]]
	[ -c /dev/full ]
}
