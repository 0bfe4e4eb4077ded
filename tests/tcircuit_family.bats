#!/usr/bin/env bats
# circ-paths on every model family (tests/data/families) against
# tests/ref/tcircuit_ref.py's family prompt (PyTorch float64, vectors pushed
# forward along each route through trace_family_ref.py's frozen clean run:
# the family's norms, grouped-query values, embedding scale, the norm after
# the attention, parallel blocks). Tolerances as tests/tcircuit.bats: every
# route and path attribution and every connection weight within 1e-5 of the
# largest |value| of the output; the sum over routes equals the reference's
# autograd direct effect within the same.
load helper
load family_sets
load tcircuit_common

REF=tests/ref/tcircuit_ref.py
FAM=tests/data/families
IDS=3,17,5,9,22,41,7

# the active features of the graph at layer $1, position $2 (by activation)
active() {
	jq -r --argjson l "$1" --argjson p "$2" 'select(.kind == "feature" and .layer == $l and .pos == $p) | [.activation, .node] | @tsv' "$T/g.jsonl" |
		sort -gr | cut -f2
}

graph() { # family
	make_set "$1"
	circ-trace --model "$FAM/$1" --dict "$T/$1" --tokens $IDS --all-edges --json >"$T/g.jsonl"
}

routes() { tc_routes "$FAM/$1" "$T/$1" "$2" "$3"; }               # family up down
paths() { tc_paths "$FAM/$1" "$T/$1" "${@:2}"; }                  # family target beam depth [abs]

connections() { # family feature
	/usr/bin/python3 $REF connections "$FAM/$1" "$T/$1" "$2" >"$T/r.json"
	circ-paths --model "$FAM/$1" --dict "$T/$1" --connections "$2" --top 100000 --json >"$T/c.jsonl"
	tests/validate.py schemas/transcoder-paths.schema.json "$T/c.jsonl"
	head -1 "$T/c.jsonl" | jq -e --arg t "${1%-tied}" '.model_type == $t' >/dev/null
	[ "$(($(wc -l <"$T/c.jsonl") - 2))" -eq "$(jq -r 'length' "$T/r.json")" ]
	/usr/bin/python3 $REF compare-connections "$T/c.jsonl" "$T/r.json"
	circ-paths --model "$FAM/$1" --dict "$T/$1" --connections "$2" --top 7 --json >"$T/c.jsonl"
	/usr/bin/python3 $REF compare-connections "$T/c.jsonl" "$T/r.json"
}

@test "circ-paths, Llama (GQA, BF16 weights and embeddings, untied) and Llama tied with biases (a layer without transcoder)" {
	graph llama
	tgt=$(active 1 5 | head -1)
	routes llama "$(active 0 2 | head -1)" "$tgt"
	routes llama input@1 "$tgt"
	routes llama tc0.err@4 "$tgt"
	paths llama "$tgt" 4 3
	paths llama "$(active 1 6 | sed -n 2p)" 3 4 abs
	connections llama tc0.f7
	connections llama tc1.f3
	graph llama-tied
	tgt=$(active 1 6 | head -1)
	routes llama-tied tc0.err@2 "$tgt"
	routes llama-tied input@0 "$tgt"
	paths llama-tied "$tgt" 5 3
	connections llama-tied tc1.f9
}

@test "circ-paths, Mistral (sliding window shorter than the prompt) and Qwen 2, Qwen 3 (biases; q/k norms, head_dim not C/H)" {
	graph mistral
	tgt=$(active 1 5 | head -1)
	routes mistral "$(active 0 4 | head -1)" "$tgt"
	routes mistral input@3 "$tgt"
	# a window of 3 positions in each of 2 layers keeps position 0 out of
	# position 5's reach: its routes exist and carry nothing
	circ-paths --model "$FAM/mistral" --dict "$T/mistral" --tokens $IDS --routes "input@0->$tgt" --json |
		jq -e -s '.[-2].total == 0 and ([.[] | select(.route) | .attribution] | all(. == 0))'
	paths mistral "$tgt" 4 3
	for f in qwen2 qwen3; do
		graph $f
		tgt=$(active 1 5 | head -1)
		routes $f "$(active 0 2 | head -1)" "$tgt"
		routes $f input@1 "$tgt"
		paths $f "$tgt" 4 3 abs
	done
	connections qwen3 tc0.f11
}

@test "circ-paths, Gemma (1 + w RMSNorm, embedding scale, multi-query), Gemma 2 and 3 (norms after attention and MLP, 4 layers)" {
	graph gemma
	tgt=$(active 1 5 | head -1)
	routes gemma "$(active 0 2 | head -1)" "$tgt"
	routes gemma input@1 "$tgt"
	paths gemma "$tgt" 4 3
	connections gemma tc0.f7
	graph gemma3_text
	tgt=$(active 3 5 | head -1)
	routes gemma3_text tc2.err@4 "$tgt"
	routes gemma3_text "$(active 1 5 | head -1)" "$tgt"
	paths gemma3_text "$tgt" 3 3 abs
	graph gemma2
	tgt=$(active 3 5 | head -1)
	routes gemma2 "$(active 0 2 | head -1)" "$tgt"
	routes gemma2 tc2.err@4 "$tgt"
	paths gemma2 "$tgt" 4 4
	connections gemma2 tc1.f5
	# routes through heads of three layers exist and are listed once each
	circ-paths --model "$FAM/gemma2" --dict "$T/gemma2" --tokens $IDS --routes "input@0->$tgt" --json |
		jq -e -s '[.[] | select(.route) | .route] | (length == (unique | length)) and any(.[]; split(",") | length == 3)'
}

@test "circ-paths, OLMo 2 (no norm before the blocks) and GPT-NeoX (parallel blocks: no head of a feature's own layer feeds it)" {
	graph olmo2
	tgt=$(active 1 5 | head -1)
	routes olmo2 "$(active 0 2 | head -1)" "$tgt"
	routes olmo2 input@3 "$tgt"
	paths olmo2 "$tgt" 4 3
	connections olmo2 tc0.f7
	graph gpt_neox
	tgt=$(active 1 5 | head -1)
	routes gpt_neox "$(active 0 5 | head -1)" "$tgt"
	routes gpt_neox input@2 "$tgt"
	paths gpt_neox "$tgt" 5 3
	connections gpt_neox tc0.f7
	connections gpt_neox tc1.f7
	# layer 1's feature: no route through a layer-1 head, none from layer 0
	# at another position (that would need a head above layer 0 and below 1)
	circ-paths --model "$FAM/gpt_neox" --dict "$T/gpt_neox" --tokens $IDS --routes "input@2->$tgt" --json |
		jq -e -s '[.[] | select(.route) | .route] | all(test("L1H") | not)'
	circ-paths --model "$FAM/gpt_neox" --dict "$T/gpt_neox" --tokens $IDS --routes "$(active 0 2 | head -1)->$tgt" --json |
		jq -e -s '.[-2].n_routes == 0 and .[-2].total == 0'
	circ-paths --model "$FAM/gpt_neox" --dict "$T/gpt_neox" --tokens $IDS --paths "$tgt" --beam 50 --depth 1 --json |
		jq -e -s '[.[1:-1][] | .elements[0] | select(.kind == "head") | .layer] | all(. == 0) and length > 0'
	circ-paths --model "$FAM/gpt_neox" --dict "$T/gpt_neox" --connections tc1.f7 --top 100000 --json |
		jq -e -s '[.[1:-1][] | select(.direction == "upstream" and .route != "resid")] | all(.route | startswith("L0H")) and length > 0'
}

@test "circ-paths on a family: the sum over routes is circ-trace's edge, for every source of a target (Gemma 2)" {
	graph gemma2
	tc_edge_sums "$FAM/gemma2" "$T/gemma2" "$(active 3 4 | head -1)" 9
}
