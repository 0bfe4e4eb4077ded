#!/usr/bin/env bats
# circ-fixture and the hand-built models it writes: the command line, the
# committed fixtures against a fresh build, and ground-truth evaluation of
# every discovery method on every model: the model does its task, the truth
# alone keeps >= 90% of the behaviour, and exact, eap, eap-ig and ACDC rank
# the truth edges first (ROC AUC >= 0.95).
load helper

MODELS="induction-hand ioi-hand"
PY=/usr/bin/python3

setup_file() {
	# One token stream per model (32 examples, the task the truth is for).
	local m
	for m in $MODELS; do
		circ-fixture "$m" --examples 32 --seed 1 |
			circ-tokenize --vocab-dir "fixtures/$m" >"$BATS_FILE_TMPDIR/$m.tok"
	done
}

# Field $2 of the header of circuit stream $1 (jq path), e.g. .eval.auc
header_field() {
	circ-cat "$1" | head -1 | jq -r "$2"
}

# ROC AUC of scores $2 against model $1's truth; $3 is "" (|score|) or --signed.
auc_of() {
	circ-prune --top-n 1 $3 --truth "fixtures/$1/truth.jsonl" -o "$T/auc.circ" "$2" 2>/dev/null
	header_field "$T/auc.circ" .eval.auc
}

# 1 if $1 >= $2 (floating point).
ge() {
	$PY -c "import sys; sys.exit(0 if float('$1') >= float('$2') else 1)"
}

@test "fixture --help lists every option and exits 0" {
	run --separate-stderr circ-fixture --help
	assert_success
	for o in --out --list --truth --examples --seed --spec; do
		assert_output --partial -- "$o"
	done
}

@test "fixture: usage errors exit 2" {
	run --separate-stderr circ-fixture --nope
	assert_failure 2
	[[ "$stderr" == *"circ-fixture: unknown option '--nope'"* ]]
	run --separate-stderr circ-fixture
	assert_failure 2
	[[ "$stderr" == *"no model name given"* ]]
	run --separate-stderr circ-fixture no-such-model --truth
	assert_failure 2
	[[ "$stderr" == *"unknown model 'no-such-model'"* ]]
	run --separate-stderr circ-fixture induction-hand
	assert_failure 2
	[[ "$stderr" == *"nothing to do"* ]]
	run --separate-stderr circ-fixture induction-hand --truth --spec
	assert_failure 2
	[[ "$stderr" == *"exclude each other"* ]]
	run --separate-stderr circ-fixture induction-hand --truth --seed 3
	assert_failure 2
	[[ "$stderr" == *"'--seed' applies to --examples only"* ]]
	run --separate-stderr circ-fixture induction-hand --examples -1
	assert_failure 2
	run --separate-stderr circ-fixture induction-hand ioi-hand --truth
	assert_failure 2
	run --separate-stderr circ-fixture --list induction-hand
	assert_failure 2
}

@test "fixture --list names every model" {
	run --separate-stderr circ-fixture --list
	assert_success
	for m in $MODELS; do
		assert_output --partial "$m"
	done
}

@test "fixture: the committed fixtures are what the builder writes" {
	for m in $MODELS; do
		circ-fixture "$m" --out "$T/$m"
		run diff -r "$T/$m" "fixtures/$m"
		[ "$status" -eq 0 ] || {
			echo "fixtures/$m differs from a fresh build; rebuild it with:"
			echo "  circ-fixture $m --out fixtures/$m"
			echo "$output"
			return 1
		}
	done
}

@test "fixture: a rebuild over an existing directory gives the same bytes" {
	circ-fixture induction-hand --out "$T/a"
	sha256sum "$T"/a/* | sed "s|$T/a/||" >"$T/first"
	circ-fixture induction-hand --out "$T/a"
	sha256sum "$T"/a/* | sed "s|$T/a/||" >"$T/second"
	cmp "$T/first" "$T/second"
	[ "$(ls "$T/a" | wc -l)" -eq 6 ] # no temporaries left behind
}

@test "fixture: the shipped hand-built models are exactly what circ-fixture writes (make fixtures)" {
	for m in $MODELS; do
		circ-fixture "$m" --out "$T/$m"
		diff -r "fixtures/$m" "$T/$m"
	done
}

@test "fixture: write errors exit 1 and say what failed" {
	run --separate-stderr circ-fixture induction-hand --out /nonexistent/dir/x
	assert_failure 1
	[[ "$stderr" == *"circ-fixture: '/nonexistent/dir/x'"* ]]
	run --separate-stderr bash -c 'circ-fixture ioi-hand --examples 100 >/dev/full'
	assert_failure 1
	[[ "$stderr" == *"write error"* ]]
	run --separate-stderr bash -c 'circ-fixture ioi-hand --spec >/dev/full'
	assert_failure 1
}

@test "fixture --truth matches truth.jsonl, --spec matches SPEC.md" {
	for m in $MODELS; do
		run --separate-stderr circ-fixture "$m" --truth
		assert_success
		diff <(sort <<<"$output") <(circ-cat --no-header "fixtures/$m/truth.jsonl" | jq -r .edge | sort)
		circ-fixture "$m" --spec | cmp - "fixtures/$m/SPEC.md"
	done
}

@test "fixture: truth.jsonl is a circuit stream of the model" {
	for m in $MODELS; do
		run --separate-stderr circ-cat "fixtures/$m/truth.jsonl"
		assert_success
		header=$(head -1 <<<"$output")
		[ "$(jq -r .kind <<<"$header")" = circuit ]
		[ "$(jq -r .source.method <<<"$header")" = construction ]
		[ "$(jq -r .source.mode <<<"$header")" = truth ]
		# the model digest is the one circ-score puts in its header
		digest=$(circ-score --model "fixtures/$m" --method eap "$BATS_FILE_TMPDIR/$m.tok" | circ-cat | head -1 | jq -r .model_digest)
		[ "$(jq -r .model_digest <<<"$header")" = "$digest" ]
		[ "$(jq -r .n_edges_total <<<"$header")" = "$(circ-score --model "fixtures/$m" --list-edges | wc -l)" ]
	done
	for m in $MODELS; do
		circ-cat "fixtures/$m/truth.jsonl" | $PY tests/validate.py schemas/circuit.schema.json
	done
}

@test "fixture: the vocabulary loads in circ-tokenize and matches the model" {
	for m in $MODELS; do
		n=$(jq length "fixtures/$m/vocab.json")
		[ "$n" -eq "$(jq .vocab_size "fixtures/$m/config.json")" ]
	done
	# "the thin.": t h -> th; Ġ t -> Ġt, then Ġt h -> Ġth (the merges in rank order)
	run --separate-stderr bash -c 'printf "the thin." | circ-tokenize --vocab-dir fixtures/induction-hand --text'
	assert_success
	assert_output "29 4 30 8 13 27"
	run --separate-stderr bash -c 'printf "ABBA." | circ-tokenize --vocab-dir fixtures/ioi-hand --text'
	assert_success
	assert_output "0 1 1 0 30"
}

@test "fixture --examples is deterministic and its tokens fit the model" {
	for m in $MODELS; do
		a=$(circ-fixture "$m" --examples 5 --seed 9 | sha256sum)
		b=$(circ-fixture "$m" --examples 5 --seed 9 | sha256sum)
		[ "$a" = "$b" ]
		c=$(circ-fixture "$m" --examples 5 --seed 10 | sha256sum)
		[ "$a" != "$c" ]
		# the first k examples do not depend on N
		diff <(circ-fixture "$m" --examples 3 --seed 9) <(circ-fixture "$m" --examples 5 --seed 9 | head -3)
		[ "$(circ-cat --no-header "$BATS_FILE_TMPDIR/$m.tok" | wc -l)" -eq 32 ]
	done
	# induction-hand's examples are circ-dataset's induction recipe
	diff <(circ-fixture induction-hand --examples 4 --seed 3) \
		<(circ-dataset induction --n 4 --seed 3 --len 12 --vocab-lo 0 --vocab-hi 31)
}

@test "fixture models do their task far above chance, and not when corrupted" {
	for m in $MODELS; do
		circ-patch --model "fixtures/$m" --circuit "fixtures/$m/truth.jsonl" -o "$T/$m.patch" \
			"$BATS_FILE_TMPDIR/$m.tok" 2>/dev/null
		read -r mm me < <(circ-cat --no-header "$T/$m.patch" | tail -1 | jq -r '"\(.metric_model) \(.metric_empty)"')
		echo "$m: clean $mm, corrupted $me"
		case $m in
		induction-hand) # logprob; chance -log 32 = -3.47
			ge "$mm" -1.0
			ge -3.0 "$me" ;;
		ioi-hand) # logit difference IO - S; chance 0
			ge "$mm" 4.0
			ge 1.0 "$me" ;;
		esac
	done
}

@test "fixture: an independent PyTorch GPT-2 agrees on the task metric" {
	# tests/ref/gpt2_ref.py (float64, written from the formulas) reads the
	# Hugging Face directory on its own: the fixtures are valid GPT-2s and
	# their behaviour is not an artifact of circ's forward.
	for m in $MODELS; do
		circ-cat "$BATS_FILE_TMPDIR/$m.tok" >"$T/$m.tok.jsonl"
		$PY tests/ref/gpt2_ref.py logits "fixtures/$m" "$T/$m.tok.jsonl" >"$T/$m.ref"
		circ-patch --model "fixtures/$m" --circuit "fixtures/$m/truth.jsonl" -o "$T/$m.patch" \
			"$BATS_FILE_TMPDIR/$m.tok" 2>/dev/null
		circ=$(circ-cat --no-header "$T/$m.patch" | tail -1 | jq -r .metric_model)
		$PY - "$T/$m.tok.jsonl" "$T/$m.ref" "$circ" <<'PYEOF'
import json, math, sys
toks = [json.loads(l) for l in open(sys.argv[1])]
toks = [t for t in toks if "$end" not in t]  # the end record (stream.h)
metric = toks[0]["metric"]
ref = {r["id"]: r["logits"] for r in map(json.loads, open(sys.argv[2]))}
def logsoftmax(row):
    m = max(row); z = math.log(sum(math.exp(x - m) for x in row)) + m
    return [x - z for x in row]
vals = []
for t in toks[1:]:
    rows = ref[t["id"]]
    if metric == "logprob":
        vals.append(sum(logsoftmax(r)[a] for r, a in zip(rows, t["answer"])) / len(rows))
    else:
        vals.append(rows[0][t["answer"][0]] - rows[0][t["wrong"][0]])
want = sum(vals) / len(vals)
got = float(sys.argv[3])
print("%s: reference %.6f, circ %.6f" % (metric, want, got))
sys.exit(0 if abs(want - got) <= 1e-3 * max(1.0, abs(want)) else 1)
PYEOF
	done
}

@test "fixture: the ground-truth circuit alone keeps >= 90% of the behaviour" {
	for m in $MODELS; do
		run --separate-stderr circ-patch --model "fixtures/$m" --circuit "fixtures/$m/truth.jsonl" \
			-o "$T/$m.patch" "$BATS_FILE_TMPDIR/$m.tok"
		assert_success
		echo "$stderr"
		f=$(circ-cat --no-header "$T/$m.patch" | tail -1 | jq -r .faithfulness)
		ge "$f" 0.9
		ge 1.1 "$f"
		# the circuit patched was the truth, all of it
		circ-cat "$T/$m.patch" | head -1 | jq -e '.n_edges == '"$(circ-fixture "$m" --truth | wc -l)" >/dev/null
	done
}

@test "fixture: exact, eap and eap-ig rank the truth first (ROC AUC >= 0.95)" {
	for m in $MODELS; do
		for method in exact eap eap-ig; do
			circ-score --model "fixtures/$m" --method "$method" -o "$T/$m.$method.scores" \
				"$BATS_FILE_TMPDIR/$m.tok" 2>/dev/null
			abs=$(auc_of "$m" "$T/$m.$method.scores" "")
			sgn=$(auc_of "$m" "$T/$m.$method.scores" --signed)
			echo "$m $method: AUC |score| $abs, signed $sgn"
			ge "$abs" 0.95
			ge "$sgn" 0.95
		done
	done
}

@test "fixture: ACDC recovers the truth (ROC AUC >= 0.95)" {
	for m in $MODELS; do
		run --separate-stderr circ-prune --acdc --model "fixtures/$m" --truth "fixtures/$m/truth.jsonl" \
			-o "$T/$m.acdc" "$BATS_FILE_TMPDIR/$m.tok"
		assert_success
		auc=$(header_field "$T/$m.acdc" .eval.auc)
		read -r tp fp < <(header_field "$T/$m.acdc" '"\(.eval.tp) \(.eval.fp)"')
		echo "$m acdc: AUC $auc, tp $tp, fp $fp"
		ge "$auc" 0.95
		[ "$tp" -eq "$(circ-fixture "$m" --truth | wc -l)" ]
	done
}

# ---- planted-features: the feature-level fixture (not in MODELS: its truth
# is feature edges, checked below and by tests/ref/planted_features_ref.py)

@test "planted-features: the files, deterministic, --truth and --spec agree with them" {
	circ-fixture planted-features --out "$T/pf"
	circ-fixture planted-features --out "$T/pf2"
	diff -r "$T/pf" "$T/pf2"
	for f in config.json model.safetensors vocab.json merges.txt truth.jsonl SPEC.md \
		truth-features.jsonl truth-nodes.jsonl dataset.jsonl; do
		[ -s "$T/pf/$f" ] || { echo "missing $f"; return 1; }
	done
	[ "$(ls "$T/pf/dicts" | tr '\n' ' ')" = "attn0 attn1 mlp0 mlp1 resid0 resid1 resid_pre0 " ]
	diff <(circ-fixture planted-features --truth) <(jq -r .edge "$T/pf/truth-features.jsonl")
	circ-fixture planted-features --spec | cmp - "$T/pf/SPEC.md"
	diff <(circ-fixture planted-features --examples 64 --seed 1) "$T/pf/dataset.jsonl"
	diff <(circ-fixture planted-features --examples 3 --seed 4) \
		<(circ-fixture planted-features --examples 9 --seed 4 | head -3)
	[ "$(wc -l <"$T/pf/truth-features.jsonl")" -eq 10 ]
	[ "$(wc -l <"$T/pf/truth-nodes.jsonl")" -eq 10 ]
	# every edge is of the feature-circuit edge set and joins truth nodes
	$PY - "$T/pf" <<'PYEOF'
import json, re, sys
d = sys.argv[1]
nodes = {json.loads(l)["node"] for l in open(d + "/truth-nodes.jsonl")}
cfgs = {n: json.load(open("%s/dicts/%s/cfg.json" % (d, n))) for n in
        ["resid_pre0", "attn0", "mlp0", "resid0", "attn1", "mlp1", "resid1"]}
allowed = {("resid_pre0", "attn0"), ("resid_pre0", "mlp0"), ("attn0", "mlp0"),
           ("resid_pre0", "resid0"), ("attn0", "resid0"), ("mlp0", "resid0"),
           ("resid0", "attn1"), ("resid0", "mlp1"), ("attn1", "mlp1"),
           ("resid0", "resid1"), ("attn1", "resid1"), ("mlp1", "resid1"), ("resid1", "logits")}
seen = set()
for l in open(d + "/truth-features.jsonl"):
    up, down = json.loads(l)["edge"].split("->")
    du, fu = re.fullmatch(r"(\w+)\.f(\d+)", up).groups()
    dd = "logits" if down == "logits" else re.fullmatch(r"(\w+)\.f(\d+)", down).group(1)
    assert (du, dd) in allowed, (up, down)
    assert int(fu) < cfgs[du]["d_sae"]
    assert up in nodes and (down == "logits" or down in nodes), (up, down)
    seen |= {up, down}
assert seen - {"logits"} == nodes
for n, c in cfgs.items():
    assert c["architecture"] == "jumprelu" and c["d_in"] == 48, (n, c)
PYEOF
}

@test "planted-features: circ runs the task, the SAEs reconstruct it, the component truth is faithful" {
	circ-fixture planted-features --out "$T/pf"
	circ-tokenize --vocab-dir "$T/pf" "$T/pf/dataset.jsonl" >"$T/pf.tok"
	circ-patch --model "$T/pf" --circuit "$T/pf/truth.jsonl" -o "$T/pf.patch" "$T/pf.tok" 2>/dev/null
	read -r mm me f < <(circ-cat --no-header "$T/pf.patch" | tail -1 | jq -r '"\(.metric_model) \(.metric_empty) \(.faithfulness)"')
	echo "clean $mm, corrupted $me, faithfulness $f"
	ge "$mm" 3.9
	ge -3.9 "$me"
	ge "$f" 0.99
	# circ's own splicing: every dictionary reconstructs its hook
	circ-forward --model "$T/pf" --dict "$T/pf/dicts" --json "$T/pf.tok" >"$T/eval.jsonl"
	[ "$(jq -s '[.[] | select(.fvu != null)] | length' "$T/eval.jsonl")" -eq 7 ]
	jq -e -s 'all(.[] | select(.fvu != null); .fvu < 1e-6 and .n_dead == 0)' "$T/eval.jsonl"
}

@test "planted-features: the float64 PyTorch reference confirms the task, the SAEs and the truth" {
	circ-fixture planted-features --out "$T/pf"
	run --separate-stderr $PY tests/ref/planted_features_ref.py "$T/pf"
	echo "$output"
	assert_success
	assert_output --partial "ok"
	# it can fail: a truth edge taken out, or a wrong one put in
	cp -r "$T/pf" "$T/bad"
	sed -i 1d "$T/bad/truth-features.jsonl"
	run --separate-stderr $PY tests/ref/planted_features_ref.py "$T/bad"
	assert_failure 1
	cp "$T/pf/truth-features.jsonl" "$T/bad/"
	echo '{"edge":"resid_pre0.f20->resid0.f20"}' >>"$T/bad/truth-features.jsonl"
	run --separate-stderr $PY tests/ref/planted_features_ref.py "$T/bad"
	assert_failure 1
	# and a dictionary that misses a feature's direction
	cp "$T/pf/truth-features.jsonl" "$T/bad/"
	$PY - "$T/bad/dicts/mlp1/sae_weights.safetensors" <<'PYEOF'
import sys
sys.path.insert(0, "tests/ref")
from stio import read_safetensors, write_safetensors
t = read_safetensors(sys.argv[1])
t = {k: v.copy() for k, v in t.items()}
t["W_dec"][0] *= 0.5
write_safetensors(sys.argv[1], t)
PYEOF
	run --separate-stderr $PY tests/ref/planted_features_ref.py "$T/bad"
	assert_failure 1
}

@test "pipelines/sva.mk: fixture, dataset, tokens, dictionaries (given and trained) and their check" {
	RUNS=$T/runs
	pipe() { make --no-print-directory -s -f pipelines/sva.mk RUNS="$RUNS" "$@"; }
	run pipe dict-eval check-fixture
	assert_success
	assert_output --partial "ok"
	D=$RUNS/sva/planted-features/n64-s0
	[ "$(circ-cat --no-header "$D/tokens.circ" | wc -l)" -eq 64 ]
	circ-cat --no-header "$D/dicts/dict-eval.circ" | jq -e -s 'length == 7 and all(.fvu < 1e-6)'
	# a rerun does nothing
	run make --no-print-directory -f pipelines/sva.mk RUNS="$RUNS" dict-eval
	assert_output --partial "Nothing to be done"
	# SAEs trained here, one per hook of Marks et al.'s set, named as circ names them
	pipe DICTS=train SAE_N=2048 SAE_ARGS="--arch topk --k 2 --d-sae 64 --steps 30 --batch 128" dict-eval
	[ "$(ls -d "$D"/dicts-trained-*/ | wc -l)" -eq 1 ]
	[ "$(ls "$D"/dicts-trained-*/ | tr '\n' ' ')" = "attn0 attn1 mlp0 mlp1 resid0 resid1 resid_pre0 " ]
	circ-cat --no-header "$D"/trained-*/dict-eval.circ | jq -e -s 'length == 7'
	# the feature-circuit stages: the commands (circ-score --method feature-ig
	# --dict, circ-prune against the feature truth, circ-patch --dict)
	run pipe -n report
	assert_success
	assert_output --partial "circ-score --model $RUNS/fixtures/planted-features --method feature-ig --dict $RUNS/fixtures/planted-features/dicts --steps 10 --node-threshold 0"
	assert_output --partial "circ-prune --top-n 10  --truth $RUNS/fixtures/planted-features/truth-features.jsonl"
	assert_output --partial "circ-patch --model $RUNS/fixtures/planted-features --dict $RUNS/fixtures/planted-features/dicts --circuit"
	assert_output --partial "--dict $RUNS/fixtures/planted-features/dicts --curve"
	# another model: circ-dataset sva with its tokenizer, SAEs trained on it
	circ-fixture --random --vocab-dir fixtures/gpt2-tokenizer --out "$T/g2"
	pipe MODEL="$T/g2" N=8 TEMPLATE=across-pp SAE_N=1024 SAE_ARGS="--arch topk --k 2 --steps 20 --batch 64" dict-eval
	jq -e -s 'length == 8 and all(.meta.template == "across-pp")' "$RUNS/sva/g2/n8-s0-across-pp/dataset.jsonl"
}
