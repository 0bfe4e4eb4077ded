# pipelines/demo.mk — the main job, `make run`: a full circuit discovery on
# the shipped hand-built induction model, whose circuit is known from its
# construction, so the report can say how well discovery recovered it.
#
#   dataset -> tokens -> EAP-IG scores -> top-K circuit -> faithfulness, CPR/CMD,
#   ROC AUC against the known circuit -> SVG, HTML, report
# and the same circuit found by ACDC.
#
# Settings are those of pipelines/common.mk; MODEL=... runs another model.
PIPELINES := $(dir $(lastword $(MAKEFILE_LIST)))
MODEL ?= fixtures/induction-hand
METHOD ?= eap-ig
N ?= 64
SEED ?= 0

.PHONY: run
run:
	@$(MAKE) --no-print-directory -s -f $(PIPELINES)induction.mk MODEL=$(MODEL) METHOD=$(METHOD) N=$(N) SEED=$(SEED) report
	@$(MAKE) --no-print-directory -s -f $(PIPELINES)induction.mk MODEL=$(MODEL) PRUNE=acdc N=$(N) SEED=$(SEED) report
