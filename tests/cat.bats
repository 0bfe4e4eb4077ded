#!/usr/bin/env bats
# circ-cat and the stream format as users meet it: round trips, sniffing,
# and every kind of bad input named in the foundation issue.
load helper

@test "cat --help lists its options and exits 0" {
	run --separate-stderr circ-cat --help
	assert_success
	assert_output --partial "--to-msgpack"
	assert_output --partial "--no-compress"
}

@test "a bad flag is a usage error (exit 2)" {
	run --separate-stderr circ-cat --nope
	assert_failure 2
	[[ "$stderr" == *"circ-cat: unknown option '--nope'"* ]]
}

@test "circ dispatches to tools and rejects unknown ones" {
	run --separate-stderr circ cat --version
	assert_success
	assert_output --partial "circ-cat "
	run --separate-stderr circ frobnicate
	assert_failure 2
	[[ "$stderr" == *"'frobnicate' is not a circ tool"* ]]
}

@test "JSON lines -> stream -> JSON lines is byte-identical" {
	cp tests/data/stream/roundtrip.jsonl "$T/a.jsonl"
	circ-cat --to-msgpack "$T/a.jsonl" >"$T/a.circ"
	circ-cat "$T/a.circ" >"$T/b.jsonl"
	cmp "$T/a.jsonl" "$T/b.jsonl"
}

@test "stream -> JSON lines -> stream is byte-identical, compressed or not" {
	circ-cat --to-msgpack tests/data/stream/roundtrip.jsonl >"$T/a.circ"
	circ-cat "$T/a.circ" | circ-cat --to-msgpack >"$T/b.circ"
	cmp "$T/a.circ" "$T/b.circ"
	circ-cat --to-msgpack --no-compress tests/data/stream/roundtrip.jsonl >"$T/p.circ"
	circ-cat "$T/p.circ" | circ-cat --to-msgpack --no-compress | cmp - "$T/p.circ"
}

@test "the stream is zstd by default and plain msgpack with --no-compress" {
	circ-cat --to-msgpack tests/data/stream/roundtrip.jsonl >"$T/a.circ"
	run zstd -t "$T/a.circ"
	assert_success
	circ-cat --to-msgpack --no-compress tests/data/stream/roundtrip.jsonl >"$T/p.circ"
	run zstd -t "$T/p.circ"
	assert_failure
	# A zstd-compressed JSON-lines file is read too.
	zstd -q -c tests/data/stream/roundtrip.jsonl >"$T/j.zst"
	run circ-cat "$T/j.zst"
	assert_success
	assert_output "$(cat tests/data/stream/roundtrip.jsonl)"
}

@test "JSON records without a header get a generic header" {
	run --separate-stderr bash -c 'printf "{\"a\":1}\n\n{\"a\":2}" | circ-cat'
	assert_success
	assert_line --index 0 '{"format":"circ","version":1,"kind":"records"}'
	assert_line --index 2 '{"a":2}'
}

@test "concatenated streams read as one (shards)" {
	mini_stream part | circ-cat --to-msgpack >"$T/a.circ"
	mini_stream part | sed '1s/}$/,"shard":1}/' | circ-cat --to-msgpack >"$T/b.circ"
	cat "$T/a.circ" "$T/b.circ" >"$T/ab.circ"
	run --separate-stderr circ-cat --no-header "$T/ab.circ"
	assert_success
	[ "${#lines[@]}" -eq 6 ]
	# the same stream twice (identical headers) would count its records twice
	cat "$T/a.circ" "$T/b.circ" "$T/a.circ" >"$T/aba.circ"
	run --separate-stderr circ-cat "$T/aba.circ"
	assert_failure 1
	[[ "$stderr" == *"aba.circ': record 7: concatenated stream repeats the header of part 1"* ]]
	mini_stream other | circ-cat --to-msgpack >"$T/c.circ"
	cat "$T/a.circ" "$T/c.circ" >"$T/ac.circ"
	run --separate-stderr circ-cat "$T/ac.circ"
	assert_failure 1
	[[ "$stderr" == *"record 4: concatenated stream of kind 'other' follows kind 'part'"* ]]
}

@test "binary output to a terminal is refused" {
	need_cmd script bsdutils
	run script -qec "circ-cat --to-msgpack $ROOT/tests/data/stream/roundtrip.jsonl" /dev/null
	assert_failure
	assert_output --partial "refusing to write a binary stream to a terminal"
}

@test "truncated zstd frame" {
	circ-cat --to-msgpack tests/data/stream/roundtrip.jsonl >"$T/a.circ"
	head -c 60 "$T/a.circ" >"$T/t.circ"
	run --separate-stderr circ-cat "$T/t.circ"
	assert_failure 1
	[[ "$stderr" == "circ-cat: '$T/t.circ': record "*": truncated zstd frame"* ]]
}

@test "truncated msgpack object" {
	circ-cat --to-msgpack --no-compress tests/data/stream/roundtrip.jsonl >"$T/p.circ"
	size=$(stat -c %s "$T/p.circ")
	head -c $((size - 30)) "$T/p.circ" >"$T/t.circ"
	run --separate-stderr circ-cat "$T/t.circ"
	assert_failure 1
	[[ "$stderr" == *"record 2: truncated msgpack object at end of input"* ]]
}

@test "a stream without its end record is reported incomplete" {
	# A writer that died between records: cut the plain stream just before the trailer.
	circ-cat --to-msgpack --no-compress tests/data/stream/roundtrip.jsonl >"$T/p.circ"
	size=$(stat -c %s "$T/p.circ")
	head -c $((size - 16)) "$T/p.circ" >"$T/t.circ"
	run --separate-stderr circ-cat "$T/t.circ"
	assert_failure 1
	[[ "$stderr" == *"stream ends without its end record"* ]]
}

@test "missing header" {
	printf '\x81\xa1a\x01' >"$T/nohdr.circ"
	run --separate-stderr circ-cat "$T/nohdr.circ"
	assert_failure 1
	assert_equal "$stderr" "circ-cat: '$T/nohdr.circ': record 0: missing header: the first record has no 'format' field"
}

@test "foreign header and unknown version" {
	echo '{"format":"hdf5","version":1,"kind":"x"}' >"$T/f.jsonl"
	run --separate-stderr circ-cat "$T/f.jsonl"
	assert_failure 1
	assert_equal "$stderr" "circ-cat: '$T/f.jsonl': record 0: foreign header: format is 'hdf5', not 'circ'"
	echo '{"format":"circ","version":7,"kind":"x"}' >"$T/v.jsonl"
	run --separate-stderr circ-cat "$T/v.jsonl"
	assert_failure 1
	assert_equal "$stderr" "circ-cat: '$T/v.jsonl': record 0: unknown stream version 7 (this circ reads version 1)"
}

@test "a record of the wrong kind" {
	mini_stream scores >"$T/s.jsonl"
	run --separate-stderr circ-cat --kind tokens "$T/s.jsonl"
	assert_failure 1
	assert_equal "$stderr" "circ-cat: '$T/s.jsonl': record 0: stream kind is 'scores', expected 'tokens'"
}

@test "a tensor whose shape needs more data than it has" {
	circ-cat --to-msgpack tests/data/stream/badlen.jsonl >"$T/b.circ" 2>/dev/null && false
	run --separate-stderr circ-cat --to-msgpack tests/data/stream/badlen.jsonl
	assert_failure 1
	[[ "$stderr" == *"record 1: field 't': tensor: shape needs 4 values, data has 3"* ]]
	# and in binary form, with the length declared by the shape
	run --separate-stderr circ-cat tests/data/stream/badlen.circ
	assert_failure 1
	[[ "$stderr" == *"record 1: "*"needs 16 bytes, data has 12"* ]]
}

@test "a declared length larger than the data" {
	# bin32 declaring 1 GiB, followed by 3 bytes
	printf '\x81\xa6format' >"$T/x"
	circ-cat --to-msgpack --no-compress <<<'{"format":"circ","version":1,"kind":"x"}' | head -c -10 >"$T/h.circ"
	{ cat "$T/h.circ"; printf '\x81\xa1b\xc6\x40\x00\x00\x00abc'; } >"$T/big.circ"
	run --separate-stderr circ-cat "$T/big.circ"
	assert_failure 1
	[[ "$stderr" == *"record 1: truncated msgpack object"* ]]
}

@test "malformed JSON and non-object lines" {
	printf '{"format":"circ","version":1,"kind":"x"}\n{"a":\n' >"$T/m.jsonl"
	run --separate-stderr circ-cat "$T/m.jsonl"
	assert_failure 1
	[[ "$stderr" == "circ-cat: '$T/m.jsonl': record 1: invalid JSON: "* ]]
	printf '{"a":1}\n[1,2]\n' >"$T/a.jsonl"
	run --separate-stderr circ-cat "$T/a.jsonl"
	assert_failure 1
	[[ "$stderr" == *"record 2: expected a JSON object per line"* ]]
}

@test "empty input and a missing file" {
	run --separate-stderr circ-cat /dev/null
	assert_failure 1
	assert_equal "$stderr" "circ-cat: '/dev/null': record 0: empty input (no header)"
	run --separate-stderr circ-cat "$T/nope"
	assert_failure 1
	assert_equal "$stderr" "circ-cat: '$T/nope': No such file or directory"
}

@test "output to a full disk fails, and -o leaves no partial file" {
	run --separate-stderr circ-cat tests/data/stream/roundtrip.jsonl -o /dev/full
	assert_failure 1
	run --separate-stderr bash -c 'circ-cat tests/data/stream/roundtrip.jsonl >/dev/full'
	assert_failure 1
	[[ "$stderr" == *"write error: No space left on device"* ]]
	head -c 60 tests/data/stream/roundtrip.jsonl >"$T/bad.jsonl"
	run --separate-stderr circ-cat --to-msgpack -o "$T/out.circ" "$T/bad.jsonl"
	assert_failure 1
	[ ! -e "$T/out.circ" ]
	[ -z "$(ls "$T" | grep tmp)" ]
}

@test "a closed pipe ends quietly" {
	{ mini_stream big; seq 1 50000 | sed 's/.*/{"i":&,"pad":"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"}/'; } |
		circ-cat --to-msgpack >"$T/big.circ"
	run --separate-stderr bash -c "circ-cat '$T/big.circ' | head -1"
	assert_success
	assert_equal "$stderr" ""
}

@test "hand-written JSON lines may give a plain array where a tensor is due (h13.22)" {
	circ-forward --model tests/data/tiny/model --json tests/data/tiny/tokens.jsonl >"$T/maps.jsonl"
	jq -c 'if .clean then .clean = .clean.data | .corrupt = .corrupt.data else . end' \
		tests/data/tiny/tokens.jsonl >"$T/plain.jsonl"
	grep -q '"clean":\[26,8,17,27,0,0,0\]' "$T/plain.jsonl"
	circ-forward --model tests/data/tiny/model --json "$T/plain.jsonl" >"$T/plain.out"
	cmp <(tail -n +2 "$T/maps.jsonl") <(tail -n +2 "$T/plain.out")
	# and through a binary stream, where the array stays an array
	circ-cat --to-msgpack "$T/plain.jsonl" | circ-forward --model tests/data/tiny/model --json >"$T/bin.out"
	cmp <(tail -n +2 "$T/maps.jsonl") <(tail -n +2 "$T/bin.out")
}

# Many small records that compress poorly, for several zstd blocks and more
# than one read-ahead of the reader (h13.17's read-ahead cases).
many_records() {
	echo '{"format":"circ","version":1,"kind":"x"}'
	awk 'BEGIN { srand(1); for (i = 1; i <= 30000; i++) printf "{\"i\":%d,\"pad\":\"%08x%08x\"}\n", i, rand() * 2^32, rand() * 2^32 }'
}

@test "a cut zstd stream names the record it cuts, not one read ahead (h13.17)" {
	many_records | circ-cat --to-msgpack >"$T/a.circ"
	size=$(stat -c %s "$T/a.circ")
	head -c $((size / 2)) "$T/a.circ" >"$T/t.circ"
	run --separate-stderr circ-cat "$T/t.circ"
	assert_failure 1
	# the records before the cut are shown; the next one is named
	n=${#lines[@]}
	[ "$n" -gt 1000 ]
	assert_equal "$stderr" "circ-cat: '$T/t.circ': record $n: truncated zstd frame (input ends inside a compressed frame)"
}

@test "corrupt zstd data names the record being read (h13.17)" {
	many_records | circ-cat --to-msgpack >"$T/a.circ"
	size=$(stat -c %s "$T/a.circ")
	cp "$T/a.circ" "$T/c.circ"
	# a wrong frame checksum (its last 4 bytes): zstd drops the last block with
	# it, so the records before that block are shown and the next one is named
	printf '\1\2\3\4' | dd of="$T/c.circ" bs=1 seek=$((size - 4)) conv=notrunc status=none
	run ! cmp -s "$T/a.circ" "$T/c.circ"
	run --separate-stderr circ-cat "$T/c.circ"
	assert_failure 1
	n=${#lines[@]}
	[ "$n" -gt 1000 ]
	assert_equal "$stderr" "circ-cat: '$T/c.circ': record $n: corrupt zstd data: Restored data doesn't match checksum"
}

@test "JSON lines end with the end record; a cut copy of a tool's output is incomplete (h13.5)" {
	circ-forward --model tests/data/tiny/model --json tests/data/tiny/tokens.jsonl >"$T/r.jsonl"
	assert_equal "$(tail -1 "$T/r.jsonl")" '{"$end":{"records":4}}'
	run --separate-stderr circ-cat "$T/r.jsonl"
	assert_success
	# cut at a line boundary: the header says a tool wrote it, so the end is required
	head -n 3 "$T/r.jsonl" >"$T/cut.jsonl"
	run --separate-stderr circ-cat "$T/cut.jsonl"
	assert_failure 1
	assert_equal "$stderr" "circ-cat: '$T/cut.jsonl': record 3: stream ends without its end record (incomplete: the writer did not finish)"
	# a count that disagrees
	{ head -n 5 "$T/r.jsonl"; echo '{"$end":{"records":5}}'; } >"$T/bad.jsonl"
	run --separate-stderr circ-cat "$T/bad.jsonl"
	assert_failure 1
	[[ "$stderr" == *"record 5: end record counts 5 records, stream has 4" ]]
	# a tool reading it says the same
	circ-score --model tests/data/tiny/model --method exact --json tests/data/tiny/tokens.jsonl | head -n 3 >"$T/s.jsonl"
	run --separate-stderr circ-prune --top-n 1 "$T/s.jsonl"
	assert_failure 1
	[[ "$stderr" == *"stream ends without its end record"* ]]
}

@test "hand-written JSON lines need no end record, and one given is checked (h13.5)" {
	mini_stream >"$T/h.jsonl"
	run --separate-stderr circ-cat --no-header "$T/h.jsonl"
	assert_success
	assert_output $'{"i":1}\n{"i":2}\n{"i":3}'
	{ mini_stream; echo '{"$end":{"records":2}}'; } >"$T/w.jsonl"
	run --separate-stderr circ-cat "$T/w.jsonl"
	assert_failure 1
	[[ "$stderr" == *"record 4: end record counts 2 records, stream has 3" ]]
	# a header with "tool" says a tool wrote it
	{ echo '{"format":"circ","version":1,"kind":"x","tool":"me"}'; echo '{"i":1}'; } >"$T/t.jsonl"
	run --separate-stderr circ-cat "$T/t.jsonl"
	assert_failure 1
	[[ "$stderr" == *"record 2: stream ends without its end record"* ]]
}

@test "concatenated JSON-lines shards: each part ends with its own end record (h13.5)" {
	circ-forward --model tests/data/tiny/model --json tests/data/tiny/tokens.jsonl >"$T/r.jsonl"
	# a second shard: another header (the same one twice is refused)
	circ-forward --model tests/data/tiny/model --json --batch 1 tests/data/tiny/tokens.jsonl >"$T/r2.jsonl"
	cat "$T/r.jsonl" "$T/r2.jsonl" >"$T/rr.jsonl"
	run --separate-stderr circ-cat --no-header "$T/rr.jsonl"
	assert_success
	[ "${#lines[@]}" -eq 8 ]
	{ head -n 3 "$T/r.jsonl"; cat "$T/r.jsonl"; } >"$T/cut.jsonl"
	run --separate-stderr circ-cat "$T/cut.jsonl"
	assert_failure 1
	[[ "$stderr" == *"record 3: the stream before this header ends without its end record"* ]]
}

@test "--header and --no-header print no end record; a whole copy round-trips (h13.5)" {
	circ-forward --model tests/data/tiny/model tests/data/tiny/tokens.jsonl >"$T/r.circ"
	run --separate-stderr circ-cat --header "$T/r.circ"
	assert_success
	[ "${#lines[@]}" -eq 1 ]
	run --separate-stderr circ-cat --no-header "$T/r.circ"
	assert_success
	[ "${#lines[@]}" -eq 4 ]
	[[ "$output" != *'$end'* ]]
	circ-cat "$T/r.circ" >"$T/r.jsonl"
	circ-cat --to-msgpack "$T/r.jsonl" | cmp - "$T/r.circ"
	circ-cat --to-msgpack "$T/r.jsonl" | circ-cat | cmp - "$T/r.jsonl"
}
