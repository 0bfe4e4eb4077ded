#!/usr/bin/env bats
# Options of every tool (issue 13, items 10, 17, 18 and 21): an option that
# conflicts with another, lies out of its range or would be silently ignored
# is a usage error (exit 2) naming the option, found before any model or
# stream is read; thread counts default to the cores and never change the
# results.
load helper

TINY=tests/data/tiny/model
TOK=tests/data/tiny/tokens.jsonl
NOPE=/nonexistent/circ-options-test

# usage_error MESSAGE COMMAND...: exit 2 with MESSAGE on stderr.
usage_error() {
	local msg=$1
	shift
	run --separate-stderr "$@"
	[ "$status" -eq 2 ] || {
		echo "exit $status, want 2: $*"
		echo "stderr: $stderr"
		return 1
	}
	[[ "$stderr" == *"$msg"* ]] || {
		echo "stderr lacks '$msg': $*"
		echo "stderr: $stderr"
		return 1
	}
}

@test "patch: --convention or --level against the circuit's or the scores' graph is a usage error" {
	usage_error "option '--convention acdc' disagrees with the graph of '$TINY/../circuit.jsonl' (eap-ig)" \
		circ-patch --model $TINY --circuit $TINY/../circuit.jsonl --convention acdc $TOK
	usage_error "option '--level node' disagrees with the graph of" \
		circ-patch --model $TINY --circuit $TINY/../circuit.jsonl --level node $TOK
	circ-score --model $TINY --convention acdc -o "$T/s.circ" $TOK
	usage_error "option '--convention eap-ig' disagrees with the graph of '$T/s.circ' (acdc)" \
		circ-patch --model $TINY --curve "$T/s.circ" --convention eap-ig $TOK
	# given and in agreement: fine, and the same numbers as without it
	circ-patch --model $TINY --curve "$T/s.circ" --convention acdc --json $TOK | tail -n +2 >"$T/a"
	circ-patch --model $TINY --curve "$T/s.circ" --json $TOK | tail -n +2 >"$T/b"
	cmp "$T/a" "$T/b"
	circ-patch --model $TINY --circuit $TINY/../circuit.jsonl --level edge --convention eap-ig $TOK
}

@test "prune: --tau and --abs-change without --acdc, and a negative --tau, are usage errors" {
	usage_error "option '--tau' goes with --acdc" circ-prune --top-n 3 --tau 0.1 tests/data/prune/scores.jsonl
	usage_error "option '--abs-change' goes with --acdc" circ-prune --top-n 3 --abs-change tests/data/prune/scores.jsonl
	usage_error "option '--tau': '-0.5' is negative" circ-prune --acdc --tau -0.5 --model $NOPE $NOPE
	usage_error "option '--tau'" circ-prune --acdc --tau nan --model $NOPE $NOPE
	circ-prune --acdc --tau 0 --model $TINY $TOK >/dev/null 2>&1
}

@test "prune: sizes are checked before the scores are read" {
	usage_error "option '--top-n': '-3'" circ-prune --top-n -3 $NOPE
	usage_error "option '--greedy': '1.5'" circ-prune --greedy 1.5 $NOPE
	usage_error "option '--top-n': '150%'" circ-prune --top-n 150% $NOPE
	usage_error "option '--top-n': ''" circ-prune --top-n "" $NOPE
	usage_error "option '--threshold': '-1' is negative (|score| is compared; --signed for signed scores)" \
		circ-prune --threshold -1 $NOPE
	circ-prune --threshold -1 --signed tests/data/prune/scores.jsonl >/dev/null
}

@test "train: out-of-range and conflicting numbers are usage errors" {
	usage_error "option '--lr': '-1' is not in (0, 1)" circ-train induction --out "$T/m" --lr -1
	usage_error "option '--lr': '0' is not in (0, 1)" circ-train induction --out "$T/m" --lr 0
	usage_error "option '--steps': '0'" circ-train induction --out "$T/m" --steps 0
	usage_error "option '--batch': '0'" circ-train induction --out "$T/m" --batch 0
	usage_error "option '--threads': '0'" circ-train induction --out "$T/m" --threads 0
	usage_error "option '--threads': '-2'" circ-train induction --out "$T/m" --threads -2
	usage_error "option '--min-lr': '2' is not in [0, 1]" circ-train induction --out "$T/m" --min-lr 2
	usage_error "option '--min-rep' (5) is more than --max-rep (3)" \
		circ-train induction --out "$T/m" --min-rep 5 --max-rep 3
	usage_error "option '--vocab-lo' (10) is not below --vocab-hi (5)" \
		circ-train induction --out "$T/m" --vocab-lo 10 --vocab-hi 5
	usage_error "option '--vocab-lo' (10) is not below --vocab-hi (5)" \
		circ-train --diagnose $NOPE --vocab-lo 10 --vocab-hi 5
	# options that do not fit the task's sequences, before any training
	usage_error "induction: evaluation sequences of 2 x 100 ids" circ-train induction --out "$T/m" --len 100
	[ ! -e "$T/m" ] && [ -z "$(find "$T" -maxdepth 1 -name 'm.tmp-*')" ]
}

@test "patch: --nodes and --fractions are parsed before the model is loaded" {
	usage_error "option '--nodes': empty list" circ-patch --model $NOPE --nodes "" $NOPE
	usage_error "option '--nodes': empty node name in 'a0.h0,'" circ-patch --model $NOPE --nodes a0.h0, $NOPE
	usage_error "option '--nodes': empty node name in ',m0'" circ-patch --model $NOPE --nodes ,m0 $NOPE
	usage_error "option '--fractions': empty list" circ-patch --model $NOPE --curve $NOPE --fractions "" $NOPE
	usage_error "option '--fractions': '' is not an increasing fraction" \
		circ-patch --model $NOPE --curve $NOPE --fractions 0.1, $NOPE
	usage_error "option '--fractions': '0.2' is not an increasing fraction" \
		circ-patch --model $NOPE --curve $NOPE --fractions 0.5,0.2 $NOPE
	usage_error "option '--fractions': '1.5' is not an increasing fraction" \
		circ-patch --model $NOPE --curve $NOPE --fractions 1.5 $NOPE
	usage_error "option '--fractions': '-0.1' is not an increasing fraction" \
		circ-patch --model $NOPE --curve $NOPE --fractions -0.1 $NOPE
	many=$(seq 1 65 | awk '{printf "%s%.4f", (NR > 1 ? "," : ""), $1 / 100}')
	usage_error "option '--fractions': 65 fractions, at most 64" \
		circ-patch --model $NOPE --curve $NOPE --fractions "$many" $NOPE
	# 64 are fine
	circ-score --model $TINY -o "$T/s.circ" $TOK
	many=$(seq 1 64 | awk '{printf "%s%.4f", (NR > 1 ? "," : ""), $1 / 64}')
	run --separate-stderr circ-patch --model $TINY --curve "$T/s.circ" --fractions "$many" --json $TOK
	assert_success
	[ "$(tail -n +2 <<<"$output" | jq -s 'map(select(.fraction != null)) | length')" -eq 64 ]
}

@test "the patching options that the mode ignores are usage errors" {
	usage_error "option '--steps' goes with --method eap-ig or eap-ig-activations" \
		circ-score --model $NOPE --steps 3 $NOPE
	usage_error "option '--steps' goes with --method eap-ig or eap-ig-activations" \
		circ-score --model $NOPE --method exact --steps 3 $NOPE
	usage_error "option '--per-position' goes with --ablation mean" circ-score --model $NOPE --per-position $NOPE
	usage_error "option '--mean-ref' goes with --ablation mean" circ-score --model $NOPE --mean-ref $TOK $NOPE
	usage_error "option '--per-position' goes with --ablation mean" circ-patch --model $NOPE --nodes m0 --per-position $NOPE
	usage_error "option '--mean-ref' goes with --ablation mean" circ-harvest --model $NOPE --mean-ref $TOK $NOPE
	usage_error "option '--per-position' goes with --ablation mean" \
		circ-prune --acdc --model $NOPE --per-position $NOPE
	usage_error "option '--model' does not apply to --merge" circ-score --merge --model $TINY $NOPE
	usage_error "option '--ablation' does not apply to --merge" circ-score --merge --ablation zero $NOPE
	usage_error "option '--batch' does not apply to --acts" circ-score --acts --batch 4 $NOPE
	usage_error "option '--ablation' does not apply to --acts" circ-score --acts --ablation zero $NOPE
	usage_error "--list-edges takes no input" circ-score --model $TINY --list-edges $TOK
	usage_error "option '--batch': '0'" circ-score --model $NOPE --batch 0 $NOPE
	usage_error "option '--threads': '0'" circ-harvest --model $NOPE --threads 0 $NOPE
	usage_error "option '--threads': '-1'" circ-forward --model $NOPE --threads -1 $NOPE
	usage_error "option '--batch': '0'" circ-forward --model $NOPE --batch 0 $NOPE
	usage_error "option '--top-k': '-1'" circ-forward --model $NOPE --top-k -1 $NOPE
}

@test "render and fixture: options the format or mode ignores are usage errors" {
	C=tests/data/tiny/circuit.jsonl
	usage_error "option '--top' goes with --format text" circ-render --format dot --top 3 $C
	usage_error "option '--title' does not apply to --format json" circ-render --format json --title x $C
	usage_error "option '--d-model' goes with --format json" circ-render --d-model 24 $C
	usage_error "option '--eap-ig-legacy' goes with --format json" circ-render --format html --eap-ig-legacy $C
	usage_error "option '--curve' goes with --format text or curve-svg" circ-render --format dot --curve $NOPE $C
	usage_error "option '--format' does not apply to --list-edges" circ-render --list-edges --format dot $C
	usage_error "option '--layers' goes with --random" circ-fixture induction-hand --layers 3 --out "$T/x"
	usage_error "option '--ctx' goes with --random" circ-fixture induction-hand --ctx 8 --truth
	usage_error "--random excludes --list, --truth, --spec and --examples" \
		circ-fixture --random --vocab-dir fixtures/gpt2-tokenizer --out "$T/x" --list
	[ ! -e "$T/x" ]
	usage_error "options '--vocab-lo' and '--vocab-hi': the id range [10, 5) is empty" \
		circ-dataset induction --vocab-lo 10 --vocab-hi 5 --n 2
}

@test "patch --circuit takes a headerless edge list, the graph from --model" {
	tail -n +2 tests/data/tiny/circuit.jsonl >"$T/list.jsonl"
	circ-patch --model $TINY --circuit tests/data/tiny/circuit.jsonl --json $TOK | tail -n +2 >"$T/with"
	run --separate-stderr circ-patch --model $TINY --circuit "$T/list.jsonl" --json $TOK
	assert_success
	tail -n +2 <<<"$output" | cmp - "$T/with"
	# the graph is the model's at the chosen level and convention
	circ-patch --model $TINY --circuit "$T/list.jsonl" --convention acdc --json $TOK | head -1 |
		jq -e '.graph.convention == "acdc"'
	# an edge the graph lacks is an error naming the line
	{ head -3 "$T/list.jsonl"; echo '{"edge": "a7.h0->m9"}'; } >"$T/bad.jsonl"
	run --separate-stderr circ-patch --model $TINY --circuit "$T/bad.jsonl" $TOK
	assert_failure 1
	[[ "$stderr" == *"'$T/bad.jsonl': record 4: edge 'a7.h0->m9'"* ]]
	# a node-level list: names at the node level
	echo '{"edge": "a0.h0->m0"}' >"$T/node.jsonl"
	circ-patch --model $TINY --circuit "$T/node.jsonl" --level node --json $TOK | head -1 | jq -e '.graph.level == "node"'
}

@test "threads: all the cores by default, CIRC_THREADS sets another default and is checked" {
	run circ-score --help
	assert_success
	assert_output --partial "threads (default $(nproc): the cores; CIRC_THREADS sets another)"
	CIRC_THREADS=3 run circ-forward --help
	assert_output --partial "(default 3: CIRC_THREADS)"
	CIRC_THREADS=3 run circ-train --help
	assert_output --partial "(default 3: CIRC_THREADS)"
	for v in 0 -1 abc 257 ""; do
		CIRC_THREADS=$v usage_error "CIRC_THREADS: '$v' is not an integer in 1..256" circ-score --model $TINY $TOK
	done
	CIRC_THREADS=x usage_error "CIRC_THREADS: 'x'" circ-forward --model $TINY $TOK
	CIRC_THREADS=x usage_error "CIRC_THREADS: 'x'" circ-prune --acdc --model $TINY $TOK
	CIRC_THREADS=x usage_error "CIRC_THREADS: 'x'" circ-train --diagnose $TINY
	# --threads wins over CIRC_THREADS
	CIRC_THREADS=2 circ-forward --model $TINY --threads 1 $TOK >/dev/null
}

@test "CIRC_PACK_AT: checked by every model tool; any value gives the same bytes" {
	for v in -1 abc 1000000001 1.5; do
		CIRC_PACK_AT=$v usage_error "CIRC_PACK_AT: '$v' is not an integer in 0..1000000000" circ-forward --model $TINY $TOK
	done
	CIRC_PACK_AT=x usage_error "CIRC_PACK_AT: 'x'" circ-score --model $TINY $TOK
	CIRC_PACK_AT=x usage_error "CIRC_PACK_AT: 'x'" circ-prune --acdc --model $TINY $TOK
	# packed from the first forward, never, and the default: the same bytes
	M=fixtures/induction-hand
	circ-fixture induction-hand --examples 24 --seed 4 | circ-tokenize --vocab-dir $M -o "$T/tok.circ"
	for v in 1 0 16; do
		CIRC_PACK_AT=$v circ-score --model $M --method eap-ig --steps 3 --batch 4 "$T/tok.circ" | circ-cat --no-header >"$T/s$v.jsonl"
		CIRC_PACK_AT=$v circ-forward --model $M --logits --batch 4 "$T/tok.circ" | circ-cat --no-header >"$T/f$v.jsonl"
	done
	cmp "$T/s1.jsonl" "$T/s0.jsonl"
	cmp "$T/s1.jsonl" "$T/s16.jsonl"
	cmp "$T/f1.jsonl" "$T/f0.jsonl"
	cmp "$T/f1.jsonl" "$T/f16.jsonl"
}

@test "threads: the default, CIRC_THREADS and --threads give the same bytes" {
	M=fixtures/induction-hand
	circ-fixture induction-hand --examples 16 --seed 3 | circ-tokenize --vocab-dir $M -o "$T/tok.circ"
	for cmd in "circ-score --method eap" "circ-score --method exact --ablation mean" \
		"circ-forward --logits" "circ-prune --acdc --ablation zero" "circ-patch --nodes a1.h0"; do
		$cmd --model $M --json "$T/tok.circ" 2>/dev/null | tail -n +2 >"$T/default"
		$cmd --model $M --json --threads 1 "$T/tok.circ" 2>/dev/null | tail -n +2 >"$T/t1"
		CIRC_THREADS=3 $cmd --model $M --json "$T/tok.circ" 2>/dev/null | tail -n +2 >"$T/t3"
		[ -s "$T/default" ]
		cmp "$T/default" "$T/t1" || { echo "$cmd: default and --threads 1 differ"; return 1; }
		cmp "$T/default" "$T/t3" || { echo "$cmd: default and CIRC_THREADS=3 differ"; return 1; }
	done
}

@test "prune --acdc --ablation mean: means made once, for batches of any size" {
	# 4 examples in batches of 3 and 1: each batch's patcher used to
	# make the means itself, sized for its own batch
	run --separate-stderr circ-prune --acdc --model $TINY --ablation mean --batch 3 --json $TOK
	assert_success
	circ-prune --acdc --model $TINY --ablation mean --batch 4 --json $TOK | tail -n +2 >"$T/b4"
	tail -n +2 <<<"$output" | jq -c '{edge}' >"$T/b3"
	jq -c '{edge}' "$T/b4" | diff - "$T/b3"
}

@test "progress on a terminal: out of the header's n_examples, then erased; never off one, nor with CIRC_NO_PROGRESS" {
	need_cmd script
	unset CIRC_NO_PROGRESS # (helper.bash sets it for every other test)
	jq -c 'if .kind == "tokens" then . + {n_examples: 4} else . end' $TOK >"$T/tok.jsonl"
	script -qec "circ-score --model $TINY --batch 1 -o '$T/s.circ' '$T/tok.jsonl'" /dev/null >"$T/tty"
	grep -q 'circ-score: examples 0/4 (0%)' "$T/tty"
	grep -q 'circ-score: examples 4/4 (100%)' "$T/tty"
	[ "$(tail -c 4 "$T/tty" | od -An -c | tr -d ' ')" = '\r033[K' ] # erased at the end
	# a header without n_examples: the count alone, with the time taken
	script -qec "circ-score --model $TINY --batch 1 -o '$T/s.circ' $TOK" /dev/null >"$T/tty"
	grep -Eq 'circ-score: examples [0-9]+, [0-9]+s' "$T/tty"
	# the exact method: every edge patched in every example
	script -qec "circ-score --model $TINY --method exact -o '$T/s.circ' '$T/tok.jsonl'" /dev/null >"$T/tty"
	n=$(circ-score --model $TINY --method exact "$T/tok.jsonl" | circ-cat --no-header | grep -c '"edge"')
	grep -q "circ-score: edges x examples $((4 * n))/$((4 * n)) (100%)" "$T/tty"
	# ACDC counts its edge tests out of the graph's edges
	script -qec "circ-prune --acdc --model $TINY --tau 0.01 -o '$T/c.circ' '$T/tok.jsonl'" /dev/null >"$T/tty"
	grep -Eq 'circ-prune: edge tests [0-9]+/[0-9]+ \([0-9]+%\)' "$T/tty"
	# an error starts on a clean line: the progress line is erased first
	jq -c 'if .kind == "tokens" then . + {n_examples: 9} else . end' $TOK >"$T/nine.jsonl"
	run script -qec "circ-score --model $TINY --method exact -o '$T/s.circ' '$T/nine.jsonl'" /dev/null
	[ "$status" -eq 1 ]
	grep -qF $'\r\033[Kcirc-score: \''"$T/nine.jsonl"$'\': record 4: the header declares 9 examples' <<<"$output"
	CIRC_NO_PROGRESS=1 script -qec "circ-score --model $TINY --batch 1 -o '$T/s.circ' '$T/tok.jsonl'" /dev/null >"$T/tty"
	[ "$(grep -c 'examples' "$T/tty")" -eq 0 ]
	run --separate-stderr circ-score --model $TINY --batch 1 -o "$T/s.circ" "$T/tok.jsonl"
	assert_success
	[ -z "$stderr" ]
}
