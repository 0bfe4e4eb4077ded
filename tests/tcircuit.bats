#!/usr/bin/env bats
# circ-paths: transcoder circuits (Dunefsky et al. 2024) against
# tests/ref/tcircuit_ref.py (PyTorch, float64, vectors pushed forward along
# each route; circ pulls gradients back). Tolerance: every route and path
# attribution and every connection weight within 1e-5 of the largest |value|
# of the output (circ's frozen patterns, scales and activations are float32);
# the sum over routes equals the reference's autograd direct effect within
# the same, and circ-trace's edge within 1e-5 relative to the largest of the
# edge, its largest route and 1e-3 (circ-trace computes in float32, and
# routes of opposite signs cancel: an edge of 0.002 made of routes of 0.17
# is as exact as float32 sums of 0.17 are).
load helper
load tcircuit_common

REF=tests/ref/tcircuit_ref.py
IDS=3,17,5,9,22,41,7

# A 3-layer random GPT-2 in $T/m; in $T/set transcoders for layers 0
# (ln2.hook_normalized, folded) and 2 (resid_mid, JumpReLU), layer 1 without
# (its error node is the MLP); $T/full adds layer 1 (ln2 with weight and bias).
make_case() {
	/usr/bin/python3 tests/ref/trace_ref.py make-model "$T/m" --layers 3 --embd 32 --heads 4 --vocab 50 --ctx 16 --seed 1
	/usr/bin/python3 tests/ref/dict_ref.py make "$T/set/a" --arch transcoder --hook blocks.0.ln2.hook_normalized \
		--hook-out blocks.0.hook_mlp_out --d-in 32 --d-sae 96 --seed 2
	/usr/bin/python3 tests/ref/dict_ref.py make "$T/set/c" --arch jumprelu_transcoder --hook blocks.2.hook_resid_mid \
		--hook-out blocks.2.hook_mlp_out --d-in 32 --d-sae 96 --seed 4
	mkdir -p "$T/full"
	cp -r "$T/set/a" "$T/set/c" "$T/full/"
	/usr/bin/python3 tests/ref/dict_ref.py make "$T/full/b" --arch transcoder --hook blocks.1.ln2.hook_normalized \
		--hook-out blocks.1.hook_mlp_out --d-in 32 --d-sae 64 --seed 3 --fold-ln 0
}

# the active features of the graph at layer $1, position $2 (by activation)
active() {
	jq -r --argjson l "$1" --argjson p "$2" 'select(.kind == "feature" and .layer == $l and .pos == $p) | [.activation, .node] | @tsv' "$T/g.jsonl" |
		sort -gr | cut -f2
}

routes() { tc_routes "$T/m" "$@"; }     # set up down
paths() { tc_paths "$T/m" "$@"; }       # set target beam depth [abs]

@test "circ-paths --routes: every route's attribution equals the reference, their sum the direct effect" {
	make_case
	circ-trace --model "$T/m" --dict "$T/set" --tokens $IDS --all-edges --json >"$T/g.jsonl"
	tgt=$(active 2 5 | head -1)
	src=$(active 0 3 | head -1)
	routes "$T/set" "$src" "$tgt"
	routes "$T/set" tc1.err@2 "$tgt"
	routes "$T/set" input@1 "$tgt"
	routes "$T/set" tc0.err@5 "$tgt"
	circ-trace --model "$T/m" --dict "$T/full" --tokens $IDS --all-edges --json >"$T/g.jsonl"
	routes "$T/full" "$(active 0 0 | head -1)" "$(active 1 4 | head -1)"
	routes "$T/full" "$(active 1 2 | head -1)" "$(active 2 6 | head -1)"
}

@test "circ-paths --routes: the sum over routes is circ-trace's edge, for every source of a target" {
	make_case
	for set in "$T/set" "$T/full"; do
		circ-trace --model "$T/m" --dict "$set" --tokens $IDS --all-edges --json >"$T/g.jsonl"
		# every 7th edge into the target (features, errors and tokens of every layer)
		tc_edge_sums "$T/m" "$set" "$(active 2 4 | head -1)" 7
	done
}

@test "circ-paths --paths: the beam search's paths and attributions equal the reference's" {
	make_case
	circ-trace --model "$T/m" --dict "$T/set" --tokens $IDS --all-edges --json >"$T/g.jsonl"
	paths "$T/set" "$(active 2 5 | head -1)" 4 3
	paths "$T/set" "$(active 2 6 | sed -n 2p)" 3 4 abs
	paths "$T/set" "$(active 0 4 | head -1)" 5 2
	circ-trace --model "$T/m" --dict "$T/full" --tokens $IDS --all-edges --json >"$T/g.jsonl"
	paths "$T/full" "$(active 2 3 | head -1)" 3 3
	paths "$T/full" "$(active 1 6 | head -1)" 6 2 abs
	# a path's text and elements agree; depth d has d + 1 elements at least
	jq -e -s '.[1:-1] | all(.elements[-1].name as $n | .depth + 1 <= (.elements | length)
		and .elements[-1].kind == "target" and (.path | endswith($n))
		and .attribution == .elements[0].attribution)' "$T/c.jsonl"
}

@test "circ-paths --paths: circuit-tracer transcoder files against the reference" {
	/usr/bin/python3 tests/ref/trace_ref.py make-model "$T/m" --layers 2 --embd 32 --heads 2 --vocab 50 --ctx 16 --seed 5
	/usr/bin/python3 tests/ref/dict_ref.py make-ct "$T/ct" --layers 2 --d-in 32 --d-sae 80 --jumprelu --seed 6
	circ-trace --model "$T/m" --dict "$T/ct" --tokens $IDS --all-edges --json >"$T/g.jsonl"
	paths "$T/ct" "$(active 1 6 | head -1)" 4 3
	routes "$T/ct" input@2 "$(active 1 6 | head -1)"
}

@test "circ-paths --connections: every connection equals the reference, the top ones are its top" {
	make_case
	for f in tc0.f7 tc1.f3 tc2.f11; do
		/usr/bin/python3 $REF connections "$T/m" "$T/full" $f >"$T/r.json"
		circ-paths --model "$T/m" --dict "$T/full" --connections $f --top 100000 --json >"$T/c.jsonl"
		tests/validate.py schemas/transcoder-paths.schema.json "$T/c.jsonl"
		n=$(jq -r 'length' "$T/r.json")
		[ "$(($(wc -l <"$T/c.jsonl") - 2))" -eq "$n" ]
		/usr/bin/python3 $REF compare-connections "$T/c.jsonl" "$T/r.json"
		circ-paths --model "$T/m" --dict "$T/full" --connections $f --top 6 --json >"$T/c.jsonl"
		/usr/bin/python3 $REF compare-connections "$T/c.jsonl" "$T/r.json"
	done
	# a layer without transcoder has no features to connect to
	circ-paths --model "$T/m" --dict "$T/set" --connections tc0.f7 --top 100000 --json | jq -e -s '[.[1:-1][] | select(.direction == "downstream") | .target] | all(startswith("tc2."))'
}

@test "circ-paths --help, the man page, bad flags" {
	run circ-paths --help
	[ "$status" -eq 0 ]
	[[ "$output" == *"--paths"* && "$output" == *"--connections"* && "$output" == *"--beam"* ]]
	[ -f man/circ-paths.1 ]
	run circ-paths --no-such-flag
	[ "$status" -eq 2 ]
}

# refused STATUS MESSAGE ARGS...: circ-paths on $T/m and $T/set exits with
# STATUS and says MESSAGE
refused() {
	local st=$1 msg=$2
	shift 2
	run --separate-stderr circ-paths --model "$T/m" --dict "$T/set" "$@"
	[ "$status" -eq "$st" ] && [[ "$stderr" == *"$msg"* ]] || { echo "$*: status $status: $stderr"; return 1; }
}

@test "circ-paths: bad input is refused with a message" {
	make_case
	circ-trace --model "$T/m" --dict "$T/set" --tokens $IDS --all-edges --json >"$T/g.jsonl"
	tgt=$(active 2 5 | head -1)
	refused 2 "node 'tc2.x5@3': expected tc<layer>.f<feature>@<pos>" --tokens $IDS --paths tc2.x5@3
	refused 1 "unknown feature 'tc1.f3@2': layer 1 has no transcoder" --tokens $IDS --paths tc1.f3@2
	refused 1 "the transcoder has 96 features" --tokens $IDS --paths tc0.f96@2
	refused 1 "position 7 is beyond the prompt (7 tokens)" --tokens $IDS --paths tc0.f1@7
	inactive() { # the first feature of layer $1 not active at position $2
		jq -r 'select(.kind == "feature") | .node' "$T/g.jsonl" >"$T/act"
		for i in $(seq 0 95); do
			grep -qx "tc$1.f$i@$2" "$T/act" || { echo "tc$1.f$i@$2"; return; }
		done
	}
	off=$(inactive 2 5)
	refused 1 "target feature '$off' is not active on the prompt (activation 0)" --tokens $IDS --paths "$off"
	off=$(inactive 0 3)
	refused 1 "source feature '$off' is not active" --tokens $IDS --routes "$off->$tgt"
	refused 1 "is not upstream of" --tokens $IDS --routes "input@6->$tgt"
	refused 2 "expected UP->DOWN" --tokens $IDS --routes "input@2"
	refused 1 "more than 3 routes" --tokens $IDS --routes "input@2->$tgt" --max-routes 3
	for bad in "--beam 0" "--beam 1001" "--depth 0" "--depth 33" "--beam x" "--top 0"; do
		refused 2 "option '${bad%% *}'" --tokens $IDS --paths "$tgt" $bad
	done
	refused 2 "needs the prompt: --tokens IDS" --paths "$tgt"
	refused 2 "give one of --paths, --routes and --connections" --tokens $IDS --paths "$tgt" --connections tc0.f1
	refused 2 "expected tc<layer>.f<feature>" --connections tc0.f1@2
	refused 1 "layer 1 has no transcoder" --connections tc1.f1
	refused 1 "outside the vocabulary" --tokens 1,50 --paths "$tgt"
}

@test "circ-paths: output to /dev/full fails" {
	make_case
	run circ-paths --model "$T/m" --dict "$T/set" --connections tc0.f1 --json -o /dev/full
	[ "$status" -ne 0 ]
}
