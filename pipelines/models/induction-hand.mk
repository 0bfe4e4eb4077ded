# Pipeline defaults for fixtures/induction-hand (see its SPEC.md): the
# induction recipe over its 31 ordinary tokens, 12 repeated once; the known
# circuit has 4 edges.
MODEL_TASK := induction
ifeq ($(TASK),induction)
DATASET_ARGS ?= --len 12 --vocab-lo 0 --vocab-hi 31
K ?= 8
endif
