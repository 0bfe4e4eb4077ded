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

# safety: the tiny model with finite but huge token embeddings (3e38: every
# sum over them overflows), in directory $1.
huge_model() {
	mkdir -p "$1"
	cp "$TINY/config.json" "$1/"
	python3 - "$TINY/model.safetensors" "$1/model.safetensors" <<'PY'
import json, struct, sys
b = bytearray(open(sys.argv[1], "rb").read())
n = struct.unpack("<Q", b[:8])[0]
lo, hi = json.loads(b[8:8 + n])["transformer.wte.weight"]["data_offsets"]
b[8 + n + lo:8 + n + hi] = struct.pack("<f", 3e38) * ((hi - lo) // 4)
open(sys.argv[2], "wb").write(b)
PY
}

# The tiny model's eap scores without their first n edges, with an end
# record that counts what is left (a filtered stream, not a cut one).
partial_scores() { # n
	circ-score --model "$TINY" --method eap --json "$TINYTOK" 2>/dev/null |
		awk -v n="$1" 'NR == 1 { print; next } /^\{"\$end"/ { next } NR > n + 1 { print; k++ }
			END { printf "{\"$end\":{\"records\":%d}}\n", k }'
}
# The same with only the first n edges left (none into the logits).
head_scores() { # n
	circ-score --model "$TINY" --method eap --json "$TINYTOK" 2>/dev/null | head -n "$(($1 + 1))"
	printf '{"$end":{"records":%d}}\n' "$1"
}

# dict: a small SAELens dictionary for the tiny model in directory $1
# (tests/ref/dict_ref.py make; further arguments override), then jq
# filter $2 applied to its cfg.json when given.
tiny_dict() {
	local d=$1 f=${2:-.}
	shift $(($# < 2 ? $# : 2))
	/usr/bin/python3 "$ROOT/tests/ref/dict_ref.py" make "$d" --arch standard \
		--hook blocks.0.hook_resid_pre --d-in 24 --d-sae 32 "$@" &&
		jq "$f" "$d/cfg.json" >"$d/cfg.new" && mv "$d/cfg.new" "$d/cfg.json"
}
