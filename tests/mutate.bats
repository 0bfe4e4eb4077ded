#!/usr/bin/env bats
# Bad input, structurally: seeded mutants of every kind of stream the tools
# read (tests/mutate.py: fields removed, values of the wrong type or range,
# strings cut, records removed, repeated or moved) through the commands that
# read them. Each mutant is accepted or refused with a message and status 1
# or 2; never a signal, a silent failure or (in make check's sanitized run)
# a sanitizer's report. The record readers of lib/ are also fuzzed
# (tests/fuzz/fuzz_records.c); these reach the parsers that live in the
# tools (feature graphs, attribution graphs, dashboards' activations).
load helper

M=tests/data/tiny/model
TOK=tests/data/tiny/tokens.jsonl
DREF=tests/ref/dict_ref.py
IT=fixtures/induction-trained
MUT="/usr/bin/python3 tests/mutate.py"

dicts() {
	/usr/bin/python3 $DREF make "$T/set/a" --arch topk --k 4 --hook blocks.0.hook_mlp_out --d-in 24 --d-sae 12 --seed 11
	/usr/bin/python3 $DREF make "$T/set/b" --arch standard --hook blocks.0.hook_resid_post --d-in 24 --d-sae 12 --seed 12
}

@test "mutate.py can fail: a command killed by a signal, one failing silently, one exiting 3" {
	run $MUT 1 3 $TOK "$T" -- sh -c 'kill -SEGV $$' @
	[ "$status" -eq 3 ] && [[ "$output" == *"signal 11"* ]]
	ls "$T"/mutant-1-*.jsonl
	run $MUT 1 2 $TOK "$T" -- sh -c 'exit 1' @
	[ "$status" -eq 2 ] && [[ "$output" == *"a failure without a message"* ]]
	run $MUT 1 1 $TOK "$T" -- sh -c 'echo x >&2; exit 3' @
	[ "$status" -eq 1 ] && [[ "$output" == *"exit status 3"* ]]
	run $MUT 1 1 $TOK "$T" -- sh -c 'echo "x.c:1:2: runtime error: y" >&2' @
	[ "$status" -eq 1 ] && [[ "$output" == *"a sanitizer's report"* ]]
	# the same seed gives the same mutants
	$MUT 5 4 $TOK "$T" -- sh -c 'cp "$0" "$0.kept"; exit 0' @
	mkdir "$T/b"
	$MUT 5 4 $TOK "$T/b" -- sh -c 'cp "$0" "$0.kept"; exit 0' @
	for i in 0 1 2 3; do cmp "$T/mutant-5-$i.jsonl.kept" "$T/b/mutant-5-$i.jsonl.kept"; done
	run ! cmp -s "$T/mutant-5-0.jsonl.kept" $TOK
}

@test "mutated tokens: circ-forward, circ-score (eap-ig, feature-atp), circ-harvest, circ-prune (ACDC, CD-T)" {
	dicts
	$MUT 21 60 $TOK "$T" -- circ-forward --model $M -o "$T/o" @
	$MUT 22 60 $TOK "$T" -- circ-score --model $M --method eap-ig -o "$T/o" @
	$MUT 23 40 $TOK "$T" -- circ-score --model $M --dict "$T/set" --method feature-atp -o "$T/o" @
	$MUT 24 40 $TOK "$T" -- circ-prune --acdc --model $M --tau 0.01 -o "$T/o" @
	$MUT 25 40 $TOK "$T" -- circ-harvest --model $M --dict "$T/set" -o "$T/o" @
	$MUT 26 30 $TOK "$T" -- circ-prune --cd-t 10 --model $M -o "$T/o" @
}

@test "mutated scores, circuits and curves: circ-prune, circ-render (text, DOT, JSON, SVG), circ-patch (circuits, curves)" {
	circ-score --model $M -o "$T/s.circ" $TOK
	circ-cat "$T/s.circ" >"$T/s.jsonl"
	circ-prune --top-n 10 --json -o "$T/c.jsonl" "$T/s.circ" 2>/dev/null
	$MUT 31 60 "$T/s.jsonl" "$T" -- circ-prune --top-n 5 -o "$T/o" @
	$MUT 32 60 "$T/s.jsonl" "$T" -- circ-prune --threshold 0.01 -o "$T/o" @
	$MUT 33 60 "$T/c.jsonl" "$T" -- circ-render --format dot -o "$T/o" @
	$MUT 34 40 "$T/c.jsonl" "$T" -- circ-render --format json -o "$T/o" @
	$MUT 35 60 "$T/c.jsonl" "$T" -- circ-patch --model $M --circuit @ -o "$T/o" $TOK
	$MUT 38 40 "$T/s.jsonl" "$T" -- circ-patch --model $M --curve @ -o "$T/o" $TOK
	$MUT 36 40 tests/data/prune/curve.jsonl "$T" -- circ-render --format curve-svg -o "$T/o" @
	$MUT 37 40 tests/data/prune/curve.jsonl "$T" -- circ-render --curve @ -o "$T/o" "$T/c.jsonl"
}

@test "mutated feature graphs and activations: circ-render's pages and dashboards; a score that is not sum / count" {
	dicts
	circ-score --model $M --dict "$T/set" --method feature-atp -o "$T/fs.circ" $TOK
	circ-prune --top-n 15 --json -o "$T/fc.jsonl" "$T/fs.circ"
	circ-cat "$T/fs.circ" >"$T/fs.jsonl"
	circ-score --model $M -o "$T/s.circ" $TOK
	circ-cat "$T/s.circ" >"$T/s.jsonl"
	circ-trace --model $IT --dict $IT/transcoders --tokens 153,191,26,106,187,153,191,26 \
		-o "$T/g.circ" --slug ind
	circ-cat "$T/g.circ" >"$T/g.jsonl"
	circ-harvest --model $M --dict "$T/set" --json -o "$T/acts.jsonl" $TOK
	$MUT 41 60 "$T/fc.jsonl" "$T" -- circ-render --format html -o "$T/o" @
	$MUT 42 40 "$T/fs.jsonl" "$T" -- circ-prune --top-n 10 -o "$T/o" @
	# a record whose score is not its sum / count (the readers use one where
	# merged shards use the other): refused, naming the record
	jq -c 'if .sum then .score = .score * 2 else . end' "$T/fs.jsonl" >"$T/bad.jsonl"
	run --separate-stderr circ-prune --top-n 10 -o "$T/o" "$T/bad.jsonl"
	[ "$status" -eq 1 ] && [[ "$stderr" == *"record 1: field 'score': "*" is not sum / count ("* ]]
	jq -c 'if .sum then .score = .score * 2 else . end' "$T/s.jsonl" >"$T/bad.jsonl"
	run --separate-stderr circ-prune --top-n 10 -o "$T/o" "$T/bad.jsonl"
	[ "$status" -eq 1 ] && [[ "$stderr" == *"record 1: field 'score': "*" is not sum / count ("* ]]
	$MUT 43 60 "$T/g.jsonl" "$T" -- circ-render --format html -o "$T/o" @
	$MUT 44 60 "$T/acts.jsonl" "$T" -- circ-render --dashboard --model $M --dict "$T/set" \
		--tokens $TOK --format jsonl -o "$T/o" @
}
