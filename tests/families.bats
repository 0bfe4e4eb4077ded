#!/usr/bin/env bats
# Model families (issue 16): every directory of tests/data/families (made by
# tests/ref/families.py, which also writes arch.json: the architecture as
# that independent script reads the config) is read by circ-forward
# --describe into the same architecture; running one is refused by name
# until its forward exists; broken configs and checkpoints are refused
# naming the file and the key or tensor. (Refused configs and broken shard
# indexes: tests/catalogue/files.cases, f16.*.)
load helper

FAM=tests/data/families

# The test models (hub-configs/ holds configs of released models only:
# tests/unit/test_families.c).
models() {
	for d in "$FAM"/*/; do
		[ -e "$d/config.json" ] && echo "$d"
	done
}

# Compares the JSON on stdin (circ's) with arch.json $1: every key of
# arch.json must have the same value (numbers to 1e-12 relative).
same_arch() {
	python3 -c '
import json, math, sys
want = json.load(open(sys.argv[1]))
got = json.loads(sys.stdin.read())
def same(a, b):
    if isinstance(a, bool) or isinstance(b, bool) or a is None or b is None:
        return a == b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return math.isclose(a, b, rel_tol=1e-12, abs_tol=0)
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    return a == b
bad = [k for k in want if k not in got or not same(want[k], got[k])]
for k in bad:
    print("%s: %s: circ %r, reference %r" % (sys.argv[1], k, got.get(k), want[k]))
sys.exit(1 if bad else 0)' "$1"
}

@test "--describe: every family reads as tests/ref/families.py reads it" {
	n=0
	for d in $(models); do
		run --separate-stderr circ-forward --model "$d" --describe
		assert_success
		[ -z "$stderr" ]
		printf '%s\n' "$output" | same_arch "$d/arch.json"
		n=$((n + 1))
	done
	[ "$n" -ge 10 ]
}

@test "--describe: what it prints follows schemas/describe.schema.json (every family and a GPT-2)" {
	{
		for d in $(models) fixtures/induction-hand; do
			circ-forward --model "$d" --describe
		done
	} >"$BATS_TEST_TMPDIR/describe.jsonl"
	/usr/bin/python3 -c '
import json, sys, jsonschema
schema = json.load(open("schemas/describe.schema.json"))
v = jsonschema.Draft202012Validator(schema)
n = 0
for line in open(sys.argv[1]):
    d = json.loads(line)
    errs = [e.message for e in v.iter_errors(d)]
    assert not errs, (d["model_type"], errs)
    assert list(d) == schema["required"], "key order"
    n += 1
assert n >= 11, n
# the schema is not vacuous: a wrong value and a missing key fail it
bad = dict(d, norm="batchnorm")
assert list(v.iter_errors(bad))
del bad["norm"]
assert list(v.iter_errors(bad))
' "$BATS_TEST_TMPDIR/describe.jsonl"
}

@test "--describe: the families are what their directories say" {
	for d in $(models); do
		t=$(circ-forward --model "$d" --describe | jq -r .model_type)
		[ "$t" = "$(jq -r .model_type "$d/config.json")" ]
	done
	circ-forward --model "$FAM/llama" --describe | jq -e '.rope_scaling.type == "llama3" and .n_kv_head == 2 and .tied_embeddings == false'
	circ-forward --model "$FAM/llama-tied" --describe | jq -e '.tied_embeddings and .bias_qkv and .bias_mlp'
	circ-forward --model "$FAM/gemma2" --describe | jq -e '.local_layers == [0, 2] and .attn_softcap == 2 and .final_softcap == 3 and .norm_placement == "pre_post"'
	circ-forward --model "$FAM/gemma3_text" --describe | jq -e '.local_layers == [0, 1, 3] and .rope_local_theta == 10000 and .qk_norm == "per_head"'
	circ-forward --model "$FAM/gpt_neox" --describe | jq -e '.rotary_dim == 4 and .parallel_residual and .norm == "layernorm"'
	circ-forward --model "$FAM/olmo2" --describe | jq -e '.qk_norm == "whole" and .norm_placement == "post"'
}

@test "--describe: GPT-2 as before, its tiedness from the file" {
	run --separate-stderr circ-forward --model tests/data/tiny/model --describe
	assert_success
	printf '%s\n' "$output" | jq -e '.model_type == "gpt2" and .position == "learned" and .tied_embeddings and .n_layer == 2 and .activation == "gelu_new" and .bias_qkv'
	run --separate-stderr -1 circ-forward --model nosuchdir --describe
	[[ "$stderr" == "circ-forward: 'nosuchdir': not a model directory"* ]]
}

@test "--describe is in --help" {
	run circ-forward --help
	assert_success
	assert_output --partial -- "--describe"
}

# Exact and EAP scores of every edge (resample, logit_diff) against
# tests/ref/family_recv.py (float64 PyTorch, each receiver reading its own
# input; node outputs as circ(1) MODEL FAMILIES defines them): $1 the family,
# $2 "grouped" or empty.
scores_match_reference() {
	local out="$T/ref-$1-$2" gqa=()
	[ -n "$2" ] && gqa=(--gqa grouped)
	/usr/bin/python3 tests/ref/family_recv.py scores "$FAM/$1" "$out" $2 >/dev/null
	for m in exact eap; do
		circ-score --model "$FAM/$1" "${gqa[@]}" --method "$m" --json "$out/tokens.jsonl" >"$out/$m.jsonl"
		/usr/bin/python3 tests/ref/patch_ref.py compare "$out/ref.json" "$m" "$out/$m.jsonl" --atol 1e-4 --rtol 1e-4
	done
}

@test "every family: exact and EAP scores of every edge match the PyTorch reference (1e-4)" {
	need_cmd /usr/bin/python3
	for d in $(models); do
		scores_match_reference "$(basename "$d")" ""
	done
}

# circ(1) MODEL FAMILIES' account of the two head-node definitions with
# norms after the blocks, in float64 (tests/ref/family_recv.py postnorm):
# circ's shares and EAP-IG's/MIB's raw head outputs agree on the input and
# MLP edges and on a whole layer's heads; single head edges differ; EAP of
# shares converges to their exact patching, EAP-IG's raw-difference EAP does
# not converge to its own, the post norm's Jacobian makes it converge.
# (circ's exact and EAP scores are the shares': the test above.)
@test "norms after the blocks (gemma2): circ's head nodes against EAP-IG's and MIB's, in float64" {
	need_cmd /usr/bin/python3
	/usr/bin/python3 tests/ref/family_recv.py postnorm "$FAM/gemma2" >"$T/postnorm.json"
	jq -e '.layer_patch_gap < 1e-9 and .["1.0"].exact_share_vs_raw_others < 1e-9
		and .["1.0"].exact_share_vs_raw_heads > 0.05
		and .["0.01"].eap_share_vs_exact_share < 0.02
		and .["0.01"].eap_lin_vs_exact_raw < 0.02
		and .["0.01"].eap_eapig_vs_exact_raw > 0.2' "$T/postnorm.json"
}

# --head-nodes raw: a head outputs o_h, the norm after attention applied on
# the receiver's side (tests/ref/family_recv.py forward's raw_heads, as
# EAP-IG's evaluate_graph rebuilds a receiver's input): exact and EAP scores
# of every edge (EAP: the norm's Jacobian at the clean sum times the raw
# difference), and a circuit with 40% of the edges patched (several heads of
# a layer into one receiver among them), against the float64 reference; the
# circuit with shares (the default) too: a head whose every edge is patched
# still scales its layer's other shares through the norm (lib/patch.c,
# mark_alive: a layer's heads live together).
@test "--head-nodes raw (gemma2, gemma3_text, olmo2): exact and EAP scores and circuits match the float64 reference" {
	need_cmd /usr/bin/python3
	for f in gemma2 gemma3_text olmo2; do
		local out="$T/raw-$f"
		/usr/bin/python3 tests/ref/family_recv.py scores "$FAM/$f" "$out" raw >/dev/null
		for m in exact eap; do
			circ-score --model "$FAM/$f" --head-nodes raw --method "$m" --json "$out/tokens.jsonl" >"$out/$m.jsonl"
			/usr/bin/python3 tests/ref/patch_ref.py compare "$out/ref.json" "$m" "$out/$m.jsonl" --atol 1e-4 --rtol 1e-4
		done
		head -1 "$out/eap.jsonl" | jq -e '.graph.head_nodes == "raw"'
		/usr/bin/python3 -c '
import json, random, sys
edges = json.load(open(sys.argv[1]))["edges"]
print(json.dumps({"format": "circ", "version": 1, "kind": "edges"}))
for e in random.Random(3).sample(edges, int(0.4 * len(edges))):
    print(json.dumps({"edge": e}))' "$out/ref.json" >"$out/edges.jsonl"
		for nodes in raw share; do
			circ-patch --model "$FAM/$f" --head-nodes "$nodes" --edges "$out/edges.jsonl" --json "$out/tokens.jsonl" >"$out/patch-$nodes.jsonl"
			/usr/bin/python3 tests/ref/family_recv.py circuit "$FAM/$f" "$out/tokens.jsonl" "$out/edges.jsonl" "$nodes" >"$out/want-$nodes.json"
			jq -s -e --slurpfile want "$out/want-$nodes.json" \
			    '[.[] | select(.id != null) | .metric_circuit] as $got | ($got | length) == ($want[0] | length)
			     and ([range($got | length) | ($got[.] - $want[0][.]) | fabs] | max) < 1e-4' "$out/patch-$nodes.jsonl"
		done
		# the two definitions give other circuits' metrics
		run ! cmp -s "$out/want-raw.json" "$out/want-share.json"
	done
}

@test "--head-nodes raw: refused where it does not apply, and a graph of one definition with a model of the other" {
	local tok="$T/tok.jsonl"
	/usr/bin/python3 tests/ref/family_recv.py scores "$FAM/gemma2" "$T/ref" raw >/dev/null
	tok="$T/ref/tokens.jsonl"
	run --separate-stderr circ-score --model "$FAM/llama" --head-nodes raw "$tok"
	[ "$status" -eq 1 ]
	[[ "$stderr" == *"raw head nodes: model_type llama has no norm after attention"* ]]
	run --separate-stderr circ-score --model "$FAM/gemma2" --head-nodes rawish "$tok"
	[ "$status" -eq 2 ]
	for m in cd-t eap-ig-activations; do
		run --separate-stderr circ-score --model "$FAM/gemma2" --head-nodes raw --method "$m" "$tok"
		[ "$status" -eq 2 ]
		[[ "$stderr" == *"--head-nodes raw does not apply to --method $m"* ]]
	done
	run --separate-stderr circ-harvest --model "$FAM/gemma2" --head-nodes raw "$tok"
	[ "$status" -eq 2 ]
	run --separate-stderr circ-prune --edge-pruning --model "$FAM/gemma2" --head-nodes raw --sparsity 0.5 "$tok"
	[ "$status" -eq 2 ]
	circ-score --model "$FAM/gemma2" --head-nodes raw "$tok" >"$T/raw.circ"
	run --separate-stderr circ-patch --model "$FAM/gemma2" --curve "$T/raw.circ" "$tok"
	[ "$status" -eq 1 ]
	[[ "$stderr" == *"needs the model opened with it too"* ]]
}

@test "grouped-query attention, --gqa grouped: exact and EAP scores match the reference; fewer edges" {
	need_cmd /usr/bin/python3
	n=0
	for d in $(models); do
		f=$(basename "$d")
		[ "$(jq -r .n_kv_head "$d/arch.json")" -lt "$(jq -r .n_head "$d/arch.json")" ] || continue
		scores_match_reference "$f" grouped
		a=$(wc -l <"$T/ref-$f-/eap.jsonl" 2>/dev/null || circ-score --model "$d" --json tests/data/tiny/tokens.jsonl | wc -l)
		b=$(wc -l <"$T/ref-$f-grouped/eap.jsonl")
		[ "$b" -lt "$a" ]
		head -1 "$T/ref-$f-grouped/eap.jsonl" | jq -e --arg t "$f" '.graph.kv_heads >= 1 and .graph.model_type == ($t | sub("-tied"; ""))'
		n=$((n + 1))
	done
	[ "$n" -ge 5 ]
}

# The count of edges of a graph by formula (circ(1), MODEL FAMILIES): per
# layer l the q/k/v receivers (H + 2G) read 1 + l(H+1) nodes, the MLP that
# plus its layer's H heads unless blocks are parallel; logits all.
edge_count() {
	python3 -c '
import sys
L, H, G, par = map(int, sys.argv[1:])
e = 0
for l in range(L):
    nin = 1 + l * (H + 1)
    e += (H + 2 * G) * nin + (nin if par else nin + H)
print(e + 1 + L * (H + 1))' "$@"
}

@test "every family runs every tool: forward, every score method, prune, patch, render; headers name the family" {
	for d in $(models); do
		t=$(jq -r .model_type "$d/config.json")
		L=$(jq .n_layer "$d/arch.json")
		H=$(jq .n_head "$d/arch.json")
		par=$(jq 'if .parallel_residual then 1 else 0 end' "$d/arch.json")
		run --separate-stderr circ-forward --model "$d" --json tests/data/tiny/tokens.jsonl
		assert_success
		[ "$(printf '%s\n' "$output" | grep -c '"metric"')" -ge 4 ]
		for m in eap eap-ig eap-ig-activations exact; do
			circ-score --model "$d" --method "$m" tests/data/tiny/tokens.jsonl >"$T/$m.zst"
		done
		circ cat "$T/eap.zst" >"$T/eap.jsonl"
		head -1 "$T/eap.jsonl" | jq -e --arg t "$t" '.graph.model_type == $t'
		if [ "$par" = 1 ]; then
			head -1 "$T/eap.jsonl" | jq -e '.graph.block == "parallel"'
			run ! grep -q '"a0.h0->m0"' "$T/eap.jsonl"
		fi
		[ "$(grep -c '^{"edge"' "$T/eap.jsonl")" -eq "$(edge_count "$L" "$H" "$H" "$par")" ]
		circ-prune --top-n 10 "$T/eap.zst" >"$T/c.zst"
		run --separate-stderr circ-patch --model "$d" --circuit "$T/c.zst" --json tests/data/tiny/tokens.jsonl
		assert_success
		circ-render --format dot "$T/c.zst" >/dev/null
		circ-prune --acdc --model "$d" --tau 0.01 tests/data/tiny/tokens.jsonl >"$T/acdc.zst"
		[ "$(circ cat "$T/acdc.zst" | head -1 | jq -r .graph.model_type)" = "$t" ]
	done
}

# A copy of family $1 in $T/m with config.json passed through jq filter $2.
edit_config() {
	rm -rf "$T/m"
	cp -r "$FAM/$1" "$T/m"
	jq "$2" "$FAM/$1/config.json" >"$T/m/config.json"
}

@test "a config that does not match the weights names the tensor, the file and the config" {
	edit_config qwen3 '.intermediate_size = 100'
	run --separate-stderr -1 circ-forward --model "$T/m" --describe
	[[ "$stderr" == "circ-forward: '$T/m/model.safetensors': tensor 'model.layers.0.mlp.gate_proj.weight': shape [96, 64], expected [100, 64] from '$T/m/config.json'"* ]]
	edit_config qwen3 '.tie_word_embeddings = true'
	run --separate-stderr -1 circ-forward --model "$T/m" --describe
	[[ "$stderr" == "circ-forward: '$T/m/model.safetensors': tensor 'lm_head.weight' differs from 'model.embed_tokens.weight', but tie_word_embeddings is true in '$T/m/config.json'"* ]]
	edit_config qwen2 '.tie_word_embeddings = false'
	run --separate-stderr -1 circ-forward --model "$T/m" --describe
	[[ "$stderr" == "circ-forward: '$T/m/model.safetensors': missing tensor 'lm_head.weight'" ]]
	edit_config olmo2 '.num_hidden_layers = 3'
	run --separate-stderr -1 circ-forward --model "$T/m" --describe
	[[ "$stderr" == *"missing tensor 'model.layers.2.self_attn.q_proj.weight'" ]]
	edit_config gemma '.model_type = "gemma2"'
	run --separate-stderr -1 circ-forward --model "$T/m" --describe
	[[ "$stderr" == *"model.safetensors': missing tensor 'model.layers.0.pre_feedforward_layernorm.weight'" ]]
	edit_config gemma3_text '.attention_bias = true'
	run --separate-stderr -1 circ-forward --model "$T/m" --describe
	[[ "$stderr" == *"model.safetensors': missing tensor 'model.layers.0.self_attn.q_proj.bias'" ]]
	edit_config gemma2 '.head_dim = 8'
	run --separate-stderr -1 circ-forward --model "$T/m" --describe
	[[ "$stderr" == *"tensor 'model.layers.0.self_attn.q_proj.weight': shape [64, 64], expected [32, 64]"* ]]
}

@test "a tied checkpoint may carry a copy of the embedding as lm_head.weight" {
	mkdir "$T/m"
	cp "$FAM/llama-tied/config.json" "$T/m/"
	python3 - "$FAM/llama-tied/model.safetensors" "$T/m/model.safetensors" <<'PY'
import json, struct, sys
b = open(sys.argv[1], "rb").read()
n = struct.unpack("<Q", b[:8])[0]
h = json.loads(b[8:8 + n])
data = b[8 + n:]
lo, hi = h["model.embed_tokens.weight"]["data_offsets"]
h["lm_head.weight"] = dict(h["model.embed_tokens.weight"], data_offsets=[len(data), len(data) + hi - lo])
hb = json.dumps(h).encode()
hb += b" " * (-len(hb) % 8)
open(sys.argv[2], "wb").write(struct.pack("<Q", len(hb)) + hb + data + data[lo:hi])
PY
	[ "$(circ-forward --model "$T/m" --describe)" = "$(circ-forward --model "$FAM/llama-tied" --describe)" ]
}

@test "the spellings of RoPE scaling and of the layer pattern read the same" {
	# rope_scaling with "type" (older files), rope_parameters (recent transformers)
	a=$(circ-forward --model "$FAM/llama" --describe | jq -c .rope_scaling)
	edit_config llama '.rope_scaling |= (.type = .rope_type | del(.rope_type))'
	[ "$(circ-forward --model "$T/m" --describe | jq -c .rope_scaling)" = "$a" ]
	edit_config llama '.rope_parameters = (.rope_scaling + {rope_theta: .rope_theta}) | del(.rope_scaling) | del(.rope_theta)'
	circ-forward --model "$T/m" --describe | jq -e ".rope_theta == 500000 and (.rope_scaling | tojson) == $(printf '%s' "$a" | jq -R .)"
	# gemma3 by layer_types and by per-layer-type rope_parameters
	b=$(circ-forward --model "$FAM/gemma3_text" --describe | jq -c '[.local_layers, .rope_theta, .rope_local_theta, .rope_scaling]')
	edit_config gemma3_text 'del(.sliding_window_pattern) | .layer_types = ["sliding_attention", "sliding_attention", "full_attention", "sliding_attention"]'
	[ "$(circ-forward --model "$T/m" --describe | jq -c '[.local_layers, .rope_theta, .rope_local_theta, .rope_scaling]')" = "$b" ]
	edit_config gemma3_text '.rope_parameters = {full_attention: (.rope_scaling + {rope_theta: .rope_theta}), sliding_attention: {rope_type: "default", rope_theta: .rope_local_base_freq}} | del(.rope_scaling, .rope_theta, .rope_local_base_freq)'
	[ "$(circ-forward --model "$T/m" --describe | jq -c '[.local_layers, .rope_theta, .rope_local_theta, .rope_scaling]')" = "$b" ]
	# GPT-NeoX's rotary fraction as recent transformers spell it
	edit_config gpt_neox 'del(.rotary_pct) | .rope_parameters = {rope_type: "default", rope_theta: 10000, partial_rotary_factor: 0.5}'
	circ-forward --model "$T/m" --describe | jq -e '.rotary_dim == 8'
	edit_config gpt_neox 'del(.rotary_pct) | .partial_rotary_factor = 0.25'
	circ-forward --model "$T/m" --describe | jq -e '.rotary_dim == 4'
	# gemma2 without layer_types: even layers slide
	describes_as gemma2 'del(.layer_types)' \
	    '.local_layers == [0, 2]'
}

@test "a sharded checkpoint reads as the same tensors in one file" {
	python3 - "$FAM/llama" "$T/one" <<'PY'
import json, os, shutil, struct, sys
src, dst = sys.argv[1], sys.argv[2]
os.makedirs(dst)
shutil.copy(os.path.join(src, "config.json"), dst)
idx = json.load(open(os.path.join(src, "model.safetensors.index.json")))
header, blobs, off = {}, [], 0
for shard in sorted(set(idx["weight_map"].values())):
    b = open(os.path.join(src, shard), "rb").read()
    n = struct.unpack("<Q", b[:8])[0]
    h = json.loads(b[8:8 + n])
    for k, v in h.items():
        if k == "__metadata__":
            continue
        lo, hi = v["data_offsets"]
        header[k] = {"dtype": v["dtype"], "shape": v["shape"], "data_offsets": [off, off + hi - lo]}
        blobs.append(b[8 + n + lo:8 + n + hi])
        off += hi - lo
hb = json.dumps(header).encode()
hb += b" " * (-len(hb) % 8)
with open(os.path.join(dst, "model.safetensors"), "wb") as f:
    f.write(struct.pack("<Q", len(hb)) + hb + b"".join(blobs))
PY
	[ "$(circ-forward --model "$T/one" --describe)" = "$(circ-forward --model "$FAM/llama" --describe)" ]
	# model.safetensors wins over an index, as in transformers
	cp "$FAM/llama"/model*.safetensors* "$T/one/"
	rm "$T/one/model-00002-of-00002.safetensors"
	run circ-forward --model "$T/one" --describe
	assert_success
}

@test "tests/data/families is what tests/ref/families.py and family_recv.py write (float64 references, seeded)" {
	/usr/bin/python3 tests/ref/families.py "$T/fam"
	/usr/bin/python3 tests/ref/family_recv.py "$T/fam" >/dev/null
	# the models byte for byte; the reference logits and receiver gradients
	# to 1e-5 (float64 sums may differ in their last bits from one CPU to
	# another)
	diff -r -x reference.safetensors -x grads.safetensors -x hub-configs "$T/fam" "$FAM"
	python3 - "$FAM" "$T/fam" <<'PY'
import json, math, os, struct, sys
def read(path):
    b = open(path, "rb").read()
    n = struct.unpack("<Q", b[:8])[0]
    h = json.loads(b[8:8 + n])
    out = {}
    for k, v in h.items():
        if k == "__metadata__":
            continue
        lo, hi = v["data_offsets"]
        fmt = "<%d%s" % ((hi - lo) // 4, "i" if v["dtype"] == "I32" else "f")
        out[k] = (v["shape"], v["dtype"], struct.unpack(fmt, b[8 + n + lo:8 + n + hi]))
    return out
for name in sorted(os.listdir(sys.argv[2])):
    d = os.path.join(sys.argv[1], name)
    ref = read(os.path.join(d, "reference.safetensors"))
    new = read(os.path.join(sys.argv[2], name, "reference.safetensors"))
    V = json.load(open(os.path.join(d, "config.json")))["vocab_size"]
    S, T = ref["tokens"][0]
    # logits of every position: (S, T, V), F32, finite, not all near zero
    assert ref["logits"][:2] == ([S, T, V], "F32"), name
    xs = ref["logits"][2]
    assert all(math.isfinite(x) for x in xs) and max(map(abs, xs)) > 0.1, name
    assert ref["tokens"] == new["tokens"], name
    worst = max(abs(a - b) for a, b in zip(xs, new["logits"][2]))
    assert worst < 1e-5, (name, worst)
    g, gn = (read(os.path.join(p, "grads.safetensors")) for p in (d, os.path.join(sys.argv[2], name)))
    assert g.keys() == gn.keys() and "grads" in g, name
    for k in g:
        assert g[k][:2] == gn[k][:2], (name, k)
        big = max(map(abs, g[k][2]))
        worst = max(abs(a - b) for a, b in zip(g[k][2], gn[k][2]))
        assert worst <= 1e-5 * max(big, 1), (name, k, worst)
PY
}

# Family $1's config through jq filter $2 describes as jq test $3 says.
describes_as() {
	edit_config "$1" "$2"
	circ-forward --model "$T/m" --describe | jq -e "$3"
}

@test "absent keys take the transformers configuration classes' defaults; null means none" {
	describes_as gemma2 'del(.attn_logit_softcapping, .final_logit_softcapping, .query_pre_attn_scalar, .sliding_window, .layer_types)' \
	    '.attn_softcap == 50 and .final_softcap == 30 and .attn_scale == 0.0625 and .sliding_window == 4096 and .local_layers == [0, 2]'
	describes_as gemma2 '.attn_logit_softcapping = null | .sliding_window = null' \
	    '.attn_softcap == null and .final_softcap == 3 and .sliding_window == null and .local_layers == []'
	describes_as gemma3_text 'del(.sliding_window_pattern, .rope_theta, .rope_local_base_freq, .final_logit_softcapping)' \
	    '.local_layers == [0, 1, 2, 3] and .rope_theta == 1e6 and .rope_local_theta == 10000 and .final_softcap == null'
	describes_as mistral 'del(.sliding_window)' \
	    '.sliding_window == 4096'
	describes_as olmo2 'del(.rms_norm_eps, .rope_theta)' \
	    '.norm_eps == 1e-5 and .rope_theta == 10000'
	describes_as gpt_neox 'del(.rotary_pct, .rotary_emb_base, .use_parallel_residual, .layer_norm_eps, .hidden_act)' \
	    '.rotary_dim == 4 and .rope_theta == 10000 and .parallel_residual and .norm_eps == 1e-5 and .activation == "gelu"'
	describes_as gemma 'del(.hidden_activation, .tie_word_embeddings)' \
	    '.activation == "gelu_new" and .tied_embeddings and .embed_scale == 8 and .norm_offset == 1'
	edit_config qwen2 'del(.num_key_value_heads)'
	run --separate-stderr -1 circ-forward --model "$T/m" --describe
	[[ "$stderr" == *"tensor 'model.layers.0.self_attn.k_proj.weight': shape [32, 64], expected [64, 64]"* ]]
}

@test "a model of a long context (Llama 3's 131072 positions) scores, prunes and harvests: runs take the prompts' length" {
	rm -rf "$T/m"
	cp -r "$FAM/llama" "$T/m"
	jq '.max_position_embeddings = 131072' "$FAM/llama/config.json" >"$T/m/config.json"
	run --separate-stderr circ-score --model "$T/m" --json tests/data/tiny/tokens.jsonl
	assert_success
	[ "$(grep -c '^{"edge"' <<<"$output")" -eq 110 ]
	circ-prune --acdc --model "$T/m" --tau 0.01 tests/data/tiny/tokens.jsonl >/dev/null
	circ-harvest --model "$T/m" tests/data/tiny/tokens.jsonl >/dev/null
}

@test "EAP-IG graph JSON of a family: parallel_attn_mlp for Pythia's blocks and no head->MLP edges within a layer; grouped graphs refused" {
	circ-score --model "$FAM/gpt_neox" tests/data/tiny/tokens.jsonl >"$T/s"
	circ-prune --top-n 5 "$T/s" >"$T/c" 2>/dev/null
	circ-render --format json "$T/c" >"$T/g.json"
	jq -e '.cfg.parallel_attn_mlp == true' "$T/g.json"
	[ "$(jq '.edges | length' "$T/g.json")" -eq "$(circ cat "$T/s" | grep -c '^{"edge"')" ]
	[ "$(jq '[.edges | keys[] | select(test("^a0[.]h[0-9]+->m0$"))] | length' "$T/g.json")" -eq 0 ]
	circ-score --model "$FAM/llama" tests/data/tiny/tokens.jsonl | circ-prune --top-n 5 2>/dev/null |
		circ-render --format json | jq -e '.cfg.parallel_attn_mlp == false'
	circ-score --model "$FAM/llama" --gqa grouped tests/data/tiny/tokens.jsonl >"$T/s"
	circ-prune --top-n 5 "$T/s" >"$T/c" 2>/dev/null
	run --separate-stderr -1 circ-render --format json "$T/c"
	[[ "$stderr" == *"the circuit's graph is grouped: --gqa grouped"* ]]
}

@test "a non-finite narrow weight is named by tensor and element (BF16 and F16, in and after the first 1024)" {
	forward_m() {
		printf '{"clean": [1, 2, 3], "corrupt": [1, 2, 4], "pos": 2, "answer": [5], "wrong": [6]}\n' |
			circ-forward --model "$T/m" --json
	}
	poison() { # family, tensor, element, 16-bit value
		rm -rf "$T/m" && mkdir "$T/m" && cp "$FAM/$1/config.json" "$T/m/"
		python3 - "$FAM/$1/model.safetensors" "$T/m/model.safetensors" "$2" "$3" "$4" <<'PY'
import json, struct, sys
src, dst, name, i, v = sys.argv[1:]
b = bytearray(open(src, "rb").read())
n = struct.unpack("<Q", b[:8])[0]
at = 8 + n + json.loads(b[8:8 + n])[name]["data_offsets"][0] + 2 * int(i)
b[at:at + 2] = struct.pack("<H", int(v, 16))
open(dst, "wb").write(b)
PY
	}
	poison qwen3 model.embed_tokens.weight 15000 7fc1
	run --separate-stderr -1 forward_m
	[[ "$stderr" == *"tensor 'model.embed_tokens.weight': element 15000 is NaN"* ]]
	poison qwen3 lm_head.weight 3 ff80
	run --separate-stderr -1 forward_m
	[[ "$stderr" == *"tensor 'lm_head.weight': element 3 is infinite"* ]]
	poison gpt_neox gpt_neox.embed_in.weight 19199 7c00
	run --separate-stderr -1 forward_m
	[[ "$stderr" == *"tensor 'gpt_neox.embed_in.weight': element 19199 is infinite"* ]]
	poison gpt_neox embed_out.weight 1024 7e00
	run --separate-stderr -1 forward_m
	[[ "$stderr" == *"tensor 'embed_out.weight': element 1024 is NaN"* ]]
	# the largest finite values are finite
	poison qwen3 model.embed_tokens.weight 2000 7f7f
	run -0 forward_m
}
