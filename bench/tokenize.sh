#!/bin/sh
# Tokenizer speed: circ-tokenize --text against js-tiktoken (gpt2) under node
# on the same multi-megabyte corpus (tests/js/gen_corpus.mjs: random words
# in several scripts with numbers and punctuation, so the piece cache keeps
# turning over). circ is timed end to end (process start, vocabulary load,
# reading, writing the ids); js-tiktoken only for encode() after a warm-up,
# which favours it. Both outputs are compared, then the ratio is printed.
#   bench/tokenize.sh [MEGABYTES]    (default 8)
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
