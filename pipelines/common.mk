# pipelines/common.mk — a full circuit discovery run, shared by the task
# pipelines (induction.mk, ioi.mk, greater-than.mk, docstring.mk):
#
#   dataset -> tokens -> scores -> circuit -> faithfulness, curves, ROC -> SVG, HTML, report
#
# Every intermediate stream is a file under a run directory named by the
# settings it depends on, so a rerun with the same settings does nothing and
# a changed setting reruns only what depends on it:
#
#   $(RUNS)/<task>/<model>/n<N>-s<SEED>/              dataset.jsonl tokens.circ
#     <method>-<ablation>[-steps<S>]/                 scores.circ curve*.circ
#       <prune><K>/                                   circuit.circ faithfulness.circ
#                                                     circuit.svg circuit.html report.txt
#     acdc-<metric>-tau<TAU>-<ablation>/              circuit.circ decisions.circ ...
#     edge-pruning-<metric>-n<K>-steps<EP_STEPS>-seed<EP_SEED>-<ablation>/
#                                                     circuit.circ training.circ ...
#
# PRUNE=acdc and PRUNE=edge-pruning run the model themselves (no scores);
# their loss is ACDC_METRIC (kl, or the task's metric); edge pruning trains
# toward K edges (--target-edges K) for EP_STEPS steps from EP_SEED.
#
# Every target is written through a temporary of its recipe's own and
# renamed into place (the tools' -o; pipelines/atomic.sh for what a shell
# command writes), so a failed or interrupted run leaves no half-written
# target, and runs in parallel over one run directory (pipelines/sweep.sh,
# several makes) each finish: whichever rename comes last leaves the same
# whole file. For that reason make never deletes a target itself: not after
# a failed recipe (no .DELETE_ON_ERROR: it would delete the target that a
# parallel run just completed), not on an interrupt (.PRECIOUS).
#
# Per-model defaults (DATASET_ARGS, DATASET_CMD, K, ...) come from
# pipelines/models/<model directory name>.mk for the shipped fixtures, or from
# circ.mk inside a model directory; settings on the command line win. Those
# files name the task their settings are for (MODEL_TASK) and set them only
# when TASK is that task: another task runs on the model with the defaults,
# and the model's known circuit (truth.jsonl), being another task's, is not
# scored against (TRUTH=file on the command line still is).

# where these files are (the source tree's pipelines/, or an installed
# share/circ/pipelines/): they run from any directory
PIPELINES := $(dir $(lastword $(MAKEFILE_LIST)))
TASK ?= induction
MODEL ?= fixtures/induction-hand
MODEL_NAME := $(notdir $(abspath $(MODEL)))
-include $(PIPELINES)models/$(MODEL_NAME).mk
-include $(MODEL)/circ.mk
N ?= 100
SEED ?= 0
# METHOD: eap, eap-ig, eap-ig-activations, exact or cd-t (cd-t ignores ABLATION);
# PRUNE: top-n, threshold, greedy, acdc or cd-t (K sources per round)
METHOD ?= eap-ig
STEPS ?= 5
ABLATION ?= resample
PRUNE ?= top-n
K ?= 20
TAU ?= 0.01
ACDC_METRIC ?= kl
EP_STEPS ?= 1000
EP_SEED ?= 1
BATCH ?= 16
THREADS ?=
RUNS ?= runs
DATASET_ARGS ?=
MODEL_TASK ?=
TRUTH ?= $(if $(filter-out $(TASK),$(MODEL_TASK)),,$(wildcard $(MODEL)/truth.jsonl))


include $(PIPELINES)tools.mk
TOOLS = $(addprefix $(CIRCBIN)circ-,dataset tokenize score prune patch render)

SHELL = /bin/bash
.SHELLFLAGS = -o pipefail -ec
.SECONDARY:
ATOMIC := . $(PIPELINES)atomic.sh
.SUFFIXES:

DATA := $(RUNS)/$(TASK)/$(MODEL_NAME)/n$(N)-s$(SEED)
SDIR := $(DATA)/$(METHOD)-$(ABLATION)$(if $(filter eap-ig eap-ig-activations,$(METHOD)),-steps$(STEPS))
# the prune modes that run the model instead of reading scores
MODEL_PRUNE := $(filter acdc edge-pruning,$(PRUNE))
ifeq ($(PRUNE),acdc)
CDIR := $(DATA)/acdc-$(ACDC_METRIC)-tau$(TAU)-$(ABLATION)
else ifeq ($(PRUNE),edge-pruning)
CDIR := $(DATA)/edge-pruning-$(ACDC_METRIC)-n$(K)-steps$(EP_STEPS)-seed$(EP_SEED)-$(ABLATION)
else
CDIR := $(SDIR)/$(PRUNE)$(K)
endif
MODEL_FILES := $(MODEL)/config.json $(MODEL)/model.safetensors
# THREADS empty: the tools' default (every core, or CIRC_THREADS); results are
# the same bytes for every thread count
COMMON := --model $(MODEL) --ablation $(ABLATION) --batch $(BATCH) $(if $(THREADS),--threads $(THREADS))

.PHONY: all scores circuit report clean-run
all: report
scores: $(SDIR)/scores.circ
circuit: $(CDIR)/circuit.circ
report: $(CDIR)/report.txt
	@cat $<

# A model may bring its own generator (DATASET_CMD); the default is circ-dataset.
DATASET_CMD ?= $(CIRCBIN)circ-dataset $(TASK) --n $(N) --seed $(SEED) --model-dir $(MODEL) $(DATASET_ARGS)

$(DATA)/dataset.jsonl: $(CIRCBIN)circ-dataset
	@mkdir -p $(@D)
	$(ATOMIC) $@; $(DATASET_CMD) >"$$tmp"; atomic_commit

$(DATA)/tokens.circ: $(DATA)/dataset.jsonl $(CIRCBIN)circ-tokenize $(MODEL)/vocab.json
	$(CIRCBIN)circ-tokenize --model-dir $(MODEL) -o $@ $<

$(SDIR)/scores.circ: $(DATA)/tokens.circ $(MODEL_FILES) $(CIRCBIN)circ-score
	@mkdir -p $(@D)
	$(CIRCBIN)circ-score $(COMMON) --method $(METHOD) $(if $(filter eap-ig eap-ig-activations,$(METHOD)),--steps $(STEPS)) -o $@ $<

$(SDIR)/curve.circ: $(SDIR)/scores.circ $(DATA)/tokens.circ $(CIRCBIN)circ-patch
	$(CIRCBIN)circ-patch $(COMMON) --curve $< -o $@ $(DATA)/tokens.circ

$(SDIR)/curve-abs.circ: $(SDIR)/scores.circ $(DATA)/tokens.circ $(CIRCBIN)circ-patch
	$(CIRCBIN)circ-patch $(COMMON) --curve $< --absolute -o $@ $(DATA)/tokens.circ

$(SDIR)/curve.svg: $(SDIR)/curve.circ $(CIRCBIN)circ-render
	$(CIRCBIN)circ-render --format curve-svg --curve $< --title "$(TASK): faithfulness by circuit size ($(METHOD))" -o $@

ifeq ($(PRUNE),acdc)
$(CDIR)/circuit.circ: $(DATA)/tokens.circ $(MODEL_FILES) $(CIRCBIN)circ-prune
	@mkdir -p $(@D)
	$(CIRCBIN)circ-prune --acdc $(COMMON) --tau $(TAU) --metric $(ACDC_METRIC) \
		--log $(CDIR)/decisions.circ $(if $(TRUTH),--truth $(TRUTH) --report $(CDIR)/roc.json) -o $@ $<
SCORES_FOR_RENDER :=
else ifeq ($(PRUNE),edge-pruning)
$(CDIR)/circuit.circ: $(DATA)/tokens.circ $(MODEL_FILES) $(CIRCBIN)circ-prune
	@mkdir -p $(@D)
	$(CIRCBIN)circ-prune --edge-pruning $(COMMON) --target-edges $(K) --steps $(EP_STEPS) \
		--seed $(EP_SEED) --metric $(ACDC_METRIC) --log $(CDIR)/training.circ \
		$(if $(TRUTH),--truth $(TRUTH) --report $(CDIR)/roc.json) -o $@ $<
SCORES_FOR_RENDER :=
else
$(CDIR)/circuit.circ: $(SDIR)/scores.circ $(CIRCBIN)circ-prune
	@mkdir -p $(@D)
	$(CIRCBIN)circ-prune --$(PRUNE) $(K) $(if $(TRUTH),--truth $(TRUTH) --report $(CDIR)/roc.json) -o $@ $<
SCORES_FOR_RENDER := --scores $(SDIR)/scores.circ
endif

$(CDIR)/faithfulness.circ: $(CDIR)/circuit.circ $(DATA)/tokens.circ $(CIRCBIN)circ-patch
	$(ATOMIC) $(CDIR)/faithfulness.log; \
	$(CIRCBIN)circ-patch $(COMMON) --circuit $< -o $@ $(DATA)/tokens.circ 2>"$$tmp" || { cat "$$tmp" >&2; exit 1; }; \
	atomic_commit

$(CDIR)/circuit.svg: $(CDIR)/circuit.circ $(CIRCBIN)circ-render
	$(CIRCBIN)circ-render --format svg $(SCORES_FOR_RENDER) --title "$(TASK) circuit ($(notdir $(CDIR)))" -o $@ $<

$(CDIR)/circuit.html: $(CDIR)/circuit.circ $(CIRCBIN)circ-render
	$(CIRCBIN)circ-render --format html $(SCORES_FOR_RENDER) --title "$(TASK) circuit ($(notdir $(CDIR)))" -o $@ $<

$(CDIR)/circuit.txt: $(CDIR)/circuit.circ $(CIRCBIN)circ-render
	$(CIRCBIN)circ-render --format text $(SCORES_FOR_RENDER) -o $@ $<

REPORT_INPUTS := $(CDIR)/faithfulness.circ $(CDIR)/circuit.svg $(CDIR)/circuit.html $(CDIR)/circuit.txt
ifeq ($(MODEL_PRUNE),)
REPORT_INPUTS += $(SDIR)/curve.circ $(SDIR)/curve-abs.circ $(SDIR)/curve.svg
endif
# With TRUTH the prune step writes roc.json beside the circuit. A circuit made
# by a run without TRUTH has none, and is not remade for a setting that is not
# part of its directory's name: the report says so instead of leaving it out.
ifneq ($(TRUTH),)
ifneq ($(wildcard $(CDIR)/circuit.circ),)
ifeq ($(wildcard $(CDIR)/roc.json),)
.PHONY: no-roc
$(CDIR)/report.txt: no-roc
no-roc:
	@echo "pipeline: $(CDIR)/circuit.circ was made without TRUTH (no roc.json); remove $(CDIR) to prune again against $(TRUTH)" >&2; exit 1
endif
endif
endif

$(CDIR)/report.txt: $(REPORT_INPUTS) $(PIPELINES)report.sh
	$(ATOMIC) $@; $(PIPELINES)report.sh "$(CIRCBIN)" "task $(TASK), model $(MODEL), $(N) examples, seed $(SEED)" \
		"$(if $(filter acdc,$(PRUNE)),acdc (tau $(TAU), loss $(ACDC_METRIC)),$(if $(filter edge-pruning,$(PRUNE)),edge pruning ($(K) edges, $(EP_STEPS) steps, loss $(ACDC_METRIC)),$(METHOD) scores, $(PRUNE) $(K))), $(ABLATION) ablation" \
		$(CDIR)/faithfulness.circ $(if $(MODEL_PRUNE),- -,$(SDIR)/curve.circ $(SDIR)/curve-abs.circ) \
		$(if $(TRUTH),$(CDIR)/roc.json,-) $(CDIR)/circuit.svg $(CDIR)/circuit.html >"$$tmp"; \
	atomic_commit

# Every target: written atomically, never to be deleted by make (see the top).
.PRECIOUS: $(DATA)/dataset.jsonl $(DATA)/tokens.circ $(SDIR)/scores.circ $(SDIR)/curve.circ \
	$(SDIR)/curve-abs.circ $(SDIR)/curve.svg $(CDIR)/circuit.circ $(CDIR)/faithfulness.circ \
	$(CDIR)/circuit.svg $(CDIR)/circuit.html $(CDIR)/circuit.txt $(CDIR)/report.txt

clean-run:
	rm -rf $(DATA)
