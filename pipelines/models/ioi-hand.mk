# Pipeline defaults for fixtures/ioi-hand (see its SPEC.md): its own IOI-like
# sentences (BOS ... A ... B ... B ... END -> A), written by circ-fixture; the
# known circuit has 6 edges.
MODEL_TASK := ioi
ifeq ($(TASK),ioi)
DATASET_CMD ?= $(CIRCBIN)circ-fixture ioi-hand --examples $(N) --seed $(SEED)
K ?= 12
endif
