# pipelines/methods.mk — every discovery method on every hand-built fixture,
# compared in one markdown table (`make methods-table`, or
# `make -f pipelines/methods.mk`):
#
#   | fixture | method | ROC AUC | edges | faithfulness | CPR | CMD | time (s) |
#
#   ROC AUC       of the method's edge ranking against the fixture's known
#                 circuit (circ-prune --truth: scores, or ACDC's tested
#                 changes; untested edges rank last)
#   edges         size of the circuit evaluated: the top-n circuit at the
#                 known circuit's size for score methods and Edge Pruning
#                 (--target-edges), ACDC's own circuit (tau TAU)
#   faithfulness  of that circuit (circ-patch --circuit)
#   CPR, CMD      areas of the faithfulness curves (circ-patch --curve, signed
#                 and --absolute ranking), for methods that score every edge;
#                 "-" for ACDC and Edge Pruning, which give one circuit
#   time          wall seconds of the discovery step alone (scores, ACDC or
#                 Edge Pruning), measured on this machine; the CPU model line
#                 is printed under the table
#
# Methods: exact, eap, eap-ig, acdc (circ's order), acdc-reference (ACDC in
# the reference implementation's order, --acdc-order reference), and cd-t
# and edge-pruning when the tools have them (`circ-score --help` lists cd-t,
# `circ-prune --help` --edge-pruning). Fixtures: every model `circ-fixture --list` names (its
# directory under fixtures/ when shipped, else written into the run
# directory) whose known circuit exists.
#
# Each (fixture, method) cell is one make of this file (target `cell`), run
# by GNU parallel with JOBS jobs at a time: JOBS=1 (the default) keeps the
# times comparable; more jobs share the cores and inflate them. Every file is
# written through a temporary and renamed (the tools' -o, pipelines/atomic.sh),
# and a rerun with the same settings reuses every cell.
#
# Settings: FIXTURES, METHODS, N (examples, default 32), SEED, STEPS (eap-ig),
# TAU (acdc), THREADS, RUNS, JOBS.

# where these files are: they run from any directory
PIPELINES := $(dir $(lastword $(MAKEFILE_LIST)))
N ?= 32
SEED ?= 0
STEPS ?= 5
TAU ?= 0.01
BATCH ?= 16
THREADS ?=
RUNS ?= runs
JOBS ?= 1
include $(PIPELINES)tools.mk

SHELL = /bin/bash
.SHELLFLAGS = -o pipefail -ec
.SECONDARY:
.SUFFIXES:
ATOMIC := . $(PIPELINES)atomic.sh
# seconds since $$t0 (set by t0=$$(date +%s.%N))
ELAPSED = awk -v a="$$t0" -v b="$$(date +%s.%N)" 'BEGIN { printf "%.3f\n", b - a }'

FIXTURES ?= $(shell $(CIRCBIN)circ-fixture --list | awk '{print $$1}')
# each help read whole by make, then searched word by word (piped into grep -q,
# a method went missing from the table now and then)
HAS_CDT := $(if $(filter cd-t,$(shell $(CIRCBIN)circ-score --help 2>/dev/null)),cd-t)
HAS_EP := $(if $(filter --edge-pruning,$(shell $(CIRCBIN)circ-prune --help 2>/dev/null)),edge-pruning)
HAS_REF := $(if $(filter --acdc-order,$(shell $(CIRCBIN)circ-prune --help 2>/dev/null)),acdc-reference)
METHODS ?= exact eap eap-ig acdc $(HAS_REF) $(HAS_CDT) $(HAS_EP)
SCORE_METHODS := exact eap eap-ig eap-ig-activations cd-t

D := $(RUNS)/methods/n$(N)-s$(SEED)
THR := $(if $(THREADS),--threads $(THREADS))
# a fixture's model: shipped, or written by circ-fixture
model = $(if $(wildcard fixtures/$(1)/truth.jsonl),fixtures/$(1),$(D)/models/$(1))

.PHONY: table cell models
table: $(D)/table.md
	@cat $<

models: $(foreach f,$(FIXTURES),$(call model,$(f))/truth.jsonl)
$(D)/models/%/truth.jsonl: $(CIRCBIN)circ-fixture
	@mkdir -p $(@D)
	$(CIRCBIN)circ-fixture $* --out $(@D)

# a row.json as a table row: numbers to 3 decimals, "-" for none
ROW = def r: if type == "number" then . * 1000 | round / 1000 | tostring else "-" end; \
	"| \(.fixture) | \(.method) | \(.auc | r) | \(.edges) | \(.faithfulness | r) | \(.cpr | r) | \(.cmd | r) | \(.time | r) |"
# every cell by GNU parallel, then the table; the settings go to every cell
CELL_VARS = N=$(N) SEED=$(SEED) STEPS=$(STEPS) TAU=$(TAU) BATCH=$(BATCH) RUNS=$(RUNS) \
	CIRCBIN=$(CIRCBIN) $(if $(THREADS),THREADS=$(THREADS))
$(D)/table.md: models $(PIPELINES)methods.mk
	@: "$${SHELL:=/bin/sh}"; export SHELL; \
	parallel --jobs $(JOBS) --halt now,fail=1 --line-buffer \
		$(MAKE) --no-print-directory -s -f $(PIPELINES)methods.mk $(CELL_VARS) \
		FIXTURE={1} METHOD={2} cell ::: $(FIXTURES) ::: $(METHODS)
	@$(ATOMIC) $@; { \
	echo "| fixture | method | ROC AUC | edges | faithfulness | CPR | CMD | time (s) |"; \
	echo "|---|---|---|---|---|---|---|---|"; \
	for f in $(FIXTURES); do for m in $(METHODS); do \
		jq -r '$(ROW)' $(D)/$$f/$$m/row.json; \
	done; done; \
	echo; \
	echo "$(N) examples (seed $(SEED)) per fixture; acdc tau $(TAU), loss kl; eap-ig $(STEPS) steps;" \
		"$(if $(THREADS),$(THREADS),$${CIRC_THREADS:-$$(nproc)}) threads; $$(lscpu | sed -n 's/^Model name: *//p')"; \
	} >"$$tmp"; atomic_commit

# ---- one cell: FIXTURE and METHOD ----
ifdef FIXTURE
MODEL := $(call model,$(FIXTURE))
F := $(D)/$(FIXTURE)
C := $(F)/$(METHOD)
TRUTH := $(MODEL)/truth.jsonl
COMMON := --model $(MODEL) --batch $(BATCH) $(THR)
ntruth = $$($(CIRCBIN)circ-cat --no-header $(TRUTH) | wc -l)
cell: $(C)/row.json

$(F)/tokens.circ: $(TRUTH)
	@mkdir -p $(@D)
	$(ATOMIC) $@; $(CIRCBIN)circ-fixture $(FIXTURE) --examples $(N) --seed $(SEED) | \
		$(CIRCBIN)circ-tokenize --vocab-dir $(MODEL) -o "$$tmp"; atomic_commit

# the discovery step, timed; $(C)/time.txt holds its wall seconds
ifneq ($(filter $(METHOD),$(SCORE_METHODS)),)
$(C)/scores.circ: $(F)/tokens.circ
	@mkdir -p $(@D)
	$(ATOMIC) $(C)/time.txt; t0=$$(date +%s.%N); \
	$(CIRCBIN)circ-score $(COMMON) --method $(METHOD) $(if $(filter eap-ig%,$(METHOD)),--steps $(STEPS)) -o $@ $<; \
	$(ELAPSED) >"$$tmp"; atomic_commit
$(C)/circuit.circ: $(C)/scores.circ
	$(CIRCBIN)circ-prune --top-n $(ntruth) --truth $(TRUTH) --report $(C)/roc.json -o $@ $<
$(C)/curve.circ: $(C)/scores.circ $(F)/tokens.circ
	$(CIRCBIN)circ-patch $(COMMON) --curve $< -o $@ $(F)/tokens.circ 2>/dev/null
$(C)/curve-abs.circ: $(C)/scores.circ $(F)/tokens.circ
	$(CIRCBIN)circ-patch $(COMMON) --curve $< --absolute -o $@ $(F)/tokens.circ 2>/dev/null
CURVES := $(C)/curve.circ $(C)/curve-abs.circ
else
$(C)/circuit.circ: $(F)/tokens.circ
	@mkdir -p $(@D)
	$(ATOMIC) $(C)/time.txt; t0=$$(date +%s.%N); \
	$(CIRCBIN)circ-prune $(PRUNE_$(METHOD)) \
		$(COMMON) --truth $(TRUTH) --report $(C)/roc.json -o $@ $< 2>$(C)/stderr.txt || \
		{ cat $(C)/stderr.txt >&2; exit 1; }; \
	$(ELAPSED) >"$$tmp"; atomic_commit
CURVES :=
PRUNE_acdc = --acdc --tau $(TAU)
PRUNE_acdc-reference = --acdc --acdc-order reference --tau $(TAU)
PRUNE_edge-pruning = --edge-pruning --target-edges $(ntruth)
endif

$(C)/faithfulness.circ: $(C)/circuit.circ $(F)/tokens.circ
	$(CIRCBIN)circ-patch $(COMMON) --circuit $< -o $@ $(F)/tokens.circ 2>/dev/null

$(C)/row.json: $(C)/faithfulness.circ $(CURVES)
	$(ATOMIC) $@; \
	faith=$$($(CIRCBIN)circ-cat --no-header $(C)/faithfulness.circ | jq -c 'select(.summary)'); \
	cpr=null; cmd=null; \
	$(if $(CURVES),cpr=$$($(CIRCBIN)circ-cat --no-header $(C)/curve.circ | jq -s '.[-1].cpr'); \
	cmd=$$($(CIRCBIN)circ-cat --no-header $(C)/curve-abs.circ | jq -s '.[-1].cmd');) \
	jq -n --arg f $(FIXTURE) --arg m $(METHOD) --argjson roc "$$(cat $(C)/roc.json)" \
		--argjson faith "$$faith" --argjson cpr "$$cpr" --argjson cmd "$$cmd" \
		--argjson time "$$(cat $(C)/time.txt)" \
		'{fixture: $$f, method: $$m, auc: $$roc.auc, edges: $$faith.n_edges, faithfulness: $$faith.faithfulness, cpr: $$cpr, cmd: $$cmd, time: $$time}' \
		>"$$tmp"; \
	atomic_commit
endif
