#!/usr/bin/env bats
# Sparse feature circuits (lib/fcircuit, issue 18): circ-score --method
# feature-atp|feature-ig --dict against tests/ref/fcircuit_ref.py (PyTorch,
# float64, activations replaced by leaf features and errors, autograd for
# every gradient and Jacobian). Tolerance: every node and edge sum within
# 1e-5 of the largest |value| of its kind (circ computes in float32;
# measured agreement is about 1e-6). Then the stream against the schemas,
# thresholds, and bad input.
load helper

REF=tests/ref/fcircuit_ref.py
DREF=tests/ref/dict_ref.py
M=tests/data/tiny/model
TOK=tests/data/tiny/tokens.jsonl

# Marks et al.'s full set on the 2-layer tiny model: resid_pre0 (embed),
# attn, mlp and resid_post of each layer.
full_set() {
	local i=0
	for h in blocks.0.hook_resid_pre blocks.0.hook_attn_out blocks.0.hook_mlp_out \
		blocks.0.hook_resid_post blocks.1.hook_attn_out blocks.1.hook_mlp_out \
		blocks.1.hook_resid_post; do
		i=$((i + 1))
		/usr/bin/python3 $DREF make "$T/set/d$i" --arch standard --hook $h --d-in 24 --d-sae 16 --seed $i
	done
}

# A subset without the embedding dictionary (the input node) and without
# attn0, mlp1's... : every architecture, a scaled one.
sub_set() {
	/usr/bin/python3 $DREF make "$T/sub/a" --arch topk --k 4 --hook blocks.0.hook_mlp_out --d-in 24 --d-sae 12 --seed 11
	/usr/bin/python3 $DREF make "$T/sub/b" --arch jumprelu --hook blocks.0.hook_resid_post --d-in 24 --d-sae 12 --seed 12 --apply-b-dec 0
	/usr/bin/python3 $DREF make "$T/sub/c" --arch gated --hook blocks.1.hook_attn_out --d-in 24 --d-sae 12 --seed 13 --scale 0.5
	/usr/bin/python3 $DREF make "$T/sub/d" --arch standard --hook blocks.1.hook_mlp_out --d-in 24 --d-sae 12 --seed 14
}

check() { # set ref-options -- circ-score options (model $M)
	local set=$1
	shift
	local ro=()
	while [ "$1" != -- ]; do
		ro+=("$1")
		shift
	done
	shift
	circ-score --model $M --dict "$set" "$@" --json $TOK >"$T/c.jsonl"
	/usr/bin/python3 $REF $M "$set" $TOK "${ro[@]}" >"$T/r.jsonl"
	run /usr/bin/python3 $REF compare "$T/c.jsonl" "$T/r.jsonl" --rtol 1e-5
	echo "$output"
	[ "$status" -eq 0 ]
}

@test "feature-atp: node and edge effects of the full set (embed, attn, mlp, resid) against the reference" {
	full_set
	check "$T/set" -- --method feature-atp
	# 7 dictionaries of 16 features and an error node each
	[ "$(grep -c '"node":' "$T/c.jsonl")" -eq 119 ]
	grep -q '"edge":"resid_pre0.f[0-9]*->attn0.f' "$T/c.jsonl"
	grep -q '"edge":"resid0.err->resid1.f' "$T/c.jsonl"
	grep -q '"edge":"resid1.f[0-9]*->logits"' "$T/c.jsonl"
	# no edge outside the pattern: attn0 -> attn1 (resid0 lies between)
	run grep -c -e '"edge":"attn0[^>]*->attn1' -e '"edge":"mlp0[^>]*->logits' "$T/c.jsonl"
	[ "$output" = 0 ]
}

@test "feature-ig (10 steps by default): the full set against the reference" {
	full_set
	check "$T/set" --ig 10 -- --method feature-ig
	jq -e -s '.[0].steps == 10 and .[0].method == "feature-ig"' "$T/c.jsonl"
}

@test "a subset of every architecture, no embedding dictionary (the input node): atp and ig against the reference" {
	sub_set
	check "$T/sub" -- --method feature-atp
	grep -q '"node":"input"' "$T/c.jsonl"
	grep -q '"edge":"input->mlp0.f' "$T/c.jsonl"
	# attn1 has no resid dictionary between it and resid0, mlp1 reads attn1 and resid0
	grep -q '"edge":"resid0.f[0-9]*->mlp1.f' "$T/c.jsonl"
	grep -q '"edge":"attn1.err->mlp1.err"' "$T/c.jsonl"
	# the sink reads the last resid and every dictionary after it
	grep -q '"edge":"attn1.f[0-9]*->logits"' "$T/c.jsonl"
	check "$T/sub" --ig 3 -- --method feature-ig --steps 3
}

@test "feature scores do not depend on the batch size or the thread count" {
	sub_set
	circ-score --model $M --dict "$T/sub" --method feature-atp --batch 1 --threads 1 --json $TOK | tail -n +2 >"$T/a"
	circ-score --model $M --dict "$T/sub" --method feature-atp --batch 4 --threads 2 --json $TOK | tail -n +2 >"$T/b"
	/usr/bin/python3 - "$T/a" "$T/b" <<'PY'
import json, sys
def rd(p):
    return {(r.get("node") or r.get("edge")): r["sum"] for r in map(json.loads, open(p)) if "sum" in r}
a, b = rd(sys.argv[1]), rd(sys.argv[2])
scale = max(abs(v) for v in a.values())
for k in set(a) | set(b):
    assert abs(a.get(k, 0) - b.get(k, 0)) <= 1e-5 * scale, (k, a.get(k), b.get(k))
PY
}

@test "the feature scores stream validates against the schemas; its graph lists the dictionaries" {
	sub_set
	circ-score --model $M --dict "$T/sub" --method feature-atp -o "$T/s.circ" $TOK
	circ-cat "$T/s.circ" | tests/validate.py schemas/scores.schema.json
	circ-cat "$T/s.circ" | head -1 | jq -e '.graph.type == "feature" and .graph.positions == "summed" and .graph.input == "node" and ([.graph.dictionaries[].name] == ["mlp0", "resid0", "attn1", "mlp1"]) and (.graph.dictionaries[2].architecture == "gated") and (.graph.dictionaries[0].digest | startswith("sha256:"))'
}

@test "--node-threshold: edges only into nodes whose |batch mean effect| reaches it; --nodes-only writes no edges" {
	sub_set
	circ-score --model $M --dict "$T/sub" --method feature-atp --batch 4 --node-threshold 0.5 --json $TOK >"$T/c.jsonl"
	/usr/bin/python3 - "$T/c.jsonl" <<'PY'
import json, sys
recs = [json.loads(l) for l in open(sys.argv[1])][1:]
node = {r["node"]: r["score"] for r in recs if "node" in r}
downs = {r["edge"].split("->")[1] for r in recs if "edge" in r}
assert downs, "no edges"
for d in downs - {"logits"}:
    assert abs(node[d]) >= 0.5, (d, node[d])   # one batch: the batch mean is the score
assert any(abs(v) < 0.5 for v in node.values())
PY
	circ-score --model $M --dict "$T/sub" --method feature-atp --nodes-only --json $TOK >"$T/n.jsonl"
	run grep -c '"edge"' "$T/n.jsonl"
	[ "$output" = 0 ]
	[ "$(grep -c '"node":' "$T/n.jsonl")" -eq 53 ]
}

@test "residual SAEs at hook_resid_pre of every layer (SAELens's layout): against the reference, and the same as at the resid_post before" {
	for l in 0 1; do
		/usr/bin/python3 $DREF make "$T/pre/r$l" --arch topk --k 4 --hook blocks.$l.hook_resid_pre --d-in 24 --d-sae 12 --seed $((20 + l))
	done
	/usr/bin/python3 $DREF make "$T/pre/a1" --arch standard --hook blocks.1.hook_attn_out --d-in 24 --d-sae 12 --seed 22
	check "$T/pre" -- --method feature-atp
	grep -q '"edge":"resid_pre0.f[0-9]*->resid_pre1.f' "$T/c.jsonl"
	grep -q '"edge":"resid_pre1.err->attn1.f' "$T/c.jsonl"
	grep -q '"edge":"resid_pre1.f[0-9]*->logits"' "$T/c.jsonl"
	check "$T/pre" --ig 3 -- --method feature-ig --steps 3
	check "$T/pre" --positions keep -- --method feature-atp --positions keep
	# blocks.1.hook_resid_pre is blocks.0.hook_resid_post: the same scores, named resid0
	cp -r "$T/pre" "$T/post"
	jq '.hook_name = "blocks.0.hook_resid_post"' "$T/pre/r1/cfg.json" >"$T/post/r1/cfg.json"
	circ-score --model $M --dict "$T/pre" --method feature-atp --json $TOK | circ-cat --no-header | sed 's/resid_pre1/resid0/g' >"$T/a"
	circ-score --model $M --dict "$T/post" --method feature-atp --json $TOK | circ-cat --no-header >"$T/b"
	cmp "$T/a" "$T/b"
	# one place, two dictionaries: refused
	cp -r "$T/post/r1" "$T/pre/r1b"
	run --separate-stderr -1 circ-score --model $M --method feature-atp --dict "$T/pre" $TOK
	[[ "$stderr" == *"a second dictionary at blocks."* ]]
	rm -r "$T/pre/r1b"
	# the graph's names read back: prune, render, and patch against the reference
	circ-score --model $M --dict "$T/pre" --method feature-atp -o "$T/s.circ" $TOK
	circ-prune --threshold 0.3 --node-threshold 0.2 -o "$T/c.circ" "$T/s.circ"
	circ-cat "$T/c.circ" >"$T/c.jsonl"
	grep -q '"node":"resid_pre1' "$T/c.jsonl"
	circ-render --format html "$T/c.circ" | grep -q 'resid_pre1'
	circ-patch --model $M --dict "$T/pre" --circuit "$T/c.circ" --json $TOK >"$T/p.jsonl"
	/usr/bin/python3 $REF ablate $M "$T/pre" $TOK "$T/c.jsonl" >"$T/r.json"
	/usr/bin/python3 - "$T" <<'PY'
import json, sys
T = sys.argv[1]
rec = [json.loads(l) for l in open(T + "/p.jsonl")][1]
r = json.load(open(T + "/r.json"))
assert abs(rec["metric"] - r["metric_circuit"]) <= 1e-5 * (abs(r["metric_circuit"]) + 1), (rec, r)
PY
}

@test "feature circuits refuse bad input: missing dictionary, mismatched width, transcoder, unsupported hook, a hook twice, bad options" {
	sub_set
	run --separate-stderr -1 circ-score --model $M --method feature-atp --dict "$T/none" $TOK
	[[ "$stderr" == *"circ-score: --dict: "*"$T/none"* ]]
	/usr/bin/python3 $DREF make "$T/w" --arch standard --hook blocks.0.hook_mlp_out --d-in 16 --d-sae 8 --seed 1
	run --separate-stderr -1 circ-score --model $M --method feature-atp --dict "$T/w" $TOK
	[[ "$stderr" == *"key 'd_in': 16 does not match"* ]]
	/usr/bin/python3 $DREF make "$T/tc" --arch transcoder --hook blocks.0.ln2.hook_normalized --hook-out blocks.0.hook_mlp_out --d-in 24 --d-sae 8 --seed 1
	run --separate-stderr -1 circ-score --model $M --method feature-atp --dict "$T/tc" $TOK
	[[ "$stderr" == *"a transcoder"*"feature circuits take SAEs"* ]]
	/usr/bin/python3 $DREF make "$T/mid" --arch standard --hook blocks.0.hook_resid_mid --d-in 24 --d-sae 8 --seed 1
	run --separate-stderr -1 circ-score --model $M --method feature-atp --dict "$T/mid" $TOK
	[[ "$stderr" == *"key 'hook_name': blocks.0.hook_resid_mid is not a feature-circuit point"* ]]
	cp -r "$T/sub/a" "$T/sub/a2"
	run --separate-stderr -1 circ-score --model $M --method feature-atp --dict "$T/sub" $TOK
	[[ "$stderr" == *"a second dictionary at blocks.0.hook_mlp_out"* ]]
	run --separate-stderr -2 circ-score --model $M --method feature-atp $TOK
	[[ "$stderr" == *"need --dict DIR"* ]]
	run --separate-stderr -2 circ-score --model $M --dict "$T/sub" $TOK
	[[ "$stderr" == *"--dict goes with --method feature-atp or feature-ig"* ]]
	run --separate-stderr -2 circ-score --model $M --method feature-atp --dict "$T/w" --ablation mean $TOK
	[[ "$stderr" == *"option '--ablation' does not apply to feature circuits"* ]]
	run --separate-stderr -2 circ-score --model $M --node-threshold 1 $TOK
	[[ "$stderr" == *"go with --method feature-atp or feature-ig"* ]]
}

# circ-prune --truth with one edge is refused with a message containing $3.
truth_refused() { # scores edge message
	run --separate-stderr -1 circ-prune --top-n 3 --truth <(echo "{\"edge\": \"$2\"}") "$1"
	[[ "$stderr" == *"$3"* ]]
}

@test "circ-prune on feature scores: node and edge thresholds (Marks et al.), top-n, --truth AUC over every edge of the graph" {
	sub_set
	circ-score --model $M --dict "$T/sub" --method feature-atp -o "$T/s.circ" $TOK
	circ-prune --threshold 0.5 --node-threshold 0.3 -o "$T/c.circ" "$T/s.circ"
	circ-cat "$T/c.circ" | tests/validate.py schemas/circuit.schema.json
	circ-cat "$T/s.circ" >"$T/s.jsonl"
	circ-cat "$T/c.circ" >"$T/c.jsonl"
	/usr/bin/python3 - "$T/s.jsonl" "$T/c.jsonl" <<'PY'
import json, sys
s = [json.loads(l) for l in open(sys.argv[1])][1:]
c = [json.loads(l) for l in open(sys.argv[2])]
assert c[0]["n_edges_total"] == 741 and c[0]["source"]["node_threshold"] == 0.3
node = {r["node"]: r["score"] for r in s if "node" in r}
keep_n = {n for n, v in node.items() if abs(v) >= 0.3} | {"logits"}
want_e = {r["edge"] for r in s if "edge" in r and abs(r["score"]) >= 0.5
          and all(x in keep_n for x in r["edge"].split("->"))}
got_n = {r["node"] for r in c[1:] if "node" in r}
got_e = {r["edge"] for r in c[1:] if "edge" in r}
assert got_n == keep_n - {"logits"}, (got_n, keep_n)
assert got_e == want_e and want_e, (got_e, want_e)
PY
	# top-n: the n largest |score| edges; without --node-threshold the nodes are their ends
	circ-prune --top-n 5 --json "$T/s.circ" >"$T/t.jsonl"
	[ "$(grep -c '"edge"' "$T/t.jsonl")" -eq 5 ]
	# truth: the three strongest edges and one edge without a record (score 0)
	jq -c 'select(.edge) | {edge, a: (.score | fabs)}' "$T/s.jsonl" | sort -t: -k3 -g | tail -3 | jq -c '{edge}' >"$T/truth.jsonl"
	# an edge of the graph without a record (its sum is 0)
	miss=$(/usr/bin/python3 -c '
import json, sys
have = {json.loads(l).get("edge") for l in open(sys.argv[1])}
print(next(e for e in ("resid0.f%d->attn1.f%d" % (i, j) for i in range(12) for j in range(12)) if e not in have))' "$T/s.jsonl")
	[ -n "$miss" ]
	echo "{\"edge\": \"$miss\"}" >>"$T/truth.jsonl"
	# (into a file: a pipe closed by head after the header could stop circ-prune
	# before it writes the report)
	circ-prune --top-n 3 --truth "$T/truth.jsonl" --report "$T/rep.json" --json "$T/s.circ" >"$T/p.jsonl"
	head -1 "$T/p.jsonl" >"$T/h.json"
	jq -e '.n_truth == 4 and .tp == 3 and .fn == 1 and .fp == 0 and .tpr == 0.75 and .fpr == 0 and .tn == 741 - 4' "$T/rep.json"
	# the unscored true edge ties with the unlisted negatives at 0
	/usr/bin/python3 - "$T/s.jsonl" "$T/h.json" <<'PY'
import json, sys
s = [json.loads(l) for l in open(sys.argv[1])][1:]
ev = json.load(open(sys.argv[2]))["eval"]
sc = sorted(abs(r["score"]) for r in s if "edge" in r)
top = sc[-3:]
neg = [v for v in sc[:-3]] + [0.0] * (741 - len(sc) - 1)
wins = 0
for p in top + [0.0]:
    wins += sum(1 for n in neg if n < p) + 0.5 * sum(1 for n in neg if n == p)
auc = wins / (4 * len(neg))
assert ev["n_truth"] == 4 and ev["tp"] == 3 and ev["fn"] == 1 and ev["fp"] == 0, ev
assert abs(ev["auc"] - auc) < 1e-12, (ev["auc"], auc)
PY
	truth_refused "$T/s.circ" "attn1.f3->resid0.f2" "edge 'attn1.f3->resid0.f2': not an edge of the feature graph"
	truth_refused "$T/s.circ" "mlp0.f99->resid0.f2" "node 'mlp0.f99': feature 99 of 12"
	truth_refused "$T/s.circ" "mlp7.f1->resid0.f2" "node 'mlp7.f1': not a node of this feature graph"
	run --separate-stderr -2 circ-prune --cd-t 3 "$T/s.circ"
	[[ "$stderr" == *"feature graphs take --top-n, --threshold"* ]]
	circ-score --model $M --method eap -o "$T/eap.circ" $TOK
	run --separate-stderr -2 circ-prune --top-n 3 --node-threshold 1 "$T/eap.circ"
	[[ "$stderr" == *"'--node-threshold' goes with feature graphs"* ]]
}

greedy_ref() { # scores.jsonl circuit.jsonl N [node-threshold]: circ-prune --greedy against a plain re-implementation
	/usr/bin/python3 - "$@" <<'PY'
import json, sys
recs = [json.loads(l) for l in open(sys.argv[1])][1:]
got = [json.loads(l) for l in open(sys.argv[2])][1:]
n, nt = int(sys.argv[3]), float(sys.argv[4]) if len(sys.argv) > 4 else None
val = lambda r: r["sum"] / r["count"] if "sum" in r and "count" in r else r["score"]
node = {r["node"]: val(r) for r in recs if "node" in r}
ok = lambda x: nt is None or x == "logits" or abs(node.get(x, 0.0)) >= nt
edges = sorted((r["edge"], val(r)) for r in recs if "edge" in r)
edges = [(nm, v) for nm, v in edges if all(ok(x) for x in nm.split("->"))]
reach, kept = {"logits"}, []
while len(kept) < n:
    cand = [(-abs(v), nm) for nm, v in edges if nm.split("->")[1] in reach and nm not in kept]
    assert cand, "ran out"
    _, nm = min(cand)
    kept.append(nm)
    reach.add(nm.split("->")[0])
mine = sorted(r["edge"] for r in got if "edge" in r)
assert mine == sorted(kept), (mine, sorted(kept))
print(len(kept), "edges as the reference")
PY
}

@test "circ-prune --greedy on feature graphs (summed and per position, with --node-threshold) grows from logits as a plain re-implementation" {
	full_set
	circ-score --model $M --dict "$T/set" --method feature-atp -o "$T/s.circ" $TOK
	circ-cat "$T/s.circ" >"$T/s.jsonl"
	for n in 1 7 40; do
		circ-prune --greedy $n --json -o "$T/g.jsonl" "$T/s.circ"
		greedy_ref "$T/s.jsonl" "$T/g.jsonl" $n
	done
	circ-prune --greedy 12 --node-threshold 0.05 --json -o "$T/g.jsonl" "$T/s.circ"
	greedy_ref "$T/s.jsonl" "$T/g.jsonl" 12 0.05
	circ-score --model $M --dict "$T/set" --method feature-atp --positions keep -o "$T/p.circ" $TOK
	circ-cat "$T/p.circ" >"$T/p.jsonl"
	circ-prune --greedy 25 --json -o "$T/g.jsonl" "$T/p.circ"
	greedy_ref "$T/p.jsonl" "$T/g.jsonl" 25
	# more than the edges that reach the logits
	run --separate-stderr circ-prune --greedy 100000000 "$T/s.circ"
	[ "$status" -eq 1 ]
	[[ "$stderr" == *"edges reach the logits"* ]]
}

@test "circ-patch --dict: faithfulness and completeness by mean ablation against the reference; every node gives the model back, none the all-ablated metric" {
	full_set
	circ-score --model $M --dict "$T/set" --method feature-atp -o "$T/s.circ" $TOK
	# a circuit in the middle, every node, no node
	circ-prune --threshold 0.3 --node-threshold 0.2 -o "$T/mid.circ" "$T/s.circ"
	circ-prune --threshold 0 --node-threshold 0 -o "$T/all.circ" "$T/s.circ"
	circ-cat "$T/mid.circ" >"$T/mid.jsonl"
	circ-cat "$T/all.circ" >"$T/all.jsonl"
	[ "$(grep -c '"node":' "$T/all.jsonl")" -eq 119 ]
	for c in mid all; do
		circ-patch --model $M --dict "$T/set" --circuit "$T/$c.circ" -o "$T/p$c.circ" $TOK
		circ-cat "$T/p$c.circ" | tests/validate.py schemas/curve.schema.json
		circ-cat "$T/p$c.circ" >"$T/p$c.jsonl"
		/usr/bin/python3 $REF ablate $M "$T/set" $TOK "$T/$c.jsonl" >"$T/r$c.json"
	done
	/usr/bin/python3 - "$T" <<'PY'
import json, sys
T = sys.argv[1]
for c in ("mid", "all"):
    lines = [json.loads(l) for l in open("%s/p%s.jsonl" % (T, c))]
    h, rec = lines[0], lines[1]
    r = json.load(open("%s/r%s.json" % (T, c)))
    close = lambda a, b: abs(a - b) <= 1e-5 * (abs(b) + 1)
    assert close(h["metric_model"], r["metric_model"]), (h, r)
    assert close(h["metric_empty"], r["metric_empty"]), (h, r)
    assert close(rec["metric"], r["metric_circuit"]), (rec, r)
    den = r["metric_model"] - r["metric_empty"]
    assert abs(rec["faithfulness"] - (r["metric_circuit"] - r["metric_empty"]) / den) < 1e-4
    assert abs(rec["completeness"] - (r["metric_complement"] - r["metric_empty"]) / den) < 1e-4
    if c == "all":  # exactness: features + error = the activation
        assert abs(rec["faithfulness"] - 1) < 1e-5 and abs(rec["completeness"]) < 1e-5, rec
PY
	# the curve: fraction 1 keeps every node (f = 1), 0 none (f = 0)
	circ-patch --model $M --dict "$T/set" --curve "$T/s.circ" --fractions 0,0.1,1 --json $TOK >"$T/curve.jsonl"
	jq -e -s '.[1].n_nodes == 0 and .[1].faithfulness == 0 and .[3].n_nodes == 119 and ((.[3].faithfulness - 1) | fabs) < 1e-5 and .[2].n_nodes == 11' "$T/curve.jsonl"
	# a dictionary set other than the scores'
	sub_set
	run --separate-stderr -1 circ-patch --model $M --dict "$T/sub" --curve "$T/s.circ" $TOK
	[[ "$stderr" == *"made with 7 node sets, --dict gives 5"* ]]
	/usr/bin/python3 $DREF make "$T/set/d7" --arch standard --hook blocks.1.hook_resid_post --d-in 24 --d-sae 16 --seed 99
	run --separate-stderr -1 circ-patch --model $M --dict "$T/set" --curve "$T/s.circ" $TOK
	[[ "$stderr" == *"dictionary 'resid1' is not the one of --dict (digest differs)"* ]]
	run --separate-stderr -2 circ-patch --model $M --dict "$T/set" --curve "$T/s.circ" --ablation zero $TOK
	[[ "$stderr" == *"option '--ablation' does not apply to feature circuits"* ]]
}

@test "feature scores of shards merge (--merge) into the scores of the whole dataset" {
	sub_set
	head -3 $TOK >"$T/a.jsonl"
	{ head -1 $TOK; tail -n +4 $TOK; } >"$T/b.jsonl"
	sed -i 's/"n_examples":[0-9]*,//' "$T/a.jsonl" "$T/b.jsonl"
	for x in a b; do
		circ-score --model $M --dict "$T/sub" --method feature-ig --steps 2 -o "$T/$x.circ" "$T/$x.jsonl"
	done
	circ-score --merge -o "$T/m.circ" "$T/a.circ" "$T/b.circ"
	circ-score --model $M --dict "$T/sub" --method feature-ig --steps 2 -o "$T/w.circ" $TOK
	circ-cat "$T/m.circ" | tests/validate.py schemas/scores.schema.json
	circ-cat "$T/m.circ" >"$T/m.jsonl"
	circ-cat "$T/w.circ" >"$T/w.jsonl"
	/usr/bin/python3 - "$T/m.jsonl" "$T/w.jsonl" <<'PY'
import json, sys
def rd(p):
    l = [json.loads(x) for x in open(p)]
    return l[0], [(r.get("node") or r.get("edge"), r["sum"], r["count"]) for r in l[1:] if "sum" in r]
hm, m = rd(sys.argv[1])
hw, w = rd(sys.argv[2])
assert hm["n_examples"] == hw["n_examples"] == 4 and hm["graph"] == hw["graph"] and hm["steps"] == 2
dm, dw = {k: v for k, v, c in m}, {k: v for k, v, c in w}
assert all(c == 4 for k, v, c in m)
scale = max(abs(v) for v in dw.values())
for k in set(dm) | set(dw):
    assert abs(dm.get(k, 0) - dw.get(k, 0)) <= 1e-6 * scale, (k, dm.get(k), dw.get(k))
# the same canonical order (nodes, then edges by downstream node)
order = [k for k, v, c in w]
assert [k for k in [k for k, v, c in m] if k in dw] == [k for k in order if k in dm]
PY
	circ-score --model $M --dict "$T/sub" --method feature-atp -o "$T/c.circ" "$T/a.jsonl"
	run --separate-stderr -1 circ-score --merge "$T/a.circ" "$T/c.circ"
	[[ "$stderr" == *"scores of another feature graph, method, metric, model or number of steps"* ]]
	run --separate-stderr -1 circ-score --merge "$T/a.circ" "$T/a.circ"
	[[ "$stderr" == *"the same shard twice"* ]]
}

# ---- positions kept (--positions keep: Marks et al.'s aggregation "none") ----

@test "--positions keep: every node and edge per position against the reference (atp, full set and subset; ig)" {
	full_set
	check "$T/set" --positions keep -- --method feature-atp --positions keep
	# 7 dictionaries x 17 nodes x 7 positions
	[ "$(grep -c '"node":' "$T/c.jsonl")" -eq 833 ]
	head -1 "$T/c.jsonl" | jq -e '.graph.positions == "kept" and .graph.n_positions == 7'
	# through attention, earlier positions feed later ones; never the reverse
	grep -q '"edge":"resid_pre0.[a-z0-9]*@1->attn0.[a-z0-9]*@4"' "$T/c.jsonl"
	run grep -c -e '"edge":"[^"]*@[4-6]->[^"]*@[0-3]"' "$T/c.jsonl"
	[ "$output" = 0 ]
	# resid0 -> resid1 with attn1 and mlp1 held: one position to itself (the
	# last, read one: resid1 reaches the logits at no other)
	run grep -c -e '"edge":"resid0\.[a-z0-9]*@[0-5]->resid1\.' "$T/c.jsonl"
	[ "$output" = 0 ]
	grep -q '"edge":"resid0\.[a-z0-9]*@6->resid1\.[a-z0-9]*@6"' "$T/c.jsonl"
	sub_set
	check "$T/sub" --positions keep -- --method feature-atp --positions keep
	# no attn0 dictionary: input -> mlp0 crosses positions through attention 0
	grep -q '"edge":"input@1->mlp0.[a-z0-9]*@4"' "$T/c.jsonl"
	check "$T/sub" --positions keep --ig 3 -- --method feature-ig --steps 3 --positions keep
}

# Sums of a kept graph over its positions, by name without "@<t>".
sum_positions() {
	/usr/bin/python3 - "$1" "$2" <<'PY'
import json, re, sys
def rd(p, strip):
    out = {}
    for r in map(json.loads, open(p)):
        k = r.get("node") or r.get("edge")
        if k and "sum" in r:
            k = re.sub(r"@[0-9]+", "", k) if strip else k
            out[k] = out.get(k, 0.0) + r["sum"]
    return out
kept, summed = rd(sys.argv[1], True), rd(sys.argv[2], False)
scale = {e: max(abs(v) for k, v in summed.items() if ("->" in k) == e) for e in (True, False)}
bad = 0
for k in set(kept) | set(summed):
    s = scale["->" in k]
    if abs(kept.get(k, 0) - summed.get(k, 0)) > 1e-5 * s:
        print(k, kept.get(k), summed.get(k)); bad += 1
print(len(kept), "compared")
sys.exit(1 if bad else 0)
PY
}

@test "--positions keep summed over positions gives the summed graph (atp and ig)" {
	full_set
	for m in feature-atp "feature-ig --steps 3"; do
		circ-score --model $M --dict "$T/set" --method $m --positions keep --json $TOK >"$T/k.jsonl"
		circ-score --model $M --dict "$T/set" --method $m --json $TOK >"$T/s.jsonl"
		sum_positions "$T/k.jsonl" "$T/s.jsonl"
	done
	# the check fails on a changed graph: one per-position edge's sum off by 1
	/usr/bin/python3 - "$T/k.jsonl" <<'PY'
import json, sys
recs = [json.loads(l) for l in open(sys.argv[1])]
e = next(r for r in recs if "@" in r.get("edge", ""))
e["sum"] += 1
open(sys.argv[1], "w").write("".join(json.dumps(r) + "\n" for r in recs))
PY
	run sum_positions "$T/k.jsonl" "$T/s.jsonl"
	[ "$status" -ne 0 ]
}

@test "--positions keep: examples of unequal length are refused by id; the stream validates" {
	sub_set
	{ cat $TOK; echo '{"id": 9, "clean": [1, 2, 3], "corrupt": [1, 2, 4], "pos": 2, "answer": [5], "wrong": [6]}'; } | sed 's/"n_examples":[0-9]*,//' >"$T/u.jsonl"
	run --separate-stderr -1 circ-score --model $M --dict "$T/sub" --method feature-atp --positions keep $T/u.jsonl
	[[ "$stderr" == *"example 9: 3 tokens, the first example 7 (positions kept: every example must have the same length)"* ]]
	run --separate-stderr -2 circ-score --model $M --dict "$T/sub" --method feature-atp --positions some $TOK
	[[ "$stderr" == *"--positions: 'some' is not sum or keep"* ]]
	run --separate-stderr -2 circ-score --model $M --positions keep $TOK
	[[ "$stderr" == *"'--positions' go"*"with --method feature-atp or feature-ig"* ]]
	circ-score --model $M --dict "$T/sub" --method feature-atp --positions keep -o "$T/s.circ" $TOK
	circ-cat "$T/s.circ" | tests/validate.py schemas/scores.schema.json
}

@test "--positions keep: circ-prune (thresholds, --truth over every per-position edge) and circ-patch --dict against the reference" {
	sub_set
	circ-score --model $M --dict "$T/sub" --method feature-atp --positions keep -o "$T/s.circ" $TOK
	circ-prune --threshold 0.05 --node-threshold 0.05 -o "$T/c.circ" "$T/s.circ"
	circ-cat "$T/c.circ" | tests/validate.py schemas/circuit.schema.json
	circ-cat "$T/c.circ" >"$T/c.jsonl"
	circ-cat "$T/s.circ" >"$T/s.jsonl"
	# every edge of the pattern: input -> mlp0, input -> resid0 and resid0 -> attn1
	# cross positions (28 pairs of 7), the others one position (7), logits 7:
	# 28*13 + 28*13 + 28*169 + 7*13*13 (mlp0->resid0) + 2*7*169 (-> mlp1) + 7*39
	jq -e '.n_edges_total == 364 + 364 + 4732 + 1183 + 2366 + 273' "$T/c.jsonl" | head -1 | grep -q true
	grep -q '"node":"[a-z0-9_.]*@[0-9]"' "$T/c.jsonl"
	# truth: two scored per-position edges and an unscored one
	jq -c 'select(.edge) | {edge, a: (.score | fabs)}' "$T/s.jsonl" | sort -t: -k3 -g | tail -2 | jq -c '{edge}' >"$T/truth.jsonl"
	miss=$(/usr/bin/python3 -c '
import json, sys
have = {json.loads(l).get("edge") for l in open(sys.argv[1])}
print(next(e for e in ("resid0.f%d@%d->attn1.f%d@6" % (i, s, j) for s in range(7) for i in range(12) for j in range(12)) if e not in have))' "$T/s.jsonl")
	echo "{\"edge\": \"$miss\"}" >>"$T/truth.jsonl"
	circ-prune --top-n 2 --truth "$T/truth.jsonl" --report "$T/rep.json" --json "$T/s.circ" >"$T/p.jsonl"
	jq -e '.n_truth == 3 and .tp == 2 and .fn == 1 and .tn == 9282 - 3' "$T/rep.json"
	truth_refused "$T/s.circ" "resid0.f3@4->attn1.f2@2" "edge 'resid0.f3@4->attn1.f2@2': not an edge of the feature graph (a position feeds itself and, through attention, later ones)"
	truth_refused "$T/s.circ" "resid0.f3@1->mlp1.f2@2" "no attention layer on this route: one position to itself"
	truth_refused "$T/s.circ" "resid0.f3->mlp1.f2" "node 'resid0.f3': positions are kept in this graph"
	truth_refused "$T/s.circ" "resid0.f3@7->mlp1.f2@7" "node 'resid0.f3@7': position 7 of 7"
	# faithfulness and completeness with per-position mean ablation
	circ-patch --model $M --dict "$T/sub" --circuit "$T/c.circ" --json $TOK >"$T/p.jsonl"
	/usr/bin/python3 $REF ablate $M "$T/sub" $TOK "$T/c.jsonl" --positions keep >"$T/r.json"
	/usr/bin/python3 - "$T/p.jsonl" "$T/r.json" <<'PY'
import json, sys
lines = [json.loads(l) for l in open(sys.argv[1])]
h, rec = lines[0], lines[1]
r = json.load(open(sys.argv[2]))
close = lambda a, b: abs(a - b) <= 1e-5 * (abs(b) + 1)
assert close(h["metric_model"], r["metric_model"]) and close(h["metric_empty"], r["metric_empty"]), (h, r)
assert close(rec["metric"], r["metric_circuit"]), (rec, r)
den = r["metric_model"] - r["metric_empty"]
assert abs(rec["completeness"] - (r["metric_complement"] - r["metric_empty"]) / den) < 1e-4
assert 0 < rec["n_nodes"] < 371, rec
PY
	# a summed graph's node names are refused on a kept graph's scores (and back)
	circ-score --model $M --dict "$T/sub" --method feature-atp -o "$T/sum.circ" $TOK
	truth_refused "$T/sum.circ" "resid0.f3@1->mlp1.f2@1" "node 'resid0.f3@1': positions are summed in this graph (no '@<t>')"
}

# ---- every model family (tests/data/families, tests/ref/families.py) ----

@test "every model family: feature-atp against the reference; feature-ig with positions kept on gpt_neox (parallel), gemma2, llama" {
	for d in tests/data/families/*/; do
		d=${d%/}
		[ -f "$d/config.json" ] || continue
		f=$(basename "$d")
		C=$(jq .hidden_size "$d/config.json")
		L=$(jq .num_hidden_layers "$d/config.json")
		par=$(jq -r '.use_parallel_residual // false' "$d/config.json")
		# embed, and per layer of the first two (the others run through)
		# attn (not in parallel blocks: circ reads no hook_attn_out there), mlp, resid
		hooks="blocks.0.hook_resid_pre"
		for l in 0 1; do
			[ "$par" = true ] || hooks="$hooks blocks.$l.hook_attn_out"
			hooks="$hooks blocks.$l.hook_mlp_out blocks.$l.hook_resid_post"
		done
		i=0
		for h in $hooks; do
			i=$((i + 1))
			/usr/bin/python3 $DREF make "$T/$f/d$i" --arch standard --hook $h --d-in $C --d-sae 8 --seed $i
		done
		echo "# $f ($L layers, parallel $par)"
		M=$d check "$T/$f" -- --method feature-atp
		# ig with positions kept where the blocks differ most from GPT-2's:
		# parallel (gpt_neox), norms after attention and MLP (gemma2), and llama
		case $f in gpt_neox | gemma2 | llama) ;; *) continue ;; esac
		M=$d check "$T/$f" --positions keep --ig 2 -- --method feature-ig --steps 2 --positions keep
		if [ "$par" = true ]; then
			head -1 "$T/c.jsonl" | jq -e '.graph.blocks == "parallel"'
			# a parallel block's MLP reads the residual before the attention:
			# resid_pre0 -> mlp0 joins one position to itself
			run grep -c -e '"edge":"resid_pre0\.[a-z0-9]*@0->mlp0\.[a-z0-9]*@[1-6]"' "$T/c.jsonl"
			[ "$output" = 0 ]
		fi
	done
}
