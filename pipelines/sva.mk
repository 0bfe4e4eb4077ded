# pipelines/sva.mk — a sparse-feature-circuit discovery (Marks et al. 2024) on
# subject-verb agreement, end to end:
#
#   model (+ dictionaries) -> dataset -> tokens -> dictionary check -> node and
#   edge scores over features -> circuit (ROC AUC against the truth) ->
#   faithfulness curves -> SVG, HTML, report
#
#   make -f pipelines/sva.mk                         # the planted-features fixture
#   make -f pipelines/sva.mk METHOD=feature-atp K=20
#   make -f pipelines/sva.mk MODEL=path/to/gpt2 DICTS=path/to/saes TEMPLATE=across-rc
#   make -f pipelines/sva.mk MODEL=path/to/gpt2 DICTS=train     # SAEs trained here
#
# By default the model is circ-fixture's planted-features (built under
# $(RUNS)/fixtures/), whose SAEs (dicts/) have the planted features as their
# features and whose truth (truth-features.jsonl) is a set of feature edges;
# its examples are the fixture's own token-level task (circ-fixture
# --examples). With MODEL= a Hugging Face model directory (with its
# tokenizer), the examples are circ-dataset sva (TEMPLATE: simple,
# within-rc, across-rc, across-pp or all) and the dictionaries are DICTS: a
# set of SAELens SAEs at blocks.0.hook_resid_pre, hook_attn_out, hook_mlp_out
# and hook_resid_post (any subset), or DICTS=train to train one per hook of
# SAE_HOOKS with circ-train sae on SAE_CORPUS (a token stream; default SAE_N
# prompts of the task, which is only a smoke test: train on a real corpus).
#
# Run directory (every target written through a temporary and renamed, as in
# pipelines/common.mk; make deletes no target):
#
#   $(RUNS)/sva/<model>/n<N>-s<SEED>[-<TEMPLATE>]/      dataset.jsonl tokens.circ
#     dicts-trained-<digest>/                            (DICTS=train: the SAEs)
#     <dicts>/dict-eval.circ                             reconstruction (circ-forward --dict)
#     <dicts>/<METHOD>-steps<STEPS>-nt<NODE_THRESHOLD>/  scores.circ curve.circ curve.svg
#       top-n<K>[-nt<PRUNE_NODE_THRESHOLD>]/             circuit.circ roc.json faithfulness.circ
#                                                        report.txt circuit.svg circuit.html
#
# Tools (lib/fcircuit): scores from circ-score --method feature-atp|feature-ig
# --dict, the circuit from circ-prune on those scores (ROC AUC against the
# truth's feature edges), faithfulness, completeness and curves from
# circ-patch --dict (the nodes outside the circuit mean-ablated at each
# position); `make ... render` draws the curve and the circuit (circ-render).

# where these files are: they run from any directory
PIPELINES := $(dir $(lastword $(MAKEFILE_LIST)))
FIXTURE ?= $(if $(filter undefined,$(origin MODEL)),planted-features)
FIXTURE := $(FIXTURE)
RUNS ?= runs
MODEL ?= $(RUNS)/fixtures/$(FIXTURE)
MODEL_NAME := $(notdir $(abspath $(MODEL)))
N ?= 64
SEED ?= 0
TEMPLATE ?= all
# the fixture's own dictionaries; a directory of SAEs; or train
DICTS ?= $(if $(FIXTURE),$(MODEL)/dicts,train)
METHOD ?= feature-ig
STEPS ?= 10
NODE_THRESHOLD ?= 0
K ?= 10
PRUNE_NODE_THRESHOLD ?=
BATCH ?= 16
THREADS ?=
TRUTH ?= $(if $(FIXTURE),$(MODEL)/truth-features.jsonl,$(wildcard $(MODEL)/truth-features.jsonl))
# DICTS=train: which hooks (default: resid_pre0 and every layer's attn_out,
# mlp_out and resid_post, Marks et al.'s set), trained on what, how
SAE_HOOKS ?=
SAE_CORPUS ?= $(DATA)/sae-corpus-n$(SAE_N).circ
SAE_N ?= 16384
SAE_ARGS ?= --arch topk --k 4 --steps 250 --batch 256

include $(PIPELINES)tools.mk
SHELL = /bin/bash
.SHELLFLAGS = -o pipefail -ec
.SECONDARY:
.SUFFIXES:
ATOMIC := . $(PIPELINES)atomic.sh

DATA := $(RUNS)/sva/$(MODEL_NAME)/n$(N)-s$(SEED)$(if $(FIXTURE),,-$(TEMPLATE))
ifeq ($(DICTS),train)
# named by a digest of the training settings, so that changing one retrains
DICT_NAME := trained-$(shell printf '%s|%s|%s' "$(SAE_HOOKS)" "$(SAE_ARGS)" "$(SAE_CORPUS)" | sha256sum | cut -c1-8)
DDIR := $(DATA)/dicts-$(DICT_NAME)
# a stamp beside the set (a stray file inside it would be read as part of it)
DSTAMP := $(DDIR).done
else
DDIR := $(DICTS)
DICT_NAME := $(notdir $(abspath $(DICTS)))
DSTAMP := $(DDIR)
endif
EDIR := $(DATA)/$(DICT_NAME)
SDIR := $(EDIR)/$(METHOD)-steps$(STEPS)-nt$(NODE_THRESHOLD)
CDIR := $(SDIR)/top-n$(K)$(if $(PRUNE_NODE_THRESHOLD),-nt$(PRUNE_NODE_THRESHOLD))
MODEL_FILES := $(MODEL)/config.json $(MODEL)/model.safetensors
RUN := --model $(MODEL)$(if $(THREADS), --threads $(THREADS))

.PHONY: all model dicts dict-eval scores circuit curve report render check-fixture clean-run
all: report
model: $(MODEL_FILES)
dicts: $(DSTAMP)
dict-eval: $(EDIR)/dict-eval.circ
scores: $(SDIR)/scores.circ
circuit: $(CDIR)/circuit.circ
curve: $(SDIR)/curve.circ
report: $(CDIR)/report.txt
	@cat $<
render: $(SDIR)/curve.svg $(CDIR)/circuit.svg $(CDIR)/circuit.html

# ---- the model: the fixture, built here; or the given directory
ifneq ($(FIXTURE),)
FIXTURE_FILES := $(MODEL_FILES) $(MODEL)/vocab.json $(MODEL)/truth-features.jsonl $(MODEL)/dicts
$(FIXTURE_FILES) &: $(CIRCBIN)circ-fixture
	@mkdir -p $(dir $(MODEL))
	$(CIRCBIN)circ-fixture $(FIXTURE) --out $(MODEL)
	touch $(FIXTURE_FILES)
DATASET_CMD ?= $(CIRCBIN)circ-fixture $(FIXTURE) --examples $(N) --seed $(SEED)
CORPUS_CMD ?= $(CIRCBIN)circ-fixture $(FIXTURE) --examples $(SAE_N) --seed $(SEED)
# the fixture checked on its own (tests/ref/planted_features_ref.py)
check-fixture: $(MODEL)/config.json
	/usr/bin/python3 tests/ref/planted_features_ref.py $(MODEL)
else
DATASET_CMD ?= $(CIRCBIN)circ-dataset sva --n $(N) --seed $(SEED) --template $(TEMPLATE) --model-dir $(MODEL)
CORPUS_CMD ?= $(CIRCBIN)circ-dataset sva --n $(SAE_N) --seed $(SEED) --template $(TEMPLATE) --model-dir $(MODEL)
endif

# ---- dataset and tokens
$(DATA)/dataset.jsonl: $(MODEL_FILES)
	@mkdir -p $(@D)
	$(ATOMIC) $@; $(DATASET_CMD) >"$$tmp"; atomic_commit

$(DATA)/tokens.circ: $(DATA)/dataset.jsonl $(MODEL)/vocab.json
	$(CIRCBIN)circ-tokenize --model-dir $(MODEL) -o $@ $<

# the default corpus of DICTS=train: SAE_N prompts of the same generator
# (their clean ids; the first N are the dataset's): enough to smoke-test the
# whole pipeline, far too narrow for real dictionaries
$(DATA)/sae-corpus-n$(SAE_N).circ: $(MODEL_FILES) $(MODEL)/vocab.json
	@mkdir -p $(@D)
	$(CORPUS_CMD) | $(CIRCBIN)circ-tokenize --model-dir $(MODEL) -o $@

# ---- dictionaries: given, or trained one per hook into DDIR/<name>, the
# name circ_dict_name gives that hook (resid_pre0, attn0, mlp0, resid0, ...)
ifeq ($(DICTS),train)
$(DSTAMP): $(SAE_CORPUS) $(MODEL_FILES)
	@mkdir -p $(DDIR)
	hooks="$(SAE_HOOKS)"; \
	[ -n "$$hooks" ] || hooks=$$(jq -r '"blocks.0.hook_resid_pre", (range(.n_layer) as $$l | "attn_out", "mlp_out", "resid_post" | "blocks.\($$l).hook_\(.)")' $(MODEL)/config.json); \
	for h in $$hooks; do \
		d=$$(sed -E 's/^blocks\.([0-9]+)\.hook_(resid_pre|attn_out|mlp_out|resid_post)$$/\2\1/; s/^attn_out/attn/; s/^mlp_out/mlp/; s/^resid_post/resid/' <<<"$$h"); \
		$(CIRCBIN)circ-train sae $(RUN) --hook $$h --out $(DDIR)/$$d --tokens $(SAE_ARGS) $(SAE_CORPUS); \
	done
	touch $@
endif

# ---- how well the dictionaries reconstruct their hooks on this dataset
$(EDIR)/dict-eval.circ: $(DSTAMP) $(DATA)/tokens.circ
	@mkdir -p $(@D)
	$(CIRCBIN)circ-forward $(RUN) --dict $(DDIR) -o $@ $(DATA)/tokens.circ

# ---- node and edge scores over the dictionaries' features and error nodes
$(SDIR)/scores.circ: $(DSTAMP) $(DATA)/tokens.circ $(EDIR)/dict-eval.circ
	@mkdir -p $(@D)
	$(CIRCBIN)circ-score $(RUN) --method $(METHOD) --dict $(DDIR) $(if $(filter feature-ig,$(METHOD)),--steps $(STEPS)) --node-threshold $(NODE_THRESHOLD) --batch $(BATCH) -o $@ $(DATA)/tokens.circ

# ---- the circuit: the nodes above PRUNE_NODE_THRESHOLD (none: every node),
# then the top K edges between them (circ-prune(1), Feature graphs); ROC AUC
# over every edge of the feature graph against the truth
$(CDIR)/circuit.circ: $(SDIR)/scores.circ
	@mkdir -p $(@D)
	$(CIRCBIN)circ-prune --top-n $(K) $(if $(PRUNE_NODE_THRESHOLD),--node-threshold $(PRUNE_NODE_THRESHOLD)) $(if $(TRUTH),--truth $(TRUTH) --report $(CDIR)/roc.json) -o $@ $<

# ---- Marks et al.'s evaluation (circ-patch --dict): the nodes outside the
# circuit mean-ablated at each position; faithfulness and completeness of
# the circuit, and the curve over node fractions of the score ranking
$(CDIR)/faithfulness.circ: $(CDIR)/circuit.circ $(DATA)/tokens.circ
	$(CIRCBIN)circ-patch $(RUN) --dict $(DDIR) --circuit $< -o $@ $(DATA)/tokens.circ

$(SDIR)/curve.circ: $(SDIR)/scores.circ $(DATA)/tokens.circ
	$(CIRCBIN)circ-patch $(RUN) --dict $(DDIR) --curve $< -o $@ $(DATA)/tokens.circ

# ---- pictures (render): the curve, and the circuit when circ-render draws
# feature graphs
$(SDIR)/curve.svg: $(SDIR)/curve.circ
	$(CIRCBIN)circ-render --format curve-svg --curve $< --title "sva: faithfulness by circuit size ($(METHOD))" -o $@

$(CDIR)/circuit.svg: $(CDIR)/circuit.circ $(SDIR)/scores.circ
	$(CIRCBIN)circ-render --format svg --scores $(SDIR)/scores.circ --title "sva feature circuit ($(METHOD), top $(K))" -o $@ $<

$(CDIR)/circuit.html: $(CDIR)/circuit.circ $(SDIR)/scores.circ
	$(CIRCBIN)circ-render --format html --scores $(SDIR)/scores.circ --title "sva feature circuit ($(METHOD), top $(K))" -o $@ $<

# ---- the report: the settings, the dictionaries' reconstruction, the
# circuit's size, faithfulness and completeness, the ROC AUC against the
# truth, the curve; jq -e fails on anything missing (never "null")
ROC_LINE = jq -er '"against the truth: ROC AUC \(.auc) (\(.n_truth) true edges), TPR \(.tpr), FPR \(.fpr)"' $(CDIR)/roc.json;
$(CDIR)/report.txt: $(EDIR)/dict-eval.circ $(CDIR)/circuit.circ $(CDIR)/faithfulness.circ $(SDIR)/curve.circ
	$(ATOMIC) $@; { \
	echo "task sva, model $(MODEL), dictionaries $(DDIR), $(N) examples, seed $(SEED)"; \
	echo "$(METHOD) scores (steps $(STEPS), node threshold $(NODE_THRESHOLD)), top-n $(K) edges$(if $(PRUNE_NODE_THRESHOLD), between nodes above $(PRUNE_NODE_THRESHOLD)), mean ablation per position"; \
	$(CIRCBIN)circ-cat --no-header $(EDIR)/dict-eval.circ | jq -ers 'map(select(.fvu != null)) | "dictionaries: \(length), worst FVU \(map(.fvu) | max)"'; \
	$(CIRCBIN)circ-cat --no-header $(CDIR)/circuit.circ | jq -ers '"circuit: \(map(select(.node)) | length) nodes, \(map(select(.edge)) | length) edges"'; \
	$(CIRCBIN)circ-cat --no-header $(CDIR)/faithfulness.circ | jq -ers 'map(select(.faithfulness != null)) | last | "faithfulness \(.faithfulness), completeness \(.completeness) (\(.n_nodes) nodes)"'; \
	$(if $(TRUTH),$(ROC_LINE)) \
	$(CIRCBIN)circ-cat --no-header $(SDIR)/curve.circ | jq -ers '"curve (fraction of nodes: faithfulness): " + (map(select(.faithfulness != null) | "\(.fraction): \(.faithfulness * 1000 | round / 1000)") | join(", "))'; \
	} >"$$tmp"; atomic_commit

.PRECIOUS: $(DATA)/dataset.jsonl $(DATA)/tokens.circ $(DATA)/sae-corpus-n$(SAE_N).circ $(EDIR)/dict-eval.circ $(SDIR)/scores.circ \
	$(SDIR)/curve.circ $(SDIR)/curve.svg $(CDIR)/circuit.circ $(CDIR)/faithfulness.circ \
	$(CDIR)/circuit.svg $(CDIR)/circuit.html $(CDIR)/report.txt

clean-run:
	rm -rf $(DATA)
