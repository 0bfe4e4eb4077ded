#!/usr/bin/env bats
# circ-render --dashboard: feature dashboards of sparse dictionaries from a
# dict-acts stream (circ-harvest --dict). The JSON lines against
# tests/ref/dashboard_ref.py (top features, contexts, histogram totals and
# promoted/suppressed logits from dict_ref.py's PyTorch activations;
# activations and logits within 1e-4 relative + 1e-5 absolute); the HTML
# page in headless Chromium (every feature drawn, no network request). Bad
# input is in tests/catalogue/dict.cases (h17.dash-*).
load helper

M=tests/data/tiny/model
TOK=tests/data/tiny/tokens.jsonl
DS=tests/data/dict/tiny
PY=/usr/bin/python3

# The number of network requests a page made, from a Chromium net log.
page_requests() {
	run bash -c "grep -o '\"initiator\":\"[^\"]*\"' '$1' | grep -vc '\"not an origin\"'"
}

harvest() {
	circ-harvest --model $M --dict $DS -o "$T/a.circ" $TOK
}

dash() { # circ-render --dashboard options...
	circ-render --dashboard --model $M --dict $DS --tokens $TOK "$@" "$T/a.circ"
}

@test "dashboard: JSON lines match the reference (top features, contexts, logits)" {
	harvest
	$PY tests/ref/dict_ref.py harvest $M $DS $TOK >"$T/ref.jsonl"
	dash --format jsonl --n-features 12 --contexts 3 --window 2 --logits 5 >"$T/c.jsonl"
	run $PY tests/ref/dashboard_ref.py check "$T/c.jsonl" "$T/ref.jsonl" $M $DS $TOK 12 3 2 5
	echo "$output"
	assert_success
	# every feature of both dictionaries, the whole sequence as window
	dash --format jsonl --n-features 128 --contexts 4 --window 16 --logits 40 >"$T/d.jsonl"
	run $PY tests/ref/dashboard_ref.py check "$T/d.jsonl" "$T/ref.jsonl" $M $DS $TOK 128 4 16 40
	echo "$output"
	assert_success
	# and the check can fail: another window does not match
	run $PY tests/ref/dashboard_ref.py check "$T/c.jsonl" "$T/ref.jsonl" $M $DS $TOK 12 3 1 5
	assert_failure
}

@test "dashboard: token text from the model's tokenizer; attn.hook_z logits through W_O" {
	local F=fixtures/induction-hand
	circ-fixture induction-hand --examples 4 --seed 1 | circ-tokenize --vocab-dir $F >"$T/tok"
	circ cat --json "$T/tok" >"$T/tok.jsonl"
	$PY tests/ref/dict_ref.py make "$T/d" --arch standard --hook blocks.1.attn.hook_z --d-in 160 --d-sae 32 --seed 3
	circ-harvest --model $F --dict "$T/d" -o "$T/a.circ" "$T/tok"
	$PY tests/ref/dict_ref.py harvest $F "$T/d" "$T/tok.jsonl" >"$T/ref.jsonl"
	circ-render --dashboard --model $F --dict "$T/d" --tokens "$T/tok" --format jsonl \
		--n-features 32 --contexts 3 --window 4 --logits 6 "$T/a.circ" >"$T/c.jsonl"
	run $PY tests/ref/dashboard_ref.py check "$T/c.jsonl" "$T/ref.jsonl" $F "$T/d" "$T/tok.jsonl" 32 3 4 6
	echo "$output"
	assert_success
	# text, not ids: the vocabulary's " t" (id 28) reads as a space and t
	jq -e -s '[.[].contexts[].text[]] | index(" t") != null' "$T/c.jsonl"
}

@test "dashboard: --features picks features, in the order given; lines follow the schema" {
	harvest
	dash --format jsonl --features 1:5,0:3,7 --bins 6 >"$T/c.jsonl"
	# (feature 7 of dictionary 0 never fires on these examples: no histogram)
	run jq -c '[.dict, .feature, (.hist.counts | length), .count]' "$T/c.jsonl"
	assert_output "$(printf '[1,5,6,4]\n[0,3,6,3]\n[0,7,0,0]')"
	$PY - "$T/c.jsonl" <<'PY'
import json, sys, jsonschema
s = json.load(open("schemas/dashboard.schema.json"))
for line in open(sys.argv[1]):
    jsonschema.validate(json.loads(line), s, cls=jsonschema.Draft202012Validator)
bad = json.loads(open(sys.argv[1]).readline()); del bad["contexts"]
try:
    jsonschema.validate(bad, s, cls=jsonschema.Draft202012Validator)
    sys.exit("a line without contexts passed the schema")
except jsonschema.ValidationError:
    pass
PY
}

@test "dashboard: output is deterministic; the HTML page is self-contained" {
	harvest
	dash -o "$T/a.html" --title 'tiny <dict>'
	dash -o "$T/b.html" --title 'tiny <dict>'
	cmp "$T/a.html" "$T/b.html"
	grep -q "Content-Security-Policy\" content=\"default-src 'none'" "$T/a.html"
	grep -q '<title>tiny &lt;dict&gt;</title>' "$T/a.html"
	run ! grep -Eq '(src|href)=' "$T/a.html"
	[ "$(grep -Eo 'https?://[^"'"'"' ]*' "$T/a.html" | sort -u)" = "http://www.w3.org/2000/svg" ]
	# its data block is the JSON lines
	dash --format jsonl --title 'tiny <dict>' >"$T/c.jsonl"
	sed -n '/id="dashboard-data">\[/,/^\]<\/script>/p' "$T/a.html" | sed '1d;$d' | sed 's/,$//' | cmp - "$T/c.jsonl"
}

@test "dashboard: the page draws every feature in headless Chromium and requests nothing" {
	need_cmd /usr/bin/chromium chromium
	harvest
	dash -o "$T/a.html" --n-features 7
	tests/browser/chromium.sh --log-net-log="$T/net.json" --dump-dom "file://$T/a.html" >"$T/dom.html"
	grep -q 'data-ready="1"' "$T/dom.html"
	[ "$(grep -o '<section class="feature"' "$T/dom.html" | wc -l)" = 7 ]
	grep -q '<span id="feature-count">7</span>' "$T/dom.html"
	first=$(dash --format jsonl --n-features 1 | jq -r '"f\(.dict)-\(.feature)"')
	grep -q "<section class=\"feature\" id=\"$first\">" "$T/dom.html"
	grep -q '<svg class="hist"' "$T/dom.html"
	grep -q 'class="tok max"' "$T/dom.html"
	# no request in the network log comes from a page (Chromium's own
	# background requests have no origin: "not an origin")
	page_requests "$T/net.json"
	[ "$output" = 0 ]
	# and the check sees a page's request
	printf '<!DOCTYPE html><html><body><img src="http://127.0.0.1:9/x.png"></body></html>\n' >"$T/leak.html"
	tests/browser/chromium.sh --log-net-log="$T/net2.json" --dump-dom "file://$T/leak.html" >/dev/null
	page_requests "$T/net2.json"
	[ "$output" -ge 1 ]
}

@test "dashboard: --help lists its options; write errors are reported; a failed run leaves no file" {
	run --separate-stderr circ-render --help
	assert_success
	for o in --dashboard --model --dict --tokens --features --n-features --contexts --window \
		--logits --bins; do
		assert_output --partial -- "$o"
	done
	harvest
	run --separate-stderr bash -c "circ-render --dashboard --model $M --dict $DS --tokens $TOK --format jsonl '$T/a.circ' >/dev/full"
	assert_failure 1
	[[ "$stderr" == *"'<stdout>': write error"* ]]
	# a failed run leaves no output file (here: a dictionary set of another size)
	run --separate-stderr circ-render --dashboard --model $M --dict $DS/l0_resid_pre --tokens $TOK -o "$T/x.html" "$T/a.circ"
	assert_failure 1
	[ ! -e "$T/x.html" ]
}

@test "dashboard: options are usage errors outside --dashboard or without its inputs" {
	run --separate-stderr circ-render --format jsonl tests/data/render/circuit.jsonl
	assert_failure 2
	run --separate-stderr circ-render --contexts 3 tests/data/render/circuit.jsonl
	assert_failure 2
	run --separate-stderr circ-render --dashboard --model $M --dict $DS
	assert_failure 2
	[[ "$stderr" == *"--tokens FILE"* ]]
	run --separate-stderr circ-render --dashboard --format dot --model $M --dict $DS --tokens $TOK
	assert_failure 2
}
