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
