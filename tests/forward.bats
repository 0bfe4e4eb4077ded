#!/usr/bin/env bats
# circ-forward: options, golden logits against the PyTorch reference
# (tests/ref/gpt2_ref.py, float64; tolerance 1e-4 absolute), metric and
# top-k consistency, schema, and every kind of bad input.
load helper

M=tests/data/tiny/model
TOK=tests/data/tiny/tokens.jsonl

hdr() { printf '{"format":"circ","version":1,"kind":"tokens","metric":"%s"}\n' "${1:-logit_diff}"; }

@test "--help lists the options and exits 0" {
	run circ-forward --help
	assert_success
	assert_output --partial "--model DIR"
	for f in --batch --threads --top-k --logits --corrupt --metric --allow-nonfinite; do
		assert_output --partial -- "$f"
	done
}

@test "usage errors exit 2" {
	run --separate-stderr -2 circ-forward "$TOK"
	[[ "$stderr" == "circ-forward: --model DIR is required"* ]]
	run -2 circ-forward --model "$M" --bogus "$TOK"
	run -2 circ-forward --model "$M" --batch 0 "$TOK"
	run -2 circ-forward --model "$M" --top-k -1 "$TOK"
	run -2 circ-forward --model "$M" --metric nope "$TOK"
	run -2 circ-forward --model "$M" "$TOK" "$TOK"
}

@test "logits match the PyTorch reference" {
	/usr/bin/python3 tests/ref/gpt2_ref.py logits "$M" "$TOK" >"$T/ref.jsonl"
	circ-forward --model "$M" --logits --top-k 0 --json "$TOK" | circ-cat --no-header >"$T/got.jsonl"
	paste -d '\n' "$T/got.jsonl" "$T/ref.jsonl" | jq -s -e '
		[range(0; length; 2) as $i | .[$i] as $g | .[$i + 1] as $r |
		 ($g.id == $r.id) and
		 ([$g.logits.data, ($r.logits | flatten)] | transpose | map(.[0] - .[1] | fabs) | max) < 1e-4]
		| all'
}

@test "the metric, correct and top-k agree with the logits" {
	circ-forward --model "$M" --logits --top-k 40 --json "$TOK" | circ-cat --no-header >"$T/got.jsonl"
	tail -n +2 "$TOK" >"$T/tok.jsonl"
	paste -d '\n' "$T/got.jsonl" "$T/tok.jsonl" | jq -s -e '
		[range(0; length; 2) as $i | .[$i] as $g | .[$i + 1] as $t | $g.logits.data as $z |
		 (($g.metric - ($z[$t.answer[0]] - $z[$t.wrong[0]])) | fabs) < 1e-5 and
		 ($g.top | length) == 40 and
		 ([$g.top[].p] | add | . > 0.999999 and . < 1.000001) and
		 ($g.top[0].token == ($z | index($z | max))) and
		 ($g.correct == ($g.top[0].token == $t.answer[0]))]
		| all'
}

@test "stderr summary; output validates against the schema" {
	run --separate-stderr circ-forward --model "$M" --json "$TOK"
	assert_success
	[[ "$stderr" == "circ-forward: 4 examples, mean logit_diff "*", accuracy "*" (0/4)" ]]
	circ-forward --model "$M" --logits "$TOK" | circ-cat | tests/validate.py schemas/results.schema.json
	circ-forward --model "$M" --json "$TOK" | head -1 | jq -e '.kind == "results" and .metric == "logit_diff" and .prompts == "clean" and (.model_digest | startswith("sha256:"))'
}

@test "batch size and threads do not change the results" {
	# the same settings give the same bytes; other batch sizes and thread
	# counts may let OpenBLAS pick other kernels (OPENBLAS_CORETYPE), which
	# round differently in float32
	circ-forward --model "$M" --json --batch 1 "$TOK" | circ-cat --no-header >"$T/b1"
	circ-forward --model "$M" --json --batch 1 "$TOK" | circ-cat --no-header >"$T/b1again"
	cmp "$T/b1" "$T/b1again"
	circ-forward --model "$M" --json --batch 3 "$TOK" | circ-cat --no-header >"$T/b3"
	circ-forward --model "$M" --json --threads 2 "$TOK" | circ-cat --no-header >"$T/t2"
	for o in b3 t2; do
		paste -d '\n' "$T/b1" "$T/$o" | jq -s -e '[range(0; length; 2) as $i |
			((.[$i].metric - .[$i + 1].metric) | fabs) < 1e-5 and
			.[$i].correct == .[$i + 1].correct and
			([.[$i].top[].token] == [.[$i + 1].top[].token])] | all'
	done
}

@test "kl: zero on the clean prompts, positive on the corrupted ones" {
	circ-forward --model "$M" --metric kl --json "$TOK" | circ-cat --no-header | jq -s -e 'map(.metric | fabs < 1e-6) | all'
	circ-forward --model "$M" --metric kl --corrupt --json "$TOK" | circ-cat --no-header | jq -s -e 'map(.metric > 0) | any'
	circ-forward --model "$M" --corrupt --json "$TOK" | head -1 | jq -e '.prompts == "corrupt"'
}

@test "multi-position records (logprob over several positions) and mixed lengths" {
	{
		hdr logprob
		echo '{"id":0,"clean":{"dtype":"i32","shape":[6],"data":[1,2,3,1,2,3]},"corrupt":{"dtype":"i32","shape":[6],"data":[4,5,6,7,8,9]},"pos":[3,4],"answer":[2,3],"wrong":[]}'
		echo '{"id":1,"clean":{"dtype":"i32","shape":[3],"data":[1,2,3]},"corrupt":{"dtype":"i32","shape":[3],"data":[4,5,6]},"pos":2,"answer":[7],"wrong":[]}'
	} >"$T/multi.jsonl"
	run --separate-stderr circ-forward --model "$M" --logits --json "$T/multi.jsonl"
	assert_success
	sed -n 2p <<<"$output" | jq -e '.logits.shape == [2, 40] and .metric < 0'
	sed -n 3p <<<"$output" | jq -e '.logits.shape == [1, 40] and .id == 1'
}

@test "empty input: a header only, 0 examples" {
	hdr >"$T/empty.jsonl"
	run --separate-stderr circ-forward --model "$M" --json "$T/empty.jsonl"
	assert_success
	assert_equal "$(wc -l <<<"$output")" 2
	assert_line --index 1 '{"$end":{"records":0}}'
	[[ "$stderr" == *"0 examples"* ]]
}

@test "bad tokens: out of the vocabulary, longer than the context" {
	{ hdr; echo '{"id":0,"clean":{"dtype":"i32","shape":[2],"data":[1,40]},"corrupt":{"dtype":"i32","shape":[2],"data":[1,2]},"pos":1,"answer":[1],"wrong":[2]}'; } >"$T/oov.jsonl"
	run --separate-stderr -1 circ-forward --model "$M" "$T/oov.jsonl"
	[[ "$stderr" == *"oov.jsonl'"*"record 1"*"token 40"*"vocabulary (40 tokens"* ]]
	seq=$(seq -s, 1 17 | sed 's/[0-9]\+/1/g')
	{ hdr; echo "{\"id\":0,\"clean\":{\"dtype\":\"i32\",\"shape\":[17],\"data\":[$seq]},\"corrupt\":{\"dtype\":\"i32\",\"shape\":[17],\"data\":[$seq]},\"pos\":16,\"answer\":[1],\"wrong\":[2]}"; } >"$T/long.jsonl"
	run --separate-stderr -1 circ-forward --model "$M" "$T/long.jsonl"
	[[ "$stderr" == *"long.jsonl'"*"record 1"*"17 tokens"*"context (16)"* ]]
}

@test "wrong stream kind, truncated stream, missing metric" {
	circ-forward --model "$M" "$TOK" >"$T/results.circ"
	run --separate-stderr -1 circ-forward --model "$M" "$T/results.circ"
	[[ "$stderr" == *"results"* ]]
	# a binary token stream cut short is an error, not a shorter output
	circ-cat --to-msgpack -o "$T/tok.circ" "$TOK"
	head -c $(($(stat -c %s "$T/tok.circ") - 5)) "$T/tok.circ" >"$T/cut.circ"
	run --separate-stderr -1 circ-forward --model "$M" --json -o "$T/out.jsonl" "$T/cut.circ"
	[ ! -e "$T/out.jsonl" ]
	echo '{"format":"circ","version":1,"kind":"tokens"}' >"$T/nometric.jsonl"
	run --separate-stderr -1 circ-forward --model "$M" "$T/nometric.jsonl"
	[[ "$stderr" == *"metric"* ]]
}

@test "bad model directories" {
	run --separate-stderr -1 circ-forward --model /nonexistent "$TOK"
	[[ "$stderr" == "circ-forward: '/nonexistent': not a model directory"* ]]
	mkdir "$T/m"
	cp "$M/config.json" "$T/m/"
	head -c 1000 "$M/model.safetensors" >"$T/m/model.safetensors"
	run --separate-stderr -1 circ-forward --model "$T/m" "$TOK"
	[[ "$stderr" == *"model.safetensors'"* ]]
	echo '{"n_layer": 2}' >"$T/m/config.json"
	run --separate-stderr -1 circ-forward --model "$T/m" "$TOK"
	[[ "$stderr" == *"config.json': key 'n_head': missing"* ]]
}

@test "a token stream from another vocabulary is refused" {
	mkdir "$T/m"
	cp "$M"/* "$T/m/"
	echo '{"a": 0}' >"$T/m/vocab.json"
	printf '#version: 0.2\n' >"$T/m/merges.txt"
	{ printf '{"format":"circ","version":1,"kind":"tokens","metric":"logit_diff","vocab_digest":"sha256:%064d"}\n' 0; tail -n +2 "$TOK"; } >"$T/v.jsonl"
	run --separate-stderr -1 circ-forward --model "$T/m" "$T/v.jsonl"
	[[ "$stderr" == *"vocab_digest"*"differs"* ]]
	# without tokenizer files there is nothing to compare: accepted
	run --separate-stderr circ-forward --model "$M" --json "$T/v.jsonl"
	assert_success
}

@test "output errors: /dev/full, binary to a terminal refused" {
	run --separate-stderr -1 circ-forward --model "$M" --json "$TOK" -o /dev/full
	run --separate-stderr -1 bash -c "circ-forward --model $M --json $TOK >/dev/full"
}

@test "hand-written JSON lines without a header line: metric logit_diff (or --metric), id = record index" {
	tail -n +2 "$TOK" | jq -c 'del(.id)' >"$T/nh.jsonl"
	circ-forward --model "$M" --json "$TOK" | circ-cat --no-header >"$T/a.jsonl"
	circ-forward --model "$M" --json "$T/nh.jsonl" >"$T/b.jsonl"
	head -1 "$T/b.jsonl" | jq -e '.metric == "logit_diff"'
	circ-cat --no-header "$T/b.jsonl" | cmp - "$T/a.jsonl"
	circ-forward --model "$M" --metric logprob --json "$T/nh.jsonl" | head -1 | jq -e '.metric == "logprob"'
	# an id given is kept
	tail -n +2 "$TOK" | jq -c '.id += 10' >"$T/ids.jsonl"
	circ-forward --model "$M" --json "$T/ids.jsonl" | circ-cat --no-header | jq -s -e 'map(.id) == [10, 11, 12, 13]'
	# under a real header the id stays required
	{ head -1 "$TOK"; tail -n +2 "$TOK" | jq -c 'del(.id)'; } >"$T/h.jsonl"
	run --separate-stderr -1 circ-forward --model "$M" "$T/h.jsonl"
	[[ "$stderr" == *"h.jsonl': record 1: missing field 'id'"* ]]
}

@test "the model digest is cached by file identity, never served for a changed file" {
	cp -r tests/data/tiny/model "$T/m"
	touch -d '1 hour ago' "$T/m/model.safetensors"
	sleep 2.1 # the change time (now, after cp) must be old enough to be trusted
	digest() { circ-forward --model "$T/m" --json tests/data/tiny/tokens.jsonl 2>/dev/null | head -1 | jq -r .model_digest; }
	want=$(CIRC_CACHE_DIR=off digest)
	# first run computes and caches, the second reads the cache: same digest
	export CIRC_CACHE_DIR="$T/cache"
	[ "$(digest)" = "$want" ]
	[ "$(ls "$T/cache" | wc -l)" -eq 1 ]
	[ "$(digest)" = "$want" ]
	# a planted wrong digest under the right key is what the cache would serve:
	# proves the cache is read (then restored)
	f=$(ls "$T/cache"/*)
	cp "$f" "$T/entry"
	sed -i "2s/.*/sha256:$(printf '%064d' 7)/" "$f"
	[ "$(digest)" = "sha256:$(printf '%064d' 7)" ]
	# garbage in an entry is ignored
	printf 'junk\n' >"$f"
	[ "$(digest)" = "$want" ]
	cp "$T/entry" "$f"
	# the file rewritten in place, same size, old modification time: another key
	python3 -c 'import sys; f=open(sys.argv[1],"r+b"); f.seek(-4,2); b=f.read(4); f.seek(-4,2); f.write(bytes(x^1 for x in b))' "$T/m/model.safetensors"
	touch -d '1 hour ago' "$T/m/model.safetensors"
	sleep 2.1 # the change time must be old enough for the cache to be trusted
	new=$(digest)
	[ "$new" != "$want" ]
	[ "$new" = "$(CIRC_CACHE_DIR=off digest)" ]
	# a file changed just now is not cached
	rm -rf "$T/cache"
	touch "$T/m/model.safetensors"
	digest >/dev/null
	[ ! -d "$T/cache" ] || [ "$(ls "$T/cache" | wc -l)" -eq 0 ]
}
