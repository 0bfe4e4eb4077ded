#!/usr/bin/env bats
# CD-T (circ-score --method cd-t, circ-prune --cd-t): ground truth on the
# hand-built fixtures (ROC AUC >= 0.95), the scores stream, node level,
# shards, threads, the construction, and usage errors. The decomposition's
# numbers are checked in tests/unit/test_cdt.c (invariants and PyTorch).
load helper

MODELS="induction-hand ioi-hand"
PY=/usr/bin/python3

# The task's 32 examples (seed 1) of each model, tokenized, and their cd-t scores.
setup_file() {
	local m d="$BATS_FILE_TMPDIR"
	for m in $MODELS; do
		circ-fixture "$m" --examples 32 --seed 1 >"$d/$m.jsonl"
		circ-tokenize --vocab-dir "fixtures/$m" -o "$d/$m.tok" "$d/$m.jsonl"
		circ-score --model "fixtures/$m" --method cd-t -o "$d/$m.scores" "$d/$m.tok"
	done
}

header_field() {
	circ-cat "$1" | head -1 | jq -r "$2"
}

ge() {
	$PY -c "import sys; sys.exit(0 if float('$1') >= float('$2') else 1)"
}

# edge -> score lines of a scores stream, sorted
scores_of() {
	circ-cat --no-header "$1" | jq -r '"\(.edge) \(.score)"' | sort
}

@test "cd-t ranks the known circuit first on the hand-built fixtures (ROC AUC >= 0.95)" {
	for m in $MODELS; do
		for sg in "" --signed; do
			circ-prune --top-n 1 $sg --truth "fixtures/$m/truth.jsonl" -o "$T/auc.circ" \
				"$BATS_FILE_TMPDIR/$m.scores" 2>/dev/null
			auc=$(header_field "$T/auc.circ" .eval.auc)
			echo "$m cd-t ${sg:-|score|}: ROC AUC $auc"
			ge "$auc" 0.95
		done
	done
}

@test "the planted-features fixture's component truth: cd-t, Edge Pruning, ACDC and exact recover it (ROC AUC >= 0.95)" {
	circ-fixture planted-features --out "$T/pf"
	circ-tokenize --vocab-dir "$T/pf" -o "$T/pf.tok" "$T/pf/dataset.jsonl"
	for m in cd-t exact; do
		circ-score --model "$T/pf" --method $m -o "$T/$m.circ" "$T/pf.tok"
		circ-prune --top-n 5 --truth "$T/pf/truth.jsonl" --report "$T/$m.json" -o "$T/c.circ" "$T/$m.circ"
	done
	circ-prune --edge-pruning --model "$T/pf" --target-edges 5 --truth "$T/pf/truth.jsonl" --report "$T/ep.json" -o "$T/c.circ" "$T/pf.tok"
	circ-prune --acdc --model "$T/pf" --tau 0.01 --truth "$T/pf/truth.jsonl" --report "$T/acdc.json" -o "$T/c.circ" "$T/pf.tok"
	for m in cd-t exact ep acdc; do
		echo "$m $(jq -c '{auc, tpr, fpr}' "$T/$m.json")"
		jq -e '.auc >= 0.95' "$T/$m.json"
	done
}

@test "cd-t scores stream: header, every edge, means of sums" {
	f="$BATS_FILE_TMPDIR/ioi-hand.scores"
	[ "$(header_field "$f" .method)" = cd-t ]
	[ "$(header_field "$f" .n_examples)" = 32 ]
	[ "$(circ-cat --no-header "$f" | wc -l)" -eq "$(circ-score --model fixtures/ioi-hand --list-edges | wc -l)" ]
	circ-cat --no-header "$f" | jq -e 'select(.count != 32 or ((.sum / .count) - .score | fabs) > 1e-12)' && false
	# the logits edge of the circuit's last head carries the most relevance
	top=$(circ-cat --no-header "$f" | jq -s -r 'max_by(.score) | .edge')
	[[ "$top" == *"->logits" ]]
}

@test "cd-t: a node-level head score is the sum of its q, k and v scores" {
	m=induction-hand
	circ-score --model "fixtures/$m" --method cd-t --level node -o "$T/node.circ" "$BATS_FILE_TMPDIR/$m.tok"
	scores_of "$T/node.circ" >"$T/node.txt"
	scores_of "$BATS_FILE_TMPDIR/$m.scores" | sed 's/<[qkv]>//' |
		awk '{ s[$1] += $2 } END { for (k in s) printf "%s %.12g\n", k, s[k] }' | sort >"$T/sum.txt"
	awk '{ printf "%s %.12g\n", $1, $2 }' "$T/node.txt" | sort >"$T/node2.txt"
	$PY - "$T/node2.txt" "$T/sum.txt" <<'EOF'
import sys
a = dict(l.split() for l in open(sys.argv[1]))
b = dict(l.split() for l in open(sys.argv[2]))
assert a.keys() == b.keys(), (len(a), len(b))
for k in a:
    x, y = float(a[k]), float(b[k])
    assert abs(x - y) <= 1e-6 * (abs(y) + 1e-6), (k, x, y)
EOF
}

@test "cd-t: shards merge into the whole run's scores; threads give the same scores" {
	m=ioi-hand
	tok="$BATS_FILE_TMPDIR/$m.tok"
	head -16 "$BATS_FILE_TMPDIR/$m.jsonl" | circ-tokenize --vocab-dir "fixtures/$m" >"$T/a.jsonl"
	tail -n +17 "$BATS_FILE_TMPDIR/$m.jsonl" | circ-tokenize --vocab-dir "fixtures/$m" >"$T/b.jsonl"
	circ-score --model "fixtures/$m" --method cd-t -o "$T/a.circ" "$T/a.jsonl"
	circ-score --model "fixtures/$m" --method cd-t -o "$T/b.circ" "$T/b.jsonl"
	circ-score --merge "$T/a.circ" "$T/b.circ" -o "$T/ab.circ"
	[ "$(header_field "$T/ab.circ" .n_examples)" = 32 ]
	paste <(scores_of "$T/ab.circ") <(scores_of "$BATS_FILE_TMPDIR/$m.scores") |
		awk '$1 != $3 || ($2 - $4 > 1e-9 * (1 + ($4 < 0 ? -$4 : $4))) || ($4 - $2 > 1e-9 * (1 + ($4 < 0 ? -$4 : $4))) { bad = 1 } END { exit bad }'
	circ-score --model "fixtures/$m" --method cd-t --threads 1 -o "$T/t1.circ" "$tok"
	circ-score --model "fixtures/$m" --method cd-t --threads 3 -o "$T/t3.circ" "$tok"
	cmp <(circ-cat --no-header "$T/t1.circ") <(circ-cat --no-header "$T/t3.circ")
}

@test "prune --cd-t: the construction keeps the known circuit's edges" {
	for m in $MODELS; do
		run --separate-stderr circ-prune --cd-t 1 --truth "fixtures/$m/truth.jsonl" -o "$T/c.circ" \
			"$BATS_FILE_TMPDIR/$m.scores"
		assert_success
		[ "$(header_field "$T/c.circ" .source.mode)" = cd-t ]
		[ "$(header_field "$T/c.circ" .source.n)" = 1 ]
		tp=$(header_field "$T/c.circ" .eval.tp)
		fp=$(header_field "$T/c.circ" .eval.fp)
		echo "$m prune --cd-t 1: tp $tp fp $fp"
		[ "$tp" -eq "$(circ-fixture "$m" --truth | wc -l)" ]
		# more sources per round: a larger circuit
		circ-prune --cd-t 3 -o "$T/c3.circ" "$BATS_FILE_TMPDIR/$m.scores"
		[ "$(circ-cat --no-header "$T/c3.circ" | wc -l)" -gt "$(circ-cat --no-header "$T/c.circ" | wc -l)" ]
	done
}

@test "cd-t: usage errors exit 2" {
	run --separate-stderr circ-score --model fixtures/ioi-hand --method cd-t --steps 3 "$BATS_FILE_TMPDIR/ioi-hand.tok"
	assert_failure 2
	[[ "$stderr" == *"--steps"* ]]
	run --separate-stderr circ-score --acts --method cd-t /dev/null
	assert_failure 2
	[[ "$stderr" == *"eap scores only"* ]]
	run --separate-stderr circ-score --model fixtures/ioi-hand --method cd-x /dev/null
	assert_failure 2
	[[ "$stderr" == *"cd-t"* ]]
	run --separate-stderr circ-prune --cd-t 0 "$BATS_FILE_TMPDIR/ioi-hand.scores"
	assert_failure 2
	run --separate-stderr circ-prune --cd-t 1 --top-n 3 "$BATS_FILE_TMPDIR/ioi-hand.scores"
	assert_failure 2
	[[ "$stderr" == *"exclude each other"* ]]
}

# ---- every model family (issue 16's tests/data/families) ----

FAM=tests/data/families

fam_models() {
	for d in "$FAM"/*/; do
		[ -e "$d/config.json" ] && basename "$d"
	done
}

@test "every family: cd-t scores of every edge match the float64 PyTorch reference (1e-5 of the largest)" {
	need_cmd /usr/bin/python3
	n=0
	for f in $(fam_models); do
		$PY tests/ref/cdt_ref.py scores "$FAM/$f" tests/data/tiny/tokens.jsonl "$T/$f.ref.json"
		circ-score --model "$FAM/$f" --method cd-t --json tests/data/tiny/tokens.jsonl >"$T/$f.jsonl"
		echo -n "$f: "
		$PY tests/ref/patch_ref.py compare "$T/$f.ref.json" cd-t "$T/$f.jsonl" --atol 1e-5 --rtol 0
		n=$((n + 1))
	done
	[ "$n" -ge 10 ]
}

@test "every family: circ-score --method cd-t and circ-prune --cd-t end to end; the circuit patches" {
	for f in $(fam_models); do
		d="$FAM/$f"
		t=$(jq -r .model_type "$d/config.json")
		circ-score --model "$d" --method cd-t -o "$T/s.circ" tests/data/tiny/tokens.jsonl
		[ "$(header_field "$T/s.circ" .method)" = cd-t ]
		[ "$(header_field "$T/s.circ" .graph.model_type)" = "$t" ]
		[ "$(circ-cat --no-header "$T/s.circ" | wc -l)" -eq "$(circ-score --model "$d" --list-edges | wc -l)" ]
		# finite scores, not all zero
		circ-cat --no-header "$T/s.circ" | jq -e 'select(.score | isnan or isinfinite)' && false
		circ-cat --no-header "$T/s.circ" | jq -s -e 'map(.score | fabs) | max > 0'
		circ-prune --cd-t 2 -o "$T/c.circ" "$T/s.circ"
		[ "$(header_field "$T/c.circ" .source.mode)" = cd-t ]
		[ "$(circ-cat --no-header "$T/c.circ" | wc -l)" -gt 0 ]
		run --separate-stderr circ-patch --model "$d" --circuit "$T/c.circ" --json tests/data/tiny/tokens.jsonl
		assert_success
	done
}

@test "families, node level: a head's score is the sum of its q, k and v scores (parallel blocks, grouped-query attention)" {
	for f in gpt_neox llama; do
		circ-score --model "$FAM/$f" --method cd-t --json tests/data/tiny/tokens.jsonl >"$T/e.jsonl"
		circ-score --model "$FAM/$f" --method cd-t --level node --json tests/data/tiny/tokens.jsonl >"$T/n.jsonl"
		$PY - "$T/e.jsonl" "$T/n.jsonl" <<'EOF'
import json, re, sys
def load(p):
    return {json.loads(l)["edge"]: json.loads(l)["score"] for l in open(p) if l.startswith('{"edge"')}
e, n = load(sys.argv[1]), load(sys.argv[2])
s = {}
for k, v in e.items():
    k = re.sub(r"<[qkv]>", "", k)
    s[k] = s.get(k, 0.0) + v
assert n.keys() == s.keys(), (len(n), len(s))
worst = max(abs(n[k] - s[k]) for k in n)
assert worst <= 1e-6 * max(abs(v) for v in s.values()), worst
EOF
	done
}

@test "grouped-query attention, --gqa grouped: a group's k (v) edge scores the sum of its heads' k (v) edges" {
	f=llama
	circ-score --model "$FAM/$f" --method cd-t --json tests/data/tiny/tokens.jsonl >"$T/u.jsonl"
	circ-score --model "$FAM/$f" --gqa grouped --method cd-t --json tests/data/tiny/tokens.jsonl >"$T/g.jsonl"
	H=$(jq .n_head "$FAM/$f/arch.json")
	K=$(jq .n_kv_head "$FAM/$f/arch.json")
	[ "$K" -lt "$H" ]
	$PY - "$T/u.jsonl" "$T/g.jsonl" "$H" "$K" <<'EOF'
import json, re, sys
def load(p):
    return {json.loads(l)["edge"]: json.loads(l)["score"] for l in open(p) if l.startswith('{"edge"')}
u, g = load(sys.argv[1]), load(sys.argv[2])
per = int(sys.argv[3]) // int(sys.argv[4])
assert len(g) < len(u), (len(g), len(u))
scale = max(abs(v) for v in u.values())
worst, n = 0.0, 0
for e, v in g.items():
    m = re.match(r"(.*)->a(\d+)\.h(\d+)<([kv])>$", e)
    if m:
        s, l, h, k = m.group(1), int(m.group(2)), int(m.group(3)), m.group(4)
        want = sum(u["%s->a%d.h%d<%s>" % (s, l, j, k)] for j in range(h, h + per))
        n += 1
    else:
        want = u[e]
    worst = max(worst, abs(v - want))
print("grouped vs summed: %d group edges, max diff %.3g (largest |score| %.3g)" % (n, worst, scale))
assert n > 0 and worst <= 1e-6 * scale
EOF
}
