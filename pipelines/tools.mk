# pipelines/tools.mk — which circ tools the pipelines run (included by
# common.mk, sva.mk and methods.mk): CIRCBIN, the build tree's bin/ when the
# current directory has one, else the directory of the circ on PATH (an
# installed circ). Prerequisites name the tools by that path, so a rebuilt
# tool reruns what it made.
CIRCBIN ?= $(if $(wildcard bin/circ),bin/,$(dir $(shell command -v circ 2>/dev/null)))
ifeq ($(strip $(CIRCBIN)),)
$(error no circ tools: build them here (make) or put the installed ones on PATH)
endif
