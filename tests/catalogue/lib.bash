# Shared by the bad-input catalogue's cases (tests/catalogue/*.cases): the
# fresh build on PATH, the tiny model, and makers of bad inputs.
export PATH="$ROOT/bin:$PATH"
export LC_ALL=C CIRC_NO_PROGRESS=1
TINY="$ROOT/tests/data/tiny/model"
TINYTOK="$ROOT/tests/data/tiny/tokens.jsonl"

# The tiny tokens stream with its header and the first n records (default all).
tiny_tokens() {
	if [ -n "${1:-}" ]; then head -n "$(($1 + 1))" "$TINYTOK"; else cat "$TINYTOK"; fi
}
