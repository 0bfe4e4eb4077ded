#!/usr/bin/env bats
# circ-render: goldens for text, DOT, EAP-IG JSON and the curve plot; SVG
# through Graphviz; the HTML page in headless Chromium (edge count after its
# script ran, a screenshot that is not blank); --list-edges; bad input.
load helper

D=tests/data/prune
R=tests/data/render
PY=/usr/bin/python3

need_chromium() {
	[ -x /usr/bin/chromium ] && return 0
	# CI installs it through make deps: there its absence is a failure
	[ "${CI:-}" != true ] || fail "chromium is not installed in CI (make deps installs it)"
	skip "chromium is not installed (make deps installs it)"
}

# The number the page shows in #edge-count once its script has run.
page_edge_count() {
	tests/browser/chromium.sh --dump-dom "$1" >"$T/dom.html"
	grep -q 'data-ready="1"' "$T/dom.html"
	sed -n 's/.*<span id="edge-count">\([0-9]*\)<\/span>.*/\1/p' "$T/dom.html"
}

@test "render --help lists every option and exits 0" {
	run --separate-stderr circ-render --help
	assert_success
	for o in --format --output --scores --curve --title --top --d-model --eap-ig-legacy \
		--list-edges --graph; do
		assert_output --partial -- "$o"
	done
}

@test "render: bad flags, formats and combinations are usage errors" {
	run --separate-stderr circ-render --nope
	assert_failure 2
	run --separate-stderr circ-render --format png $R/circuit.jsonl
	assert_failure 2
	[[ "$stderr" == *"unknown format 'png'"* ]]
	run --separate-stderr circ-render --graph 2,2 $R/circuit.jsonl
	assert_failure 2
	run --separate-stderr circ-render --list-edges --graph 2
	assert_failure 2
	run --separate-stderr circ-render --list-edges --graph 0,2
	assert_failure 2
	run --separate-stderr circ-render --top -1 $R/circuit.jsonl
	assert_failure 2
}

@test "render: text summary golden (with scores and a curve)" {
	circ-render $R/circuit.jsonl --scores $D/scores.jsonl --curve $D/curve.jsonl --title tiny |
		cmp - $R/golden.txt
}

@test "render: the text summary reads a binary circuit from stdin too" {
	circ-prune --top-n 8 $D/scores.jsonl | circ-render --top 3 >"$T/t.txt"
	grep -q '^edges: 8 of 46 (17.39%)$' "$T/t.txt"
	grep -q '^source: eap-ig, top-n 8 (|score|)$' "$T/t.txt"
	grep -q '^   3  input->a0.h1<q>          -1.5359$' "$T/t.txt"
	run ! grep -q '^   4 ' "$T/t.txt"
}

@test "render: DOT golden, accepted by Graphviz" {
	circ-render -f dot $R/circuit.jsonl --scores $D/scores.jsonl --title tiny | cmp - $R/golden.dot
	dot -Tsvg $R/golden.dot >/dev/null
	# receivers are shown and every kept edge is drawn once
	[ "$(grep -c 'headlabel="q"' $R/golden.dot)" = 2 ]
	[ "$(grep -c 'tooltip=' $R/golden.dot)" = 8 ]
}

@test "render: SVG through dot -Tsvg, written atomically" {
	circ-render -f svg -o "$T/c.svg" $R/circuit.jsonl
	grep -q '<svg' "$T/c.svg"
	grep -q 'a0.h1&#45;&gt;a1.h0&lt;k&gt; score &#45;1.2232' "$T/c.svg"
	$PY -c 'import sys, xml.dom.minidom; xml.dom.minidom.parse(sys.argv[1])' "$T/c.svg"
	# Graphviz failing is an error, and leaves no output file behind.
	CIRC_DOT=false run --separate-stderr circ-render -f svg -o "$T/d.svg" $R/circuit.jsonl
	assert_failure 1
	[[ "$stderr" == *"'false -Tsvg' failed (exit status 1)"* ]]
	[ -z "$(ls "$T" | grep d.svg)" ]
	CIRC_DOT=/nonexistent/dot run --separate-stderr circ-render -f svg $R/circuit.jsonl
	assert_failure 1
	[[ "$stderr" == *"cannot run '/nonexistent/dot'"* ]]
}

@test "render: EAP-IG graph JSON golden, in EAP-IG's shape and order" {
	circ-render -f json --d-model 8 $R/circuit.jsonl --scores $D/scores.jsonl | cmp - $R/golden.json
	$PY - $R/golden.json <<'EOF'
import json, sys
import jsonschema
d = json.load(open(sys.argv[1]))
s = json.load(open("schemas/graph.schema.json"))
sub = dict(s["$defs"]["eap_ig_json"]); sub["$defs"] = s["$defs"]
jsonschema.validate(d, sub, cls=jsonschema.Draft202012Validator)
# EAP-IG's Graph.from_model construction order, written out independently.
L, H = d["cfg"]["n_layers"], d["cfg"]["n_heads"]
nodes, edges, stream = ["input"], [], ["input"]
for l in range(L):
    heads = [f"a{l}.h{h}" for h in range(H)]
    nodes += heads + [f"m{l}"]
    edges += [f"{u}->{a}<{c}>" for u in stream for a in heads for c in "qkv"]
    stream += heads
    edges += [f"{u}->m{l}" for u in stream]
    stream.append(f"m{l}")
edges += [f"{u}->logits" for u in stream]
nodes.append("logits")
assert list(d["nodes"]) == nodes, "node order"
assert list(d["edges"]) == edges, "edge order"
kept = [e for e, v in d["edges"].items() if v["in_graph"]]
assert len(kept) == 8, kept
assert d["nodes"]["logits"]["in_graph"] and not d["nodes"]["a0.h0"]["in_graph"]
assert d["edges"]["a1.h0->logits"]["score"] == 1.699
EOF
}

@test "render: legacy EAP-IG JSON has boolean nodes; node-level graphs are refused" {
	circ-render -f json --eap-ig-legacy $R/circuit.jsonl >"$T/l.json"
	[ "$(jq -c '.nodes.input, .nodes["a0.h0"], .cfg' "$T/l.json" | tr '\n' ' ')" = \
		'true false {"n_layers":2,"n_heads":2,"parallel_attn_mlp":false} ' ]
	# without --scores, edges outside the circuit have no score
	[ "$(jq -c '.edges["input->a0.h0<q>"]' "$T/l.json")" = '{"score":null,"in_graph":false}' ]
	printf '%s\n%s\n' '{"format":"circ","version":1,"kind":"circuit","graph":{"n_layer":2,"n_head":2,"level":"node"},"source":{},"n_edges_total":26}' \
		'{"edge":"input->a0.h1"}' >"$T/node.jsonl"
	run --separate-stderr circ-render -f json "$T/node.jsonl"
	assert_failure 1
	[[ "$stderr" == *"no node-level form"* ]]
	# the other formats take node-level circuits
	circ-render "$T/node.jsonl" | grep -q '^receivers: head 1, mlp 0, logits 0$'
}

@test "render: the HTML page is self-contained" {
	circ-render -f html --title 'tiny <circuit>' -o "$T/c.html" $R/circuit.jsonl
	grep -q "Content-Security-Policy\" content=\"default-src 'none'" "$T/c.html"
	grep -q '<title>tiny &lt;circuit&gt;</title>' "$T/c.html"
	run ! grep -Eq '(src|href)=' "$T/c.html"
	# the only URL is the SVG namespace
	[ "$(grep -Eo 'https?://[^"'"'"' ]*' "$T/c.html" | sort -u)" = "http://www.w3.org/2000/svg" ]
	[ "$(grep -c '"name": "' "$T/c.html")" = 13 ] # 5 nodes + 8 edges
}

@test "render: the HTML page shows the expected edge count in headless Chromium" {
	need_chromium
	circ-render -f html -o "$T/c.html" $R/circuit.jsonl
	[ "$(page_edge_count "file://$T/c.html")" = 8 ]
	# the filter: |score| >= 1.5 leaves 4 edges, >= 1.69 leaves 1
	[ "$(page_edge_count "file://$T/c.html#min=1.5")" = 4 ]
	[ "$(page_edge_count "file://$T/c.html#min=1.69")" = 1 ]
	grep -q 'data-edge="a0.h1-&gt;a1.h0&lt;k&gt;"' "$T/dom.html"
}

@test "render: the HTML screenshot is not blank" {
	need_chromium
	circ-render -f html -o "$T/c.html" $R/circuit.jsonl
	tests/browser/chromium.sh --window-size=800,600 --screenshot="$T/shot.png" "file://$T/c.html"
	run $PY tests/browser/png_colors.py "$T/shot.png"
	assert_success
	colors=$(sed 's/.*colors=\([0-9]*\).*/\1/' <<<"$output")
	ink=$(sed 's/.*ink=//' <<<"$output")
	[ "$colors" -ge 50 ]
	awk -v i="$ink" 'BEGIN { exit !(i > 0.02) }'
	# and the checker does tell a blank page apart
	printf '<!DOCTYPE html><html><body style="background:#fff"></body></html>\n' >"$T/blank.html"
	tests/browser/chromium.sh --window-size=320,240 --screenshot="$T/blank.png" "file://$T/blank.html"
	run $PY tests/browser/png_colors.py "$T/blank.png"
	assert_output "320x240 colors=1 ink=0.0000"
}

@test "render: a GPT-2-small-sized circuit in the browser" {
	need_chromium
	$PY $D/random_scores.py 12 12 9 >"$T/s.jsonl"
	circ-prune --greedy 1% "$T/s.jsonl" >"$T/c.circ"
	n=$(circ-cat --no-header "$T/c.circ" | wc -l)
	[ "$n" -gt 50 ]
	circ-render -f html -o "$T/c.html" "$T/c.circ"
	[ "$(page_edge_count "file://$T/c.html")" = "$n" ]
}

@test "render: faithfulness curve SVG golden, from --curve or the input" {
	circ-render -f curve-svg --curve $D/curve.jsonl | cmp - $R/golden-curve.svg
	circ-render -f curve-svg <$D/curve.jsonl | cmp - $R/golden-curve.svg
	$PY -c 'import sys, xml.dom.minidom; xml.dom.minidom.parse(sys.argv[1])' $R/golden-curve.svg
	[ "$(grep -c '<circle' $R/golden-curve.svg)" = 10 ]
	grep -q 'CPR 0.9529, CMD 0.0541' $R/golden-curve.svg
	$PY tests/validate.py schemas/curve.schema.json $D/curve.jsonl
	# without a summary record the areas are computed from the points
	grep -v summary $D/curve.jsonl | sed 's/"records":11/"records":10/' | circ-render -f curve-svg | grep -q 'area under f 0.9529, area |1 - f| 0.0541'
}

@test "render: a bad curve is an error naming the record" {
	sed 's/"fraction":0.002,/"fraction":0.0005,/' $D/curve.jsonl >"$T/bad.jsonl"
	run --separate-stderr circ-render -f curve-svg --curve "$T/bad.jsonl"
	assert_failure 1
	[[ "$stderr" == *"record 2: field 'fraction': 0.0005 does not follow 0.001"* ]]
	run --separate-stderr circ-render -f curve-svg --curve $D/scores.jsonl
	assert_failure 1
	[[ "$stderr" == *"expected 'curve'"* ]]
}

@test "render --list-edges: GPT-2 small has 32491 edges (11611 at node level)" {
	circ-render --list-edges --graph 12,12 >"$T/e.txt"
	[ "$(wc -l <"$T/e.txt")" = 32491 ]
	[ "$(head -1 "$T/e.txt")" = 'input->a0.h0<q>' ]
	[ "$(tail -1 "$T/e.txt")" = 'm11->logits' ]
	[ "$(sort -u "$T/e.txt" | wc -l)" = 32491 ]
	grep -qx 'a0.h1->a2.h3<q>' "$T/e.txt"
	grep -qx 'a0.h1->m0' "$T/e.txt"
	run ! grep -q 'a12' "$T/e.txt"
	[ "$(circ-render --list-edges --graph 12,12,node | wc -l)" = 11611 ]
	# from a stream's header: the fixture's records are in canonical order
	circ-render --list-edges $D/scores.jsonl | cmp - <(circ-cat --no-header $D/scores.jsonl | jq -r .edge)
}

@test "render: scores from another model are refused" {
	jq -c 'if .model_digest then .model_digest = "sha256:'"$(printf '%064d' 1)"'" else . end' \
		$D/scores.jsonl >"$T/s.jsonl"
	run --separate-stderr circ-render --scores "$T/s.jsonl" $R/circuit.jsonl
	assert_failure 1
	[[ "$stderr" == *"model_digest differs"* ]]
}

@test "render: a headerless edge list takes its graph from --scores" {
	jq -c '{edge}' $D/truth.jsonl >"$T/t.jsonl"
	circ-render --scores $D/scores.jsonl "$T/t.jsonl" | grep -q '^edges: 7 of 46'
	run --separate-stderr circ-render "$T/t.jsonl"
	assert_failure 1
	[[ "$stderr" == *"needs a graph from elsewhere"* ]]
	printf '{"edge":"input->logits","score":{"$f64":"Infinity"}}\n' >"$T/inf.jsonl"
	run --separate-stderr circ-render --scores $D/scores.jsonl "$T/inf.jsonl"
	assert_failure 1
	[[ "$stderr" == *"record 1: edge 'input->logits': score is not finite"* ]]
	printf '{"edge":"input->a0.h2<q>"}\n' >"$T/bad.jsonl"
	run --separate-stderr circ-render --scores $D/scores.jsonl "$T/bad.jsonl"
	assert_failure 1
	[[ "$stderr" == *"record 1: edge 'input->a0.h2<q>': node 'a0.h2': no head 2 (the graph has heads 0-1)"* ]]
}

@test "render: write errors are reported and leave no file" {
	run --separate-stderr circ-render -o /dev/full $R/circuit.jsonl
	assert_failure 1
	[[ "$stderr" == *"'/dev/full': write error"* ]]
	[ -c /dev/full ] # written to, never renamed over
	run --separate-stderr circ-render -f html -o "$T/no/such/dir.html" $R/circuit.jsonl
	assert_failure 1
	run --separate-stderr circ-render $D/scores.jsonl
	assert_failure 1
	[[ "$stderr" == *"expected a circuit stream or an edge list, got kind 'scores'"* ]]
}
