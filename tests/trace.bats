#!/usr/bin/env bats
# circ-trace: attribution graphs against tests/ref/trace_ref.py (PyTorch,
# float64, one autograd.grad per target through the replacement model with
# detached patterns and LayerNorm scales). Tolerance: activations,
# pre-activations, biases and edge weights within 1e-4 relative to the
# largest of the target's |pre|, |bias| and |weights| (circ computes in
# float32); kept nodes equal, kept edges equal but for at most 0.5% lying
# within 1e-3 of the edge threshold; influence within 1e-3.
load helper

REF=tests/ref/trace_ref.py
IDS=3,17,5,9,22,41,7

# A 3-layer random GPT-2 in $T/m and transcoders for layers 0 and 2 (every
# input hook kind; layer 1 has none) in $T/set.
make_case() {
	/usr/bin/python3 $REF make-model "$T/m" --layers 3 --embd 32 --heads 4 --vocab 50 --ctx 16 --seed 1
	/usr/bin/python3 tests/ref/dict_ref.py make "$T/set/a" --arch transcoder --hook blocks.0.ln2.hook_normalized \
		--hook-out blocks.0.hook_mlp_out --d-in 32 --d-sae 96 --seed 2
	/usr/bin/python3 tests/ref/dict_ref.py make "$T/set/c" --arch jumprelu_transcoder --hook blocks.2.hook_resid_mid \
		--hook-out blocks.2.hook_mlp_out --d-in 32 --d-sae 96 --seed 4
}

compare() { # set [options]
	local set=$1
	shift
	circ-trace --model "$T/m" --dict "$set" --tokens $IDS --all-edges --json "$@" >"$T/c.jsonl"
	/usr/bin/python3 $REF graph "$T/m" "$set" $IDS "$@" >"$T/r.json"
	run /usr/bin/python3 $REF compare "$T/c.jsonl" "$T/r.json"
	echo "$output"
	[ "$status" -eq 0 ]
}

@test "circ-trace: adjacency, biases and pruning equal the reference (a layer without transcoder)" {
	make_case
	compare "$T/set"
	# layer 1 has no transcoder: no tc1 features, its error nodes carry the MLP
	run ! grep -q '"node":"tc1.f' "$T/c.jsonl"
	grep -q '"node":"tc1.err@0"' "$T/c.jsonl"
}

@test "circ-trace --max-feature-nodes: the most influential features, chosen as circuit-tracer chooses them, equal the reference's" {
	make_case
	n=$(circ-trace --model "$T/m" --dict "$T/set" --tokens $IDS --json | head -1 | jq -r .n_active_features)
	[ "$n" -gt 300 ]
	# several rounds of ranking (4 batches each), one round, a budget that
	# ends inside a batch
	compare "$T/set" --max-feature-nodes 100 --batch 16
	head -1 "$T/c.jsonl" | jq -e --argjson n "$n" '.n_features == 100 and .n_active_features == $n and .max_feature_nodes == 100 and .check_rel < 1e-4'
	tests/validate.py schemas/attribution-graph.schema.json "$T/c.jsonl"
	# what the left-out features gave is on each target (edges + bias +
	# dropped = pre, checked by compare): some target lost something
	jq -e -s '[.[1:-1][] | select(.dropped)] | length > 0 and any(.[]; .dropped != 0)' "$T/c.jsonl"
	compare "$T/set" --max-feature-nodes 37 --batch 5
	compare "$T/set" --max-feature-nodes $((n - 1)) --batch 64
	# a budget of every active feature (or more) is the whole graph, byte for byte
	circ-trace --model "$T/m" --dict "$T/set" --tokens $IDS --all-edges --json | tail -n +2 >"$T/all"
	for k in "$n" $((n + 50)); do
		circ-trace --model "$T/m" --dict "$T/set" --tokens $IDS --all-edges --json --max-feature-nodes "$k" | tail -n +2 | cmp - "$T/all"
	done
	# a family: Gemma 2 (trace_family_ref.py runs the same selection)
	/usr/bin/python3 tests/ref/dict_ref.py make "$T/g2/a" --arch transcoder --hook blocks.0.ln2.hook_normalized \
		--hook-out blocks.0.hook_mlp_out --d-in 64 --d-sae 48 --seed 11 >/dev/null
	/usr/bin/python3 tests/ref/dict_ref.py make "$T/g2/d" --arch jumprelu_transcoder --hook blocks.3.hook_mlp_in \
		--hook-out blocks.3.hook_mlp_out --d-in 64 --d-sae 48 --seed 14 >/dev/null
	F=tests/data/families/gemma2
	circ-trace --model $F --dict "$T/g2" --tokens $IDS --all-edges --json --max-feature-nodes 40 --batch 8 >"$T/c.jsonl"
	/usr/bin/python3 tests/ref/trace_family_ref.py graph $F "$T/g2" $IDS --max-feature-nodes 40 --batch 8 >"$T/r.json"
	/usr/bin/python3 tests/ref/trace_family_ref.py compare "$T/c.jsonl" "$T/r.json"
	refused() { run --separate-stderr circ-trace --model "$T/m" --dict "$T/set" --tokens $IDS "$@"; [ "$status" -eq 2 ]; [[ "$stderr" == *"option '--max-feature-nodes'"* ]]; }
	refused --max-feature-nodes 0
	refused --max-feature-nodes x
}

@test "circ-trace --logit-diff: logit differences as the targets equal the reference's and the differences of the single logits' rows" {
	make_case
	compare "$T/set" --logit-diff 7:13,0:49
	head -1 "$T/c.jsonl" | jq -e '.n_logits == 2 and .logit_diffs == "7:13,0:49" and .check_rel < 1e-4'
	jq -e -s '[.[] | select(.kind == "logit")] | map([.node, .token, .minus, .target_weight]) ==
		[["logit.7-13", 7, 13, 1], ["logit.0-49", 0, 49, 1]]' "$T/c.jsonl"
	circ-trace --model "$T/m" --dict "$T/set" --tokens $IDS --json --logit-diff 7:13,0:49 >"$T/p.jsonl"
	tests/validate.py schemas/attribution-graph.schema.json "$T/p.jsonl"
	cp "$T/c.jsonl" "$T/d.jsonl"
	# linear: each edge into logit.7-13 is the edge into logit.7 minus the
	# one into logit.13; its pre the clean logit difference (no soft cap)
	circ-trace --model "$T/m" --dict "$T/set" --tokens $IDS --all-edges --json --logit-tokens 7,13 >"$T/s.jsonl"
	jq -e -n --slurpfile d "$T/d.jsonl" --slurpfile s "$T/s.jsonl" '
		def w(f; t): [f[] | select(.edge) | select(.edge | endswith("->" + t)) | {key: (.edge | split("->")[0]), value: .weight}] | from_entries;
		(w($d; "logit.7-13")) as $dw | (w($s; "logit.7")) as $a | (w($s; "logit.13")) as $b |
		($dw | length) > 20 and
		([($a + $b) | keys[] | (($dw[.] // 0) - (($a[.] // 0) - ($b[.] // 0))) | fabs] | max) < 1e-4 *
			([$dw[] | fabs] | max)'
	m=$(circ-trace --model "$T/m" --dict "$T/set" --tokens $IDS --intervene tc0.f1@0*1 --answer 7 --wrong 13 --json | sed -n 2p | jq .clean_metric)
	jq -e -s --argjson m "$m" '[.[] | select(.node == "logit.7-13")][0].pre - $m | fabs < 1e-4' "$T/d.jsonl"
	compare "$T/set" --logit-diff 21:3 --max-feature-nodes 60 --batch 16
	# Gemma 2: the difference before the final soft cap
	/usr/bin/python3 tests/ref/dict_ref.py make "$T/g2/a" --arch transcoder --hook blocks.0.ln2.hook_normalized \
		--hook-out blocks.0.hook_mlp_out --d-in 64 --d-sae 48 --seed 11 >/dev/null
	F=tests/data/families/gemma2
	circ-trace --model $F --dict "$T/g2" --tokens $IDS --all-edges --json --logit-diff 5:299 --graph-json "$T/g.json" >"$T/c.jsonl"
	/usr/bin/python3 tests/ref/trace_family_ref.py graph $F "$T/g2" $IDS --logit-diff 5:299 >"$T/r.json"
	/usr/bin/python3 tests/ref/trace_family_ref.py compare "$T/c.jsonl" "$T/r.json"
	# the graph JSON names it as circuit-tracer names a custom target: a
	# virtual index after the vocabulary
	V=$(jq .vocab_size $F/config.json)
	L=$(jq .num_hidden_layers $F/config.json)
	jq -e --argjson v "$V" --argjson l "$L" '[.nodes[] | select(.feature_type == "logit")] |
		length == 1 and .[0].feature == $v and .[0].node_id == "\($l + 1)_\($v)_6" and .[0].is_target_logit and
		(.[0].clerp | test("^Output \".*\" - \".*\" \\(p=1.000\\)$"))' "$T/g.json"
	bad() { # status, message, options
		local st=$1 msg=$2
		shift 2
		run --separate-stderr circ-trace --model "$T/m" --dict "$T/set" --tokens $IDS "$@"
		echo "$stderr"
		[ "$status" -eq "$st" ] && [[ "$stderr" == *"$msg"* ]]
	}
	bad 1 "logit difference 7:50: token 50 is outside the vocabulary (50)" --logit-diff 7:50
	bad 1 "logit difference 7:7 is zero" --logit-diff 7:7
	bad 1 "logit difference 7:3 is given twice" --logit-diff 7:3,1:2,7:3
	for s in 7 7:3, 7-3 :3 7:x 7:3:1 "" 7:-3; do
		bad 2 "--logit-diff: '$s': expected A:B pairs of token ids, comma-separated" --logit-diff "$s"
	done
	bad 2 "--logit-diff and --logit-tokens both name the logit targets" --logit-diff 7:3 --logit-tokens 7
	bad 2 "--logit-diff names the logit targets: --max-logits and --logit-prob" --logit-diff 7:3 --max-logits 2
	bad 2 "--intervene writes new logits, not a graph: --logit-diff" --logit-diff 7:3 --intervene tc0.f1@0=0
}

@test "circ-trace --logit-tokens: the given tokens' logits as the targets, weighted by their probabilities, equal the reference's" {
	make_case
	# unlikely tokens too, in the order given
	compare "$T/set" --logit-tokens 7,0,49,13
	jq -r 'select(.kind == "logit") | .token' "$T/c.jsonl" | paste -sd, | grep -qx '7,0,49,13'
	head -1 "$T/c.jsonl" | jq -e '.n_logits == 4 and .logit_tokens == "7,0,49,13" and .check_rel < 1e-4'
	compare "$T/set" --logit-tokens 21 --max-feature-nodes 60 --batch 16
	# Gemma 2: the targets before the final soft cap, probabilities after it
	/usr/bin/python3 tests/ref/dict_ref.py make "$T/g2/a" --arch transcoder --hook blocks.0.ln2.hook_normalized \
		--hook-out blocks.0.hook_mlp_out --d-in 64 --d-sae 48 --seed 11 >/dev/null
	F=tests/data/families/gemma2
	circ-trace --model $F --dict "$T/g2" --tokens $IDS --all-edges --json --logit-tokens 5,299,17 >"$T/c.jsonl"
	/usr/bin/python3 tests/ref/trace_family_ref.py graph $F "$T/g2" $IDS --logit-tokens 5,299,17 >"$T/r.json"
	/usr/bin/python3 tests/ref/trace_family_ref.py compare "$T/c.jsonl" "$T/r.json"
	run --separate-stderr circ-trace --model "$T/m" --dict "$T/set" --tokens $IDS --logit-tokens 7,50
	[ "$status" -eq 1 ] && [[ "$stderr" == *"logit target 50 is outside the vocabulary (50)"* ]]
	run --separate-stderr circ-trace --model "$T/m" --dict "$T/set" --tokens $IDS --logit-tokens 7,3,7
	[ "$status" -eq 1 ] && [[ "$stderr" == *"logit target 7 is given twice"* ]]
	for bad in "--max-logits 3" "--logit-prob 0.5"; do
		run --separate-stderr circ-trace --model "$T/m" --dict "$T/set" --tokens $IDS --logit-tokens 7 $bad
		[ "$status" -eq 2 ] && [[ "$stderr" == *"--logit-tokens names the logit targets"* ]]
	done
	run --separate-stderr circ-trace --model "$T/m" --dict "$T/set" --tokens $IDS --logit-tokens 7,x
	[ "$status" -eq 2 ] && [[ "$stderr" == *"--logit-tokens: '7,x': expected comma-separated token ids"* ]]
}

@test "circ-trace: progress on a terminal counts the targets (features and logits) swept" {
	need_cmd script
	unset CIRC_NO_PROGRESS # (helper.bash sets it for every other test)
	make_case
	n=$(circ-trace --model "$T/m" --dict "$T/set" --tokens $IDS --json | head -1 | jq '.n_features + .n_logits')
	script -qec "circ-trace --model '$T/m' --dict '$T/set' --tokens $IDS --batch 64 -o '$T/g.circ'" /dev/null >"$T/tty"
	grep -q "circ-trace: targets $n/$n (100%)" "$T/tty"
	[ "$(tail -c 4 "$T/tty" | od -An -c | tr -d ' ')" = '\r033[K' ] # erased at the end
	nl=$(circ-trace --model "$T/m" --dict "$T/set" --tokens $IDS --json | head -1 | jq '.n_logits')
	script -qec "circ-trace --model '$T/m' --dict '$T/set' --tokens $IDS --batch 16 --max-feature-nodes 50 -o '$T/g.circ'" /dev/null >"$T/tty"
	grep -q "circ-trace: targets $((50 + nl))/$((50 + nl)) (100%)" "$T/tty"
	run --separate-stderr circ-trace --model "$T/m" --dict "$T/set" --tokens $IDS -o "$T/g.circ"
	assert_success
	[ -z "$stderr" ]
}

@test "circ-trace --adjacency: the dense matrix and node table equal the stream's" {
	make_case
	for lt in "--max-logits 10" "--logit-diff 7:13,0:49"; do
		circ-trace --model "$T/m" --dict "$T/set" --tokens $IDS --all-edges --json --adjacency "$T/a.safetensors" $lt >"$T/c.jsonl"
		/usr/bin/python3 - "$T/c.jsonl" "$T/a.safetensors" <<'PY'
import json, sys
sys.path.insert(0, "tests/ref")
import numpy as np
from stio import read_safetensors
lines = [json.loads(l) for l in open(sys.argv[1])]
t = read_safetensors(sys.argv[2])
a = t["adjacency"]
n = lines[0]["n_nodes"]
assert a.shape == (n, n)
b = np.zeros((n, n), np.float32)
for r in lines[1:]:
    if "edge" in r:
        b[r["target"], r["source"]] = r["weight"]
assert np.array_equal(a, b)
kinds = ["feature", "error", "input", "logit"]
nodes = [r for r in lines[1:] if "node" in r]
assert [kinds[k] for k in t["node_kind"]] == [r["kind"] for r in nodes]
assert list(t["node_pos"]) == [r["pos"] for r in nodes]
assert list(t["node_feature"]) == [r.get("feature", r.get("token")) for r in nodes]
assert list(t["node_minus"]) == [r.get("minus", -1) for r in nodes]
PY
	done
	jq -e -s '[.[] | select(.minus)] | length == 2' "$T/c.jsonl"
}

@test "circ-trace: every transcoder input hook, fold_ln off, other thresholds and logit counts" {
	make_case
	/usr/bin/python3 tests/ref/dict_ref.py make "$T/set/b" --arch transcoder --hook blocks.1.ln2.hook_normalized \
		--hook-out blocks.1.hook_mlp_out --d-in 32 --d-sae 64 --seed 3 --fold-ln 0
	compare "$T/set" --max-logits 4 --logit-prob 0.5 --node-threshold 0.6 --edge-threshold 0.9
}

@test "circ-trace: circuit-tracer layer files against the reference" {
	/usr/bin/python3 $REF make-model "$T/m" --layers 2 --embd 32 --heads 2 --vocab 50 --ctx 16 --seed 5
	/usr/bin/python3 tests/ref/dict_ref.py make-ct "$T/ct" --layers 2 --d-in 32 --d-sae 80 --jumprelu --seed 6
	compare "$T/ct"
}

@test "circ-trace: the stream validates, incoming edges plus bias give each pre-activation" {
	make_case
	circ-trace --model "$T/m" --dict "$T/set" --tokens $IDS -o "$T/g.circ"
	circ-cat "$T/g.circ" | tests/validate.py schemas/attribution-graph.schema.json
	circ-cat "$T/g.circ" | /usr/bin/python3 -c '
import json, sys
h = json.loads(sys.stdin.readline())
assert h["check_rel"] < 1e-4, h["check_rel"]
recs = [json.loads(l) for l in sys.stdin if not l.startswith("{\"$end")]
edges = [r for r in recs if "edge" in r]
assert edges and all(e["keep"] for e in edges)
kept = {r["index"] for r in recs if "node" in r and r["keep"]}
assert all(e["source"] in kept and e["target"] in kept for e in edges)
'
}

@test "circ-trace --graph-json: circuit-tracer's graph file fields" {
	make_case
	circ-trace --model "$T/m" --dict "$T/set" --tokens $IDS --graph-json "$T/g.json" --slug s1 --scan tiny >/dev/null
	/usr/bin/python3 - "$T/g.json" <<'PY'
import json, sys
g = json.load(open(sys.argv[1]))
assert set(g) == {"metadata", "qParams", "nodes", "links"}
m = g["metadata"]
assert m["slug"] == "s1" and m["scan"] == "tiny" and len(m["prompt_tokens"]) == 7
assert set(g["qParams"]) == {"pinnedIds", "supernodes", "linkType", "clickedId", "sg_pos"}
keys = {"node_id", "feature", "layer", "ctx_idx", "feature_type", "token_prob", "is_target_logit",
        "run_idx", "reverse_ctx_idx", "jsNodeId", "clerp", "influence", "activation"}
ids = set()
for n in g["nodes"]:
    assert set(n) == keys, n
    ids.add(n["node_id"])
types = {n["feature_type"] for n in g["nodes"]}
assert {"embedding", "logit", "cross layer transcoder"} <= types, types
assert sum(n["is_target_logit"] for n in g["nodes"]) == 1
assert sum(n["feature_type"] == "embedding" for n in g["nodes"]) == 7
for l in g["links"]:
    assert set(l) == {"source", "target", "weight"} and l["source"] in ids and l["target"] in ids
assert g["links"]
PY
}

@test "circ-trace: bad input is refused with a message" {
	make_case
	run --separate-stderr circ-trace --model "$T/m" --dict "$T/set" --tokens ""
	[ "$status" -eq 1 ]
	[[ "$stderr" == *"empty prompt"* ]]
	run --separate-stderr circ-trace --model "$T/m" --dict "$T/set" --tokens 1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17
	[ "$status" -eq 1 ]
	[[ "$stderr" == *"longer than the model's context (16)"* ]]
	run --separate-stderr circ-trace --model "$T/m" --dict "$T/set" --tokens 1,50
	[ "$status" -eq 1 ]
	[[ "$stderr" == *"outside the vocabulary"* ]]
	run --separate-stderr circ-trace --model "$T/m" --dict "$T/set" --tokens 1,x
	[ "$status" -eq 2 ]
	/usr/bin/python3 tests/ref/dict_ref.py make "$T/bad/a" --arch transcoder --hook blocks.0.ln2.hook_normalized \
		--hook-out blocks.0.hook_mlp_out --d-in 24 --d-sae 32 --seed 2
	run --separate-stderr circ-trace --model "$T/m" --dict "$T/bad" --tokens 1,2
	[ "$status" -eq 1 ]
	[[ "$stderr" == *"d_in"* ]]
	/usr/bin/python3 tests/ref/dict_ref.py make "$T/sae/a" --arch standard --hook blocks.0.hook_resid_pre \
		--d-in 32 --d-sae 32 --seed 2
	run --separate-stderr circ-trace --model "$T/m" --dict "$T/sae" --tokens 1,2
	[ "$status" -eq 1 ]
	[[ "$stderr" == *"not a transcoder"* ]]
	run --separate-stderr circ-trace --dict "$T/set" --tokens 1,2
	[ "$status" -eq 2 ]
	run --separate-stderr circ-trace --model "$T/m" --dict "$T/set" --tokens 1,2 --node-threshold 2
	[ "$status" -eq 2 ]
}

@test "circ-trace: the prompt from a token stream (--example)" {
	make_case
	printf '{"format":"circ","version":1,"kind":"tokens","metric":"logit_diff"}\n{"id":0,"clean":{"dtype":"i32","shape":[3],"data":[1,2,3]},"pos":2,"answer":[4],"wrong":[5]}\n{"id":1,"clean":{"dtype":"i32","shape":[7],"data":[3,17,5,9,22,41,7]},"pos":6,"answer":[4],"wrong":[5]}\n' >"$T/tok.jsonl"
	circ-trace --model "$T/m" --dict "$T/set" --example 1 --json "$T/tok.jsonl" | head -1 | grep -q '"tokens":\[3,17,5,9,22,41,7\]'
	run --separate-stderr circ-trace --model "$T/m" --dict "$T/set" --example 5 "$T/tok.jsonl"
	[ "$status" -eq 1 ]
	[[ "$stderr" == *"no example 5"* ]]
}

@test "circ-trace --help and a bad flag" {
	run circ-trace --help
	[ "$status" -eq 0 ]
	[[ "$output" == *"--graph-json"* ]]
	run circ-trace --no-such-flag
	[ "$status" -eq 2 ]
}

@test "circ-trace --intervene: new logits and metric equal the reference's re-run" {
	make_case
	# the layer-0 feature at position 2 with the largest activation, and one at layer 2
	f0=$(circ-trace --model "$T/m" --dict "$T/set" --tokens $IDS --all-edges --json |
		/usr/bin/python3 $REF strongest 0@2 2@6)
set -- $f0
circ-trace --model "$T/m" --dict "$T/set" --tokens $IDS --intervene "$1=0" --intervene "$2*3" \
	--intervene "tc0.f5@6=1.5" --answer 4 --wrong 9 --top-k 50 --json >"$T/i.jsonl"
tests/validate.py schemas/trace-intervention.schema.json "$T/i.jsonl"
/usr/bin/python3 $REF intervene "$T/m" "$T/set" $IDS "$1=0" "$2*3" "tc0.f5@6=1.5" >"$T/ri.json"
/usr/bin/python3 $REF check-intervene "$T/i.jsonl" "$T/ri.json" 50 4 9
	# scaling by 1 changes nothing
	circ-trace --model "$T/m" --dict "$T/set" --tokens $IDS --intervene "$1*1" --json |
		/usr/bin/python3 -c '
import json, sys
r = [json.loads(l) for l in sys.stdin][1]
assert all(abs(a["logit"] - b["logit"]) < 1e-5 and a["token"] == b["token"] for a, b in zip(r["top"], r["clean_top"]))'
	run --separate-stderr circ-trace --model "$T/m" --dict "$T/set" --tokens $IDS --intervene "tc1.f3@2=0"
	[ "$status" -eq 1 ]
	[[ "$stderr" == *"unknown feature 'tc1.f3@2': layer 1 has no transcoder"* ]]
	run --separate-stderr circ-trace --model "$T/m" --dict "$T/set" --tokens $IDS --intervene "tc0.f96@2=0"
	[ "$status" -eq 1 ]
	[[ "$stderr" == *"has 96 features"* ]]
	run --separate-stderr circ-trace --model "$T/m" --dict "$T/set" --tokens $IDS --intervene "tc0.f1@7=0"
	[ "$status" -eq 1 ]
	[[ "$stderr" == *"beyond the prompt"* ]]
	run --separate-stderr circ-trace --model "$T/m" --dict "$T/set" --tokens $IDS --intervene "tc0.f1@2=x"
	[ "$status" -eq 1 ]
	[[ "$stderr" == *"not a finite number"* ]]
	# the graph's options do not apply to an intervention, nor its metric to a graph
	for g in "graph-json $T/g.json" "adjacency $T/a.st" all-edges "max-feature-nodes 5" "logit-tokens 3" "logit-diff 3:4"; do
		run --separate-stderr circ-trace --model "$T/m" --dict "$T/set" --tokens $IDS --intervene "tc0.f1@2=0" --$g
		[ "$status" -eq 2 ]
		[[ "$stderr" == *"--intervene writes new logits, not a graph: --${g%% *} applies to the graph"* ]]
	done
	[ ! -e "$T/g.json" ] && [ ! -e "$T/a.st" ]
	run --separate-stderr circ-trace --model "$T/m" --dict "$T/set" --tokens $IDS --answer 4 --wrong 9
	[ "$status" -eq 2 ]
	[[ "$stderr" == *"--answer and --wrong go with --intervene"* ]]
}
