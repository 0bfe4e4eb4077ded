#!/usr/bin/env bats
# circ-tokenize: exactness against js-tiktoken's gpt2 encoding on the corpus
# in tests/data/tokenizer (plus generated long inputs and a sweep over every
# assigned code point), the plain and JSON text modes, decoding, dataset
# mode, and every bad input the issue names (message and exit code).
load helper

V=fixtures/gpt2-tokenizer
JS=tests/js
PY=/usr/bin/python3

need_js() {
	[ -d "$JS/node_modules/js-tiktoken" ] || {
		echo "tests/js/node_modules is missing: run 'make deps' (npm ci in tests/js)"
		return 1
	}
}

# Compares circ-tokenize and js-tiktoken on one file in --text and --json modes.
same_as_tiktoken() {
	local f=$1 special=${2:-}
	node "$JS/tiktoken_encode.mjs" $special --text "$f" >"$T/js.txt"
	circ-tokenize --vocab-dir $V --text $special "$f" >"$T/c.txt"
	cmp "$T/js.txt" "$T/c.txt" || { echo "--text differs on $f"; return 1; }
	jq -R . "$f" >"$T/lines.jsonl"
	node "$JS/tiktoken_encode.mjs" $special --json "$T/lines.jsonl" >"$T/js.jsonl"
	circ-tokenize --vocab-dir $V --text --json $special "$T/lines.jsonl" >"$T/c.jsonl"
	cmp "$T/js.jsonl" "$T/c.jsonl" || { echo "--text --json differs on $f"; return 1; }
}

@test "tokenize --help lists its options and exits 0" {
	run --separate-stderr circ-tokenize --help
	assert_success
	for f in --vocab-dir --model-dir --vocab-size --text --decode --special --prepend-bos --task --metric --skip-misaligned --json; do
		assert_output --partial -- "$f"
	done
}

@test "a bad flag, no vocabulary or two inputs are usage errors (exit 2)" {
	run --separate-stderr circ-tokenize --nope
	assert_failure 2
	[[ "$stderr" == *"circ-tokenize: unknown option '--nope'"* ]]
	run --separate-stderr circ-tokenize --text </dev/null
	assert_failure 2
	[[ "$stderr" == *"no vocabulary: give --vocab-dir"* ]]
	run --separate-stderr circ-tokenize --vocab-dir $V a b
	assert_failure 2
	run --separate-stderr circ-tokenize --vocab-dir $V --text --task ioi </dev/null
	assert_failure 2
	[[ "$stderr" == *"apply to dataset mode only"* ]]
	run --separate-stderr circ-tokenize --vocab-dir $V --metric nope </dev/null
	assert_failure 2
	[[ "$stderr" == *"'nope' is not logit_diff, prob_diff, logprob or kl"* ]]
}

@test "the GPT-2 vocabulary matches its pinned checksums" {
	run scripts/fetch-gpt2-vocab.sh --check
	assert_success
}

@test "exactness: every corpus file gives js-tiktoken's ids (text and JSON-lines modes)" {
	need_js
	for f in tests/data/tokenizer/*.txt; do
		same_as_tiktoken "$f"
	done
	# <|endoftext|> as the special token where asked
	same_as_tiktoken tests/data/tokenizer/numbers_punct.txt --special
}

@test "exactness: long pieces and a megabyte of random words" {
	need_js
	node $JS/gen_corpus.mjs long >"$T/long.txt"
	same_as_tiktoken "$T/long.txt"
	node $JS/gen_corpus.mjs words 1000000 >"$T/words.txt"
	node "$JS/tiktoken_encode.mjs" --text "$T/words.txt" >"$T/js.txt"
	circ-tokenize --vocab-dir $V --text "$T/words.txt" >"$T/c.txt"
	cmp "$T/js.txt" "$T/c.txt"
}

@test "exactness: every code point assigned in Unicode 14, in several contexts" {
	need_js
	node $JS/gen_corpus.mjs sweep tests/data/tokenizer/assigned-unicode14.ranges >"$T/sweep.txt"
	node "$JS/tiktoken_encode.mjs" --text "$T/sweep.txt" >"$T/js.txt"
	circ-tokenize --vocab-dir $V --text "$T/sweep.txt" >"$T/c.txt"
	cmp "$T/js.txt" "$T/c.txt"
}

@test "known ids, and --decode gives the text back" {
	run --separate-stderr bash -c "printf 'Hello world' | circ-tokenize --vocab-dir $V --text"
	assert_success
	assert_output "15496 995"
	printf 'Hello world\n' | circ-tokenize --vocab-dir $V --text | circ-tokenize --vocab-dir $V --decode >"$T/back"
	printf 'Hello world\n' | cmp - "$T/back"
	run --separate-stderr bash -c "printf '\"<|endoftext|>\"\n' | circ-tokenize --vocab-dir $V --text --json --special"
	assert_output "[50256]"
	run --separate-stderr bash -c "printf '\"<|endoftext|>\"\n' | circ-tokenize --vocab-dir $V --text --json"
	assert_output "[27,91,437,1659,5239,91,29]"
}

@test "round trip on every corpus file and on invalid UTF-8 (bytes are bytes)" {
	for f in tests/data/tokenizer/*.txt; do
		circ-tokenize --vocab-dir $V --text "$f" | circ-tokenize --vocab-dir $V --decode | cmp - "$f"
	done
	printf 'ok \xff\xfe bad \xc3 cut \xed\xa0\x80 surrogate \xc0\xaf overlong\n\xe2\x82' >"$T/bad.bin"
	circ-tokenize --vocab-dir $V --text "$T/bad.bin" | circ-tokenize --vocab-dir $V --decode | cmp - "$T/bad.bin"
}

@test "--decode --json writes one JSON string per line" {
	run --separate-stderr bash -c "printf '[15496,198,6894]\n[]\n' | circ-tokenize --vocab-dir $V --decode --json"
	assert_success
	assert_line --index 0 '"Hello\nworld"'
	assert_line --index 1 '""'
}

@test "--decode rejects unknown ids and non-integers (exit 1)" {
	run --separate-stderr bash -c "echo '15496 99999' | circ-tokenize --vocab-dir $V --decode"
	assert_failure 1
	[[ "$stderr" == *"token 1: id 99999 is not in the vocabulary"* ]]
	run --separate-stderr bash -c "echo '15496 x1' | circ-tokenize --vocab-dir $V --decode"
	assert_failure 1
	[[ "$stderr" == *"token 1: 'x1' is not an integer id"* ]]
	run --separate-stderr bash -c "echo '[1,\"a\"]' | circ-tokenize --vocab-dir $V --decode --json"
	assert_failure 1
	[[ "$stderr" == *"line 1: item 1 is not a token id"* ]]
}

@test "--text --json rejects a line that is not a JSON string" {
	run --separate-stderr bash -c "printf '\"ok\"\n[1]\n' | circ-tokenize --vocab-dir $V --text --json"
	assert_failure 1
	[[ "$stderr" == *"'<stdin>': line 2: expected a JSON string"* ]]
}

@test "empty input: an empty line of ids, and a tokens stream with no records" {
	run --separate-stderr circ-tokenize --vocab-dir $V --text </dev/null
	assert_success
	assert_output ""
	run --separate-stderr circ-tokenize --vocab-dir $V --json </dev/null
	assert_success
	assert_line --index 0 --partial '"kind":"tokens"'
	assert_line --index 0 --partial '"task":"custom","metric":"logit_diff"'
	assert_line --index 0 --partial '"n_examples":0'
	assert_line --index 1 '{"$end":{"records":0}}'
	[ "${#lines[@]}" -eq 2 ]
}

@test "unreadable vocabulary: missing directory or file, malformed JSON (exit 1)" {
	run --separate-stderr circ-tokenize --vocab-dir "$T/none" --text </dev/null
	assert_failure 1
	[[ "$stderr" == *"'$T/none': no tokenizer there (expected tokenizer.json, or vocab.json and merges.txt)"* ]]
	mkdir "$T/v"
	cp $V/vocab.json "$T/v/"
	run --separate-stderr circ-tokenize --vocab-dir "$T/v" --text </dev/null
	assert_failure 1
	[[ "$stderr" == *"'$T/v/merges.txt': No such file or directory"* ]]
	printf '{"a": 0,' >"$T/v/vocab.json"
	printf '#version: 0.2\n' >"$T/v/merges.txt"
	run --separate-stderr circ-tokenize --vocab-dir "$T/v" --text </dev/null
	assert_failure 1
	[[ "$stderr" == *"'$T/v/vocab.json': line 1: invalid JSON"* ]]
}

@test "vocabulary and merges that disagree are refused, naming the merge (exit 1)" {
	mkdir "$T/v"
	printf '{"a":0,"b":1,"c":2,"ab":3}' >"$T/v/vocab.json"
	printf '#version: 0.2\na b\nb c\n' >"$T/v/merges.txt"
	run --separate-stderr circ-tokenize --vocab-dir "$T/v" --text </dev/null
	assert_failure 1
	[[ "$stderr" == *"'$T/v/merges.txt': line 3: 'b c': the merged token 'bc' is not in the vocabulary"* ]]
	printf '#version: 0.2\na z\n' >"$T/v/merges.txt"
	run --separate-stderr circ-tokenize --vocab-dir "$T/v" --text </dev/null
	assert_failure 1
	[[ "$stderr" == *"line 2: 'a z': 'z' is not in the vocabulary"* ]]
	printf '#version: 0.2\nab\n' >"$T/v/merges.txt"
	run --separate-stderr circ-tokenize --vocab-dir "$T/v" --text </dev/null
	assert_failure 1
	[[ "$stderr" == *"line 2: expected two tokens separated by one space"* ]]
}

@test "a text with a byte the vocabulary lacks is refused (exit 1)" {
	mkdir "$T/v"
	printf '{"a":0,"b":1}' >"$T/v/vocab.json"
	printf '#version: 0.2\n' >"$T/v/merges.txt"
	run --separate-stderr bash -c "printf 'abc' | circ-tokenize --vocab-dir '$T/v' --text"
	assert_failure 1
	[[ "$stderr" == *"byte 0x63 has no token in the vocabulary"* ]]
}

@test "tokenizer.json alone is loaded (Hugging Face format)" {
	mkdir "$T/tj"
	node -e '
	const v = require(process.argv[1] + "/vocab.json");
	const m = require("fs").readFileSync(process.argv[1] + "/merges.txt", "utf8").split("\n").slice(1).filter(Boolean);
	process.stdout.write(JSON.stringify({model: {type: "BPE", vocab: v, merges: m},
	  pre_tokenizer: {type: "ByteLevel", add_prefix_space: false},
	  added_tokens: [{id: 50256, content: "<|endoftext|>", special: true}]}));' "$ROOT/$V" >"$T/tj/tokenizer.json"
	run --separate-stderr circ-tokenize --model-dir "$T/tj" --text tests/data/tokenizer/prose.txt
	assert_success
	[ "$output" = "$(circ-tokenize --vocab-dir $V --text tests/data/tokenizer/prose.txt)" ]
}

@test "dataset mode: a golden example" {
	printf '%s\n' '{"clean":"When Mary and John went to the store, John gave a drink to","corrupt":"When Alice and Bob went to the store, Carl gave a drink to","answer":" Mary","wrong":" John","meta":{"k":[1,"x"]}}' >"$T/d.jsonl"
	run --separate-stderr circ-tokenize --vocab-dir $V --json --task ioi "$T/d.jsonl"
	assert_success
	assert_line --index 0 --partial '"task":"ioi","metric":"logit_diff"'
	assert_line --index 0 --partial '"n_examples":1'
	assert_line --index 0 --partial '"seq_len":14'
	assert_line --index 0 --partial "\"dataset_digest\":\"sha256:$(sha256sum "$T/d.jsonl" | cut -c1-64)\""
	assert_line --index 1 '{"id":0,"clean":{"dtype":"i32","shape":[14],"data":[2215,5335,290,1757,1816,284,262,3650,11,1757,2921,257,4144,284]},"corrupt":{"dtype":"i32","shape":[14],"data":[2215,14862,290,5811,1816,284,262,3650,11,8124,2921,257,4144,284]},"pos":13,"answer":[5335],"wrong":[1757],"meta":{"k":[1,"x"]}}'
}

@test "dataset mode: ids, positions, answer sets and --prepend-bos" {
	printf '%s\n' '{"clean_ids":[5,6,7,5,6],"corrupt_ids":[8,9,10,5,6],"pos":[3,4],"answer_ids":[6,7],"metric":"logprob"}' >"$T/d.jsonl"
	run --separate-stderr circ-tokenize --vocab-dir $V --json --prepend-bos "$T/d.jsonl"
	assert_success
	assert_line --index 0 --partial '"metric":"logprob"'
	assert_line --index 0 --partial '"prepend_bos":true'
	assert_line --index 1 '{"id":0,"clean":{"dtype":"i32","shape":[6],"data":[50256,5,6,7,5,6]},"corrupt":{"dtype":"i32","shape":[6],"data":[50256,8,9,10,5,6]},"pos":[4,5],"answer":[6,7],"wrong":[]}'
	printf '%s\n' '{"clean":"The war lasted from the year 1732 to the year 17","corrupt":"The war lasted from the year 1701 to the year 17","answer":["33","99"],"wrong":["00","32"],"metric":"prob_diff"}' >"$T/g.jsonl"
	run --separate-stderr circ-tokenize --vocab-dir $V --json "$T/g.jsonl"
	assert_success
	assert_line --index 1 --partial '"pos":11,"answer":[2091,2079],"wrong":[405,2624]}'
}

@test "the binary tokens stream validates against schemas/tokens.schema.json" {
	circ-dataset ioi --n 5 | circ-tokenize --vocab-dir $V -o "$T/t.circ"
	circ-cat "$T/t.circ" | $PY tests/validate.py schemas/tokens.schema.json
	circ-dataset induction --n 3 | circ-tokenize --vocab-dir $V --prepend-bos | circ-cat | $PY tests/validate.py schemas/tokens.schema.json
}

@test "bad dataset: malformed JSON line (exit 1, names the line)" {
	printf '%s\n' '{"clean":"a","corrupt":"b","answer":" c","wrong":" d"}' '{"clean": "a",' >"$T/d.jsonl"
	run --separate-stderr circ-tokenize --vocab-dir $V "$T/d.jsonl"
	assert_failure 1
	[[ "$stderr" == "circ-tokenize: '$T/d.jsonl': line 2: malformed JSON: "* ]]
	run --separate-stderr bash -c "echo '[1,2]' | circ-tokenize --vocab-dir $V"
	assert_failure 1
	[[ "$stderr" == *"'<stdin>': line 1: expected a JSON object, got an array"* ]]
}

@test "bad dataset: missing field (exit 1)" {
	run --separate-stderr bash -c "echo '{\"clean\":\"a b\",\"answer\":\" c\",\"wrong\":\" d\"}' | circ-tokenize --vocab-dir $V"
	assert_failure 1
	[[ "$stderr" == *"'<stdin>': line 1: missing field 'corrupt'"* ]]
	run --separate-stderr bash -c "echo '{\"clean\":\"a b\",\"corrupt\":\"c d\",\"wrong\":\" d\"}' | circ-tokenize --vocab-dir $V"
	assert_failure 1
	[[ "$stderr" == *"line 1: missing field 'answer'"* ]]
	run --separate-stderr bash -c "echo '{\"clean\":\"a b\",\"corrupt\":\"c d\",\"answer\":\" d\"}' | circ-tokenize --vocab-dir $V"
	assert_failure 1
	[[ "$stderr" == *"line 1: missing field 'wrong' (metric logit_diff needs wrong answers)"* ]]
}

@test "bad dataset: multi-token answer (exit 1, names the line and the tokens)" {
	printf '%s\n' '{"clean":"Then Mary and John","corrupt":"Then Anna and Bob","answer":" Maryland'"'"'s","wrong":" John"}' >"$T/d.jsonl"
	run --separate-stderr circ-tokenize --vocab-dir $V "$T/d.jsonl"
	assert_failure 1
	[[ "$stderr" == "circ-tokenize: '$T/d.jsonl': line 1: answer ' Maryland's' is 2 tokens ([10769, 338]), not 1"* ]]
}

@test "bad dataset: misaligned pair (exit 1), or skipped and counted with --skip-misaligned" {
	printf '%s\n' \
		'{"clean":"When Mary and John went","corrupt":"When Mary and Johnathan went","answer":" Mary","wrong":" John"}' \
		'{"clean":"When Mary and John went","corrupt":"When Anna and Bob went","answer":" Mary","wrong":" John"}' \
		'{"clean":"When Mary and John went","corrupt":"When Mary and Johnathan went","answer":" Mary","wrong":" John"}' >"$T/d.jsonl"
	run --separate-stderr circ-tokenize --vocab-dir $V "$T/d.jsonl"
	assert_failure 1
	[[ "$stderr" == "circ-tokenize: '$T/d.jsonl': line 1: clean and corrupt tokenize to different lengths (5 and 6)"* ]]
	run --separate-stderr circ-tokenize --vocab-dir $V --json --skip-misaligned "$T/d.jsonl"
	assert_success
	[[ "$stderr" == "circ-tokenize: '$T/d.jsonl': skipped 2 misaligned examples of 3"* ]]
	assert_line --index 0 --partial '"n_examples":1,"n_skipped":2'
	assert_line --index 1 --partial '{"id":1,'
}

@test "bad dataset: positions out of range, metric disagreement, answers per position" {
	run --separate-stderr bash -c "echo '{\"clean_ids\":[1,2],\"corrupt_ids\":[3,4],\"pos\":2,\"answer_ids\":5,\"metric\":\"logprob\"}' | circ-tokenize --vocab-dir $V"
	assert_failure 1
	[[ "$stderr" == *"line 1: field 'pos': 2 is not a position in 0..1"* ]]
	run --separate-stderr bash -c "echo '{\"clean_ids\":[1,2],\"corrupt_ids\":[3,4],\"pos\":[0,1],\"answer_ids\":5,\"metric\":\"logprob\"}' | circ-tokenize --vocab-dir $V"
	assert_failure 1
	[[ "$stderr" == *"line 1: 2 positions but 1 answers (one answer per position)"* ]]
	run --separate-stderr bash -c "echo '{\"clean_ids\":[1,2],\"corrupt_ids\":[3,4],\"answer_ids\":5,\"metric\":\"logprob\"}' | circ-tokenize --vocab-dir $V --metric kl"
	assert_failure 1
	[[ "$stderr" == *"line 1: metric 'logprob' differs from --metric 'kl'"* ]]
	run --separate-stderr bash -c "echo '{\"clean_ids\":[1,99999],\"corrupt_ids\":[3,4],\"answer_ids\":5,\"metric\":\"logprob\"}' | circ-tokenize --vocab-dir $V"
	assert_failure 1
	[[ "$stderr" == *"line 1: field 'clean_ids': item 1 is not a token id of this vocabulary"* ]]
}

@test "output to a full device is an error (exit 1)" {
	run --separate-stderr bash -c "circ-tokenize --vocab-dir $V --text tests/data/tokenizer/prose.txt >/dev/full"
	assert_failure 1
	run --separate-stderr bash -c "circ-dataset ioi --n 3 | circ-tokenize --vocab-dir $V --json >/dev/full"
	assert_failure 1
}

@test "--text streams: memory does not grow with the input" {
	need_cmd /usr/bin/time time
	head -c 1000000 /dev/zero | tr '\0' 'x' | sed 's/x\{20\}/& /g' >"$T/small.txt"
	for i in 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16; do cat "$T/small.txt"; done >"$T/big.txt"
	/usr/bin/time -f %M circ-tokenize --vocab-dir $V --text "$T/small.txt" 2>"$T/m1" >/dev/null
	/usr/bin/time -f %M circ-tokenize --vocab-dir $V --text "$T/big.txt" 2>"$T/m2" >/dev/null
	m1=$(tail -1 "$T/m1") m2=$(tail -1 "$T/m2")
	echo "max RSS: 1 MB input ${m1} KB, 16 MB input ${m2} KB"
	[ "$m2" -lt $((m1 + 4096)) ]
	# h13.12: one 4 MB word (no break) costs under 12 bytes a byte (9.5 at
	# most, the man page says; 31 before), and decodes back to itself.
	# AddressSanitizer's shadow and quarantine add about 5.
	local per=12
	ldd "$(command -v circ-tokenize)" | grep -q libasan && per=17
	tr -dc a-z </dev/urandom | head -c 4000000 >"$T/word.txt"
	head -c 4000000 /dev/zero | tr '\0' '7' >"$T/digits.txt"
	for f in word digits; do
		/usr/bin/time -f %M circ-tokenize --vocab-dir $V --text "$T/$f.txt" 2>"$T/m3" >"$T/$f.ids"
		m3=$(tail -1 "$T/m3")
		echo "max RSS: 4 MB $f ${m3} KB (bound $((m1 + 4000000 * per / 1024)) KB)"
		[ "$m3" -lt $((m1 + 4000000 * per / 1024)) ]
	done
	circ-tokenize --vocab-dir $V --decode "$T/word.ids" | cmp - "$T/word.txt"
	[ "$(wc -w <"$T/digits.ids")" -eq 2000000 ] # "77" is the longest run of 7s in GPT-2
}

@test "h13.12: a vocabulary id far beyond the entries is refused before allocating" {
	mkdir "$T/v"
	printf '{"a":0,"b":2147483646}' >"$T/v/vocab.json"
	printf '#version: 0.2\n' >"$T/v/merges.txt"
	run --separate-stderr circ-tokenize --vocab-dir "$T/v" --text </dev/null
	assert_failure 1
	[[ "$stderr" == *"'$T/v/vocab.json': token 'b': id 2147483646 is far beyond the 2 tokens given (ids must be below 1028)"* ]]
	mkdir "$T/tj"
	printf '{"model":{"type":"BPE","vocab":{"a":0},"merges":[]},"added_tokens":[{"id":2147483000,"content":"x"}]}' >"$T/tj/tokenizer.json"
	run --separate-stderr circ-tokenize --vocab-dir "$T/tj" --text </dev/null
	assert_failure 1
	[[ "$stderr" == *"'$T/tj/tokenizer.json': added_tokens[0]: id 2147483000 is far beyond the 2 tokens given (ids must be below 1028)"* ]]
}

@test "h13.12: a tokenizer.json with 100,000 added tokens loads, and finds its specials, in linear time" {
	mkdir "$T/tj"
	$PY -c '
import json
n = 100000
added = [{"id": 1 + i, "content": "<|t%d|>" % i, "special": i % 2 == 0} for i in range(n)]
print(json.dumps({"model": {"type": "BPE", "vocab": {"a": 0}, "merges": []}, "added_tokens": added}))' >"$T/tj/tokenizer.json"
	run --separate-stderr timeout 10 bash -c "printf '[1,100000,2]' | circ-tokenize --vocab-dir '$T/tj' --decode --json"
	assert_success
	assert_output '"<|t0|><|t99999|><|t1|>"'
	run --separate-stderr timeout 10 bash -c "printf '\"a<|t4|>a<|t6|>\"' | circ-tokenize --vocab-dir '$T/tj' --text --json --special"
	assert_success
	assert_output '[0,5,0,7]'
	# and finding them in text costs the same however many there are
	$PY -c 'import sys; sys.stdout.write("a<|t4|><|t99998|>" * 20000)' >"$T/many.txt"
	run --separate-stderr timeout 10 circ-tokenize --vocab-dir "$T/tj" --text --special "$T/many.txt"
	assert_success
	[ "$(echo "$output" | wc -w)" -eq 60000 ]
	[[ "$output" == "0 5 99999 0 5 99999 "* ]]
}

@test "h13.10: conflicting or ignored options are usage errors (exit 2)" {
	run --separate-stderr circ-tokenize --vocab-dir $V --text --decode </dev/null
	assert_failure 2
	[[ "$stderr" == *"circ-tokenize: --text and --decode cannot be combined (one mode at a time)"* ]]
	run --separate-stderr circ-tokenize --vocab-dir $V --decode --special </dev/null
	assert_failure 2
	[[ "$stderr" == *"--special applies to text (--text and dataset mode), not to --decode"* ]]
	for o in --no-compress "--compress-level 9" --force; do
		run --separate-stderr circ-tokenize --vocab-dir $V --text $o </dev/null
		assert_failure 2
		[[ "$stderr" == *"--no-compress, --compress-level and --force apply to dataset mode only"* ]]
	done
	run --separate-stderr circ-tokenize --vocab-dir $V --text --vocab-size 10 </dev/null
	assert_failure 2
	[[ "$stderr" == *"--prepend-bos, --no-bos, --task, --metric, --vocab-size and --skip-misaligned apply to dataset mode only"* ]]
	run --separate-stderr circ-tokenize --vocab-dir $V --model-dir $V --text </dev/null
	assert_failure 2
	[[ "$stderr" == *"--vocab-dir and --model-dir: give one tokenizer directory"* ]]
	run --separate-stderr circ-tokenize --vocab-dir $V --vocab-dir $V --text </dev/null
	assert_failure 2
	[[ "$stderr" == *"option '--vocab-dir' given twice"* ]]
	run --separate-stderr circ-tokenize --vocab-size 0 </dev/null
	assert_failure 2
	[[ "$stderr" == *"option '--vocab-size'"* ]]
}

@test "h13.17: a negative position has its own message; others name the value" {
	run --separate-stderr bash -c "echo '{\"clean_ids\":[1,2],\"corrupt_ids\":[3,4],\"pos\":-1,\"answer_ids\":5,\"metric\":\"logprob\"}' | circ-tokenize --vocab-dir $V"
	assert_failure 1
	[[ "$stderr" == *"'<stdin>': line 1: field 'pos': -1 is negative (positions count from 0: 0..1)"* ]]
	run --separate-stderr bash -c "echo '{\"clean_ids\":[1,2],\"corrupt_ids\":[3,4],\"pos\":[0,-3],\"answer_ids\":[5,6],\"metric\":\"logprob\"}' | circ-tokenize --vocab-dir $V"
	assert_failure 1
	[[ "$stderr" == *"line 1: field 'pos': item 1: -3 is negative (positions count from 0: 0..1)"* ]]
	run --separate-stderr bash -c "echo '{\"clean_ids\":[1,2],\"corrupt_ids\":[3,4],\"pos\":[0,\"1\"],\"answer_ids\":[5,6],\"metric\":\"logprob\"}' | circ-tokenize --vocab-dir $V"
	assert_failure 1
	[[ "$stderr" == *"line 1: field 'pos': item 1 is not an integer"* ]]
	run --separate-stderr bash -c "echo '{\"clean_ids\":[1,2],\"corrupt_ids\":[3,4],\"pos\":1.5,\"answer_ids\":5,\"metric\":\"logprob\"}' | circ-tokenize --vocab-dir $V"
	assert_failure 1
	[[ "$stderr" == *"line 1: field 'pos' must be an integer or an array of integers"* ]]
	run --separate-stderr bash -c "echo '{\"clean_ids\":[1,2],\"corrupt_ids\":[3,4],\"pos\":-1,\"answer_ids\":5,\"metric\":\"logprob\"}' | circ-tokenize --vocab-dir $V --prepend-bos"
	assert_failure 1
	[[ "$stderr" == *"line 1: field 'pos': -1 is negative (positions count from 0: 0..1)"* ]]
}

@test "h13.19: id input needs no vocabulary; the vocab size is --vocab-size's or the model's" {
	printf '%s\n' '{"clean_ids":[1,2,3],"corrupt_ids":[4,5,6],"answer_ids":7,"wrong_ids":[8]}' >"$T/d.jsonl"
	run --separate-stderr circ-tokenize --json "$T/d.jsonl"
	assert_success
	refute_line --index 0 --partial 'vocab_size'
	refute_line --index 0 --partial 'vocab_digest'
	assert_line --index 1 '{"id":0,"clean":{"dtype":"i32","shape":[3],"data":[1,2,3]},"corrupt":{"dtype":"i32","shape":[3],"data":[4,5,6]},"pos":2,"answer":[7],"wrong":[8]}'
	circ-tokenize "$T/d.jsonl" | circ-cat | $PY tests/validate.py schemas/tokens.schema.json
	run --separate-stderr circ-tokenize --json --vocab-size 64 "$T/d.jsonl"
	assert_success
	assert_line --index 0 --partial '"vocab_size":64'
	run --separate-stderr circ-tokenize --vocab-size 8 "$T/d.jsonl"
	assert_failure 1
	[[ "$stderr" == *"'$T/d.jsonl': line 1: field 'wrong_ids': item 0: id 8 is not below the vocab size 8 (--vocab-size)"* ]]
	# a model directory: config.json gives the size, tokenizer files or not
	run --separate-stderr circ-tokenize --json --model-dir tests/data/tiny/model "$T/d.jsonl"
	assert_success
	assert_line --index 0 --partial '"vocab_size":40'
	printf '%s\n' '{"clean_ids":[1,2,3],"corrupt_ids":[4,5,40],"answer_ids":7,"wrong_ids":[8]}' >"$T/e.jsonl"
	run --separate-stderr circ-tokenize --model-dir tests/data/tiny/model "$T/e.jsonl"
	assert_failure 1
	[[ "$stderr" == *"line 1: field 'corrupt_ids': item 2: id 40 is not below the vocab size 40 ('tests/data/tiny/model/config.json')"* ]]
	run --separate-stderr circ-tokenize --model-dir tests/data/tiny/model --vocab-size 64 "$T/d.jsonl"
	assert_failure 2
	[[ "$stderr" == *"option '--vocab-size': 64 differs from vocab_size 40 in 'tests/data/tiny/model/config.json'"* ]]
	# a tokenizer's ids checked against a smaller model
	mkdir "$T/m"
	cp $V/vocab.json $V/merges.txt "$T/m/"
	sed 's/"vocab_size": 40/"vocab_size": 64/' tests/data/tiny/model/config.json >"$T/m/config.json"
	echo '{"clean":"a b","corrupt":"a c","answer":" x","wrong":" y"}' >"$T/t.jsonl"
	run --separate-stderr circ-tokenize --model-dir "$T/m" "$T/t.jsonl"
	assert_failure 1
	[[ "$stderr" == *"line 1: field 'clean': id 64 is not below the vocab size 64 ('$T/m/config.json')"* ]]
	# text needs a tokenizer; so does --prepend-bos
	run --separate-stderr circ-tokenize "$T/t.jsonl"
	assert_failure 2
	[[ "$stderr" == *"'$T/t.jsonl': line 1: field 'clean' is text: give --vocab-dir DIR to tokenize it"* ]]
	run --separate-stderr circ-tokenize --model-dir tests/data/tiny/model "$T/t.jsonl"
	assert_failure 1
	[[ "$stderr" == *"no tokenizer there"* ]]
	run --separate-stderr circ-tokenize --prepend-bos "$T/d.jsonl"
	assert_failure 2
	[[ "$stderr" == *"--prepend-bos needs the tokenizer's <|endoftext|>: give --vocab-dir DIR"* ]]
	# with a tokenizer and no size given, the tokenizer's size as before
	run --separate-stderr circ-tokenize --json --vocab-dir $V "$T/d.jsonl"
	assert_success
	assert_line --index 0 --partial '"vocab_size":50257'
}
