#!/usr/bin/env bats
# circ-render --format html on feature graphs (lib/render_fgraph.c): a
# feature circuit of circ-prune and circ-trace's attribution-graph stream,
# each as one self-contained page with the dashboards of its features
# (--dashboards-from). In headless Chromium: every node drawn, a scripted
# click on a feature (the page's #click=<node> hook) shows its dashboard, no
# console message and no network request. The embedded dashboards equal
# circ-render --dashboard's JSON lines for the same features (circ-harvest's
# path). And circ-trace --graph-json against what circuit-tracer's and
# Neuronpedia's viewers read (tests/browser/graph_json_check.mjs,
# schemas/graph-json.schema.json).
load helper

M=tests/data/tiny/model
TOK=tests/data/tiny/tokens.jsonl
DREF=tests/ref/dict_ref.py
IT=fixtures/induction-trained

# Three SAEs on the tiny model (mlp0, resid0, resid1: the embedding is the
# input node) and a feature circuit of the 15 strongest edges.
fcircuit() {
	/usr/bin/python3 $DREF make "$T/set/a" --arch topk --k 4 --hook blocks.0.hook_mlp_out --d-in 24 --d-sae 12 --seed 11
	/usr/bin/python3 $DREF make "$T/set/b" --arch standard --hook blocks.0.hook_resid_post --d-in 24 --d-sae 12 --seed 12
	/usr/bin/python3 $DREF make "$T/set/c" --arch standard --hook blocks.1.hook_resid_post --d-in 24 --d-sae 12 --seed 14
	circ-score --model $M --dict "$T/set" --method feature-atp -o "$T/s.circ" $TOK
	circ-prune --top-n 15 -o "$T/c.circ" "$T/s.circ"
}

# An attribution graph of the trained induction model with its transcoders,
# and a corpus of induction sequences for the dashboards.
trace() {
	circ-trace --model $IT --dict $IT/transcoders --tokens 153,191,26,106,187,153,191,26 \
		-o "$T/g.circ" --graph-json "$T/g.json" --slug ind --scan induction-trained
	circ-dataset induction --len 6 --vocab-lo 0 --vocab-hi 256 --seed 0 --n 20 |
		circ-tokenize --vocab-dir $IT >"$T/tok.circ"
}

# Loads file://$1 (with fragment $2) in Chromium; the DOM into $T/dom.html,
# its console into $T/console.log, its network log into $T/net.json.
browse() {
	CIRC_CHROMIUM_LOG="$T/chromium.log" tests/browser/chromium.sh --enable-logging=stderr --v=0 \
		--log-net-log="$T/net.json" --dump-dom "file://$1$2" >"$T/dom.html"
	grep CONSOLE "$T/chromium.log" >"$T/console.log" || true
}

# Requests made by a page in a Chromium net log (its own background
# requests have no origin).
page_requests() {
	grep -o '"initiator":"[^"]*"' "$1" | grep -vc '"not an origin"' || true
}

@test "fview: a feature circuit's page draws every node; a click shows the feature's dashboard" {
	need_cmd /usr/bin/chromium chromium
	fcircuit
	circ-render --format html --model $M --dict "$T/set" --dashboards-from $TOK -o "$T/a.html" "$T/c.circ"
	# the nodes: node records and the ends of edge records
	circ-cat "$T/c.circ" | jq -r 'select(.node) | .node' >"$T/n.txt"
	circ-cat "$T/c.circ" | jq -r 'select(.edge) | .edge | split("->")[]' >>"$T/n.txt"
	n=$(sort -u "$T/n.txt" | wc -l)
	nf=$(sort -u "$T/n.txt" | grep -c '\.f[0-9]')
	[ "$n" -ge 10 ] && [ "$nf" -ge 4 ]
	# the first feature of resid0 (dictionary 1 of the set: a, b, c)
	f=$(sort -u "$T/n.txt" | grep '^resid0\.f' | sort -t f -k 2 -n | head -1)
	browse "$T/a.html" "#click=$f"
	grep -q 'data-ready="1"' "$T/dom.html"
	[ "$(grep -o ' data-node="' "$T/dom.html" | wc -l)" = "$n" ]
	grep -q "<span id=\"node-count\">$n</span>" "$T/dom.html"
	grep -q "<span id=\"dash-count\">$nf</span>" "$T/dom.html"
	[ "$(grep -o 'class="node error' "$T/dom.html" | wc -l)" -ge 1 ]
	grep -q 'class="node token" data-node="input"' "$T/dom.html"
	[ "$(grep -o '<path class="edge' "$T/dom.html" | wc -l)" = 15 ]
	# the click: the node selected, its dashboard (contexts, histogram, logits) shown
	grep -q "data-clicked=\"$f\"" "$T/dom.html"
	grep -q "<section class=\"feature\" id=\"f1-${f#resid0.f}\">" "$T/dom.html"
	grep -q '<svg class="hist"' "$T/dom.html"
	grep -q 'class="tok max"' "$T/dom.html"
	grep -q '<caption>promoted</caption>' "$T/dom.html"
	# clicking an error node shows no dashboard
	browse "$T/a.html" "#click=resid0.err"
	grep -q 'data-clicked="resid0.err"' "$T/dom.html"
	run ! grep -q '<section class="feature"' "$T/dom.html"
	grep -q 'resid0.err is not a feature: no dashboard.' "$T/dom.html"
	# no console message, no request
	[ ! -s "$T/console.log" ]
	[ "$(page_requests "$T/net.json")" = 0 ]
}

@test "fview: the checks can fail (a console error, a request, a missing node are seen)" {
	need_cmd /usr/bin/chromium chromium
	printf '<!DOCTYPE html><html><body><img src="http://127.0.0.1:9/x.png"><script>console.error("boom")</script></body></html>\n' >"$T/bad.html"
	browse "$T/bad.html" ""
	grep -q boom "$T/console.log"
	[ "$(page_requests "$T/net.json")" -ge 1 ]
	fcircuit
	circ-render --format html -o "$T/a.html" "$T/c.circ"
	browse "$T/a.html" "#click=resid0.f999"
	run ! grep -q 'data-clicked=' "$T/dom.html"
	grep -q '<span id="dash-count">0</span>' "$T/dom.html"
}

@test "fview: the embedded dashboards equal circ-render --dashboard's (circ-harvest) for the same features" {
	fcircuit
	circ-render --format html --model $M --dict "$T/set" --dashboards-from $TOK --contexts 3 \
		--window 2 --logits 4 --bins 5 -o "$T/a.html" "$T/c.circ"
	sed -n '/id="dashboard-data">\[/,/^\]<\/script>/p' "$T/a.html" | sed '1d;$d' | sed 's/,$//' >"$T/emb.jsonl"
	list=$(jq -r '"\(.dict):\(.feature)"' "$T/emb.jsonl" | paste -sd,)
	[ -n "$list" ]
	circ-harvest --model $M --dict "$T/set" -o "$T/acts.circ" $TOK
	circ-render --dashboard --format jsonl --model $M --dict "$T/set" --tokens $TOK --features "$list" \
		--contexts 3 --window 2 --logits 4 --bins 5 "$T/acts.circ" >"$T/ref.jsonl"
	cmp "$T/emb.jsonl" "$T/ref.jsonl"
	# the graph's features, each once, by dictionary and index
	circ-cat "$T/c.circ" | jq -r 'select(.edge) | .edge | split("->")[]' >"$T/n.txt"
	circ-cat "$T/c.circ" | jq -r 'select(.node) | .node' >>"$T/n.txt"
	[ "$(grep -c . "$T/emb.jsonl")" = "$(sort -u "$T/n.txt" | grep -c '\.f[0-9]')" ]
	jq -s -e '[.[] | [.dict, .feature]] | . == (sort | unique)' "$T/emb.jsonl"
}

@test "fview: circ-trace's stream as a page: kept nodes drawn by position, a feature's dashboard" {
	need_cmd /usr/bin/chromium chromium
	trace
	circ-render --format html --model $IT --dict $IT/transcoders --dashboards-from "$T/tok.circ" \
		--title 'induction <trace>' -o "$T/a.html" "$T/g.circ"
	n=$(circ-cat "$T/g.circ" | jq -r 'select(.node and .keep) | .node' | wc -l)
	f=$(circ-cat "$T/g.circ" | jq -r 'select(.kind == "feature" and .keep) | .node' | head -1)
	[ -n "$f" ]
	# the same graph as the graph JSON has
	[ "$n" = "$(jq '.nodes | length' "$T/g.json")" ]
	browse "$T/a.html" "#click=$f"
	grep -q 'data-ready="1"' "$T/dom.html"
	[ "$(grep -o ' data-node="' "$T/dom.html" | wc -l)" = "$n" ]
	[ "$(grep -o 'class="node token"' "$T/dom.html" | wc -l)" = 8 ]
	[ "$(grep -o 'class="node logit"' "$T/dom.html" | wc -l)" = "$(jq '[.nodes[] | select(.feature_type == "logit")] | length' "$T/g.json")" ]
	grep -q "data-clicked=\"$f\"" "$T/dom.html"
	l=${f#tc}
	i=${f#*.f}
	grep -q "<section class=\"feature\" id=\"f${l%%.*}-${i%@*}\">" "$T/dom.html"
	# positions label the columns (token text from the model's tokenizer)
	grep -q '@7</text>' "$T/dom.html"
	grep -q '<title>induction &lt;trace&gt;</title>' "$T/a.html"
	[ ! -s "$T/console.log" ]
	[ "$(page_requests "$T/net.json")" = 0 ]
}

@test "fview: the page is deterministic and self-contained" {
	fcircuit
	circ-render --format html --model $M --dict "$T/set" --dashboards-from $TOK -o "$T/a.html" "$T/c.circ"
	circ-render --format html --model $M --dict "$T/set" --dashboards-from $TOK -o "$T/b.html" "$T/c.circ"
	cmp "$T/a.html" "$T/b.html"
	# from standard input too
	circ-render --format html --model $M --dict "$T/set" --dashboards-from $TOK <"$T/c.circ" | cmp - "$T/a.html"
	grep -q "Content-Security-Policy\" content=\"default-src 'none'" "$T/a.html"
	run ! grep -Eq '(src|href)=' "$T/a.html"
	[ "$(grep -Eo 'https?://[^"'"'"' ]*' "$T/a.html" | sort -u)" = "http://www.w3.org/2000/svg" ]
	# a scores stream (every edge) renders too
	circ-render --format html -o "$T/s.html" "$T/s.circ"
	grep -q 'id="fgraph-data"' "$T/s.html"
}

@test "fview: usage errors and bad input" {
	fcircuit
	run --separate-stderr circ-render "$T/c.circ"
	assert_failure 2
	[[ "$stderr" == *"--format html"* ]]
	run --separate-stderr circ-render --format html --dashboards-from $TOK "$T/c.circ"
	assert_failure 2
	[[ "$stderr" == *"--model DIR and --dict DIR"* ]]
	run --separate-stderr circ-render --format html --model $M --dict "$T/set" --dashboards-from $TOK --tokens $TOK "$T/c.circ"
	assert_failure 2
	run --separate-stderr circ-render --format html --model $M --dict "$T/set" --dashboards-from $TOK tests/data/render/circuit.jsonl
	assert_failure 2
	[[ "$stderr" == *"goes with a feature graph"* ]]
	run --separate-stderr circ-render --format html --scores "$T/s.circ" "$T/c.circ"
	assert_failure 2
	# a dictionary set without the graph's resid1: named, and no file left
	rm -r "$T/set/c"
	run --separate-stderr circ-render --format html --model $M --dict "$T/set" --dashboards-from $TOK -o "$T/x.html" "$T/c.circ"
	assert_failure 1
	[[ "$stderr" == *"no dictionary named 'resid1'"* ]]
	[ ! -e "$T/x.html" ]
	# another model
	run --separate-stderr circ-render --format html --model $IT --dict "$T/set" --dashboards-from $TOK -o "$T/x.html" "$T/c.circ"
	assert_failure 1
	[[ "$stderr" == *"model_digest differs"* ]]
	# a bad node name
	circ-cat "$T/c.circ" | sed 's/"node":"resid0.err"/"node":"resid9.err"/' >"$T/bad.jsonl"
	run --separate-stderr circ-render --format html "$T/bad.jsonl"
	assert_failure 1
	[[ "$stderr" == *"resid9"* ]]
	run circ-render --help
	[[ "$output" == *"--dashboards-from"* ]]
}

# The graph JSON of circ-trace's tiny random case (tests/trace.bats) and of
# the trained induction model (token text of lone bytes) against the schema
# and the viewers' reads.
graph_json_ok() { # file
	/usr/bin/python3 - "$1" <<'PY'
import json, sys, jsonschema
s = json.load(open("schemas/graph-json.schema.json"))
jsonschema.validate(json.load(open(sys.argv[1])), s, cls=jsonschema.Draft202012Validator)
PY
	node tests/browser/graph_json_check.mjs "$1"
}

@test "graph JSON: circ-trace --graph-json has every field circuit-tracer's and Neuronpedia's viewers read" {
	need_cmd node nodejs
	/usr/bin/python3 tests/ref/trace_ref.py make-model "$T/m" --layers 3 --embd 32 --heads 4 --vocab 50 --ctx 16 --seed 1
	/usr/bin/python3 $DREF make "$T/tc/a" --arch transcoder --hook blocks.0.ln2.hook_normalized \
		--hook-out blocks.0.hook_mlp_out --d-in 32 --d-sae 96 --seed 2
	/usr/bin/python3 $DREF make "$T/tc/c" --arch jumprelu_transcoder --hook blocks.2.hook_resid_mid \
		--hook-out blocks.2.hook_mlp_out --d-in 32 --d-sae 96 --seed 4
	circ-trace --model "$T/m" --dict "$T/tc" --tokens 3,17,5,9,22,41,7 --graph-json "$T/r.json" --slug r --scan rnd >/dev/null
	graph_json_ok "$T/r.json"
	# the trained model: bytes that are not UTF-8 alone read as U+FFFD, one token each
	circ-trace --model $IT --dict $IT/transcoders --tokens 153,191,26,106,187,153,191,26 --node-threshold 0.95 \
		--graph-json "$T/g.json" --slug ind --scan induction-trained >/dev/null
	graph_json_ok "$T/g.json"
	jq -e '(.metadata.prompt_tokens | length) == 8 and .metadata.prompt_tokens[0] == "\ufffd"' "$T/g.json"
	jq -e '[.nodes[] | select(.feature_type == "logit") | .clerp | test("^Output")] | all' "$T/g.json"
	# a logit difference: circuit-tracer's custom target, its index past the vocabulary
	circ-trace --model $IT --dict $IT/transcoders --tokens 153,191,26,106,187,153,191,26 --node-threshold 0.95 \
		--logit-diff 106:187 --graph-json "$T/d.json" >/dev/null
	graph_json_ok "$T/d.json"
	jq -e --argjson v "$(jq .vocab_size $IT/config.json)" '[.nodes[] | select(.feature_type == "logit")] |
		length == 1 and .[0].feature == $v and .[0].is_target_logit and (.[0].clerp | test("^Output \".+\" - \".+\" \\(p=1.000\\)$"))' "$T/d.json"
}

@test "graph JSON: the checker and the schema fail on what the viewers would misread" {
	need_cmd node nodejs
	circ-trace --model $IT --dict $IT/transcoders --tokens 153,191,26,106,187,153,191,26 --node-threshold 0.95 \
		--graph-json "$T/g.json" >/dev/null
	graph_json_ok "$T/g.json"
	mutate() { # name jq-filter expected-message
		jq "$2" "$T/g.json" >"$T/$1.json"
		run node tests/browser/graph_json_check.mjs "$T/$1.json"
		assert_failure 1
		assert_output --partial "$3"
	}
	mutate clerp '(.nodes[] | select(.feature_type == "logit") | .clerp) |= "x"' "does not give token_prob"
	mutate link '.links[0].target = "9_9_9"' "is not a node_id"
	mutate cantor '(.nodes[] | select(.feature_type == "cross layer transcoder") | .feature) |= . + 1' "Cantor"
	mutate layer '(.nodes[] | select(.feature_type != "embedding") | .layer) |= tonumber' "layer: a string"
	mutate dup '.nodes += [.nodes[0]]' "appears twice"
	mutate ctx '(.nodes[] | select(.feature_type == "embedding") | .ctx_idx) |= . + 8' "an index into metadata.prompt_tokens"
	mutate target '(.nodes[] | select(.feature_type == "logit") | .is_target_logit) |= false' "0 target logits"
	mutate nl '.metadata.prompt_tokens[0] = "a\nb"' "process_token"
	mutate low '[.nodes[] | select(.feature_type == "logit" or .layer == "E" or .layer == "0")] as $n |
		.nodes = $n | .links = [.links[] | select(.source as $s | .target as $t | [$n[].node_id] | index($s) and index($t))]' "No layer found"
	# the schema: a missing clerp
	jq 'del(.nodes[0].clerp)' "$T/g.json" >"$T/noclerp.json"
	run /usr/bin/python3 -c 'import json, sys, jsonschema; jsonschema.validate(json.load(open(sys.argv[1])), json.load(open("schemas/graph-json.schema.json")), cls=jsonschema.Draft202012Validator)' "$T/noclerp.json"
	assert_failure
}
