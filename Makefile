# circ: build, test, install. GNU make.
#
#   make deps      install Debian packages and npm test references (needs root or sudo)
#   make           build bin/ (circ and circ-<tool>)
#   make check     deps + build + every test (unit, Bats); SANITIZE=address,undefined works
#   make run       the main job: a full circuit discovery on a shipped fixture model
#   make bench     speed side by side with PyTorch / zstd / js-tiktoken
#   make fixtures  rebuild the shipped fixture models in place
#   make install   PREFIX=/usr/local DESTDIR= (tools, man pages, share/circ/pipelines)

PREFIX ?= /usr/local
BINDIR ?= $(PREFIX)/bin
MANDIR ?= $(PREFIX)/share/man
DATADIR ?= $(PREFIX)/share/circ

CC ?= cc
OPT ?= -O2
CFLAGS ?= $(OPT) -g
WARN = -Wall -Wextra -Wpedantic -Wshadow -Wstrict-prototypes -Wmissing-prototypes \
       -Wvla -Wformat=2 -Wno-unused-parameter -Wno-missing-field-initializers -Wpointer-arith -Wundef
ifeq ($(CI),true)
WERROR ?= 1
endif
ifeq ($(WERROR),1)
WARN += -Werror
endif
ARCHFLAGS ?= -march=x86-64-v2 -mtune=native
ifneq ($(shell uname -m),x86_64)
ARCHFLAGS =
endif
ALL_CFLAGS = -std=c11 -D_GNU_SOURCE -pthread -Ilib $(ARCHFLAGS) $(WARN) $(CFLAGS)
LDLIBS = -lmsgpackc -lzstd -ljansson -lutf8proc -lopenblas -lpthread -lm
# oneDNN (libdnnl-dev) for --compute bf16: built in where its header is;
# without it the option is refused at run time (CIRC_DNNL=0 leaves it out).
CIRC_DNNL ?= $(if $(wildcard /usr/include/oneapi/dnnl/dnnl.h),1,0)
ifeq ($(CIRC_DNNL),1)
ALL_CFLAGS += -DCIRC_HAVE_DNNL
LDLIBS += -ldnnl -lgomp
endif

# Each sanitizer set gets its own build directory, so switching never mixes objects.
ifdef SANITIZE
B = build/san-$(subst $(comma),-,$(SANITIZE))
ALL_CFLAGS += -fsanitize=$(SANITIZE) -fno-omit-frame-pointer -fno-sanitize-recover=all
LDFLAGS += -fsanitize=$(SANITIZE)
else
B = build/release
endif
comma := ,

LIB_SRC = $(sort $(wildcard lib/*.c))
LIB_OBJ = $(LIB_SRC:%.c=$(B)/%.o)
# Every cmd/*.c is a tool; code the tools share (option tables, usage errors,
# progress on a terminal, the session helper) lives in cmd/cli/, built into
# libcirccli.a. lib/ never uses it.
CMD_SRC = $(sort $(wildcard cmd/*.c))
CLI_SRC = $(sort $(wildcard cmd/cli/*.c))
CLI_OBJ = $(CLI_SRC:%.c=$(B)/%.o)
TOOLS = $(filter-out circ,$(notdir $(basename $(CMD_SRC))))
BINS = $(B)/bin/circ $(TOOLS:%=$(B)/bin/circ-%)
UNIT_SRC = $(sort $(wildcard tests/unit/*.c))
UNIT_BIN = $(UNIT_SRC:tests/unit/%.c=$(B)/tests/%)
BENCH_SRC = $(sort $(wildcard bench/*.c))
BENCH_BIN = $(BENCH_SRC:bench/%.c=$(B)/bench/%)

all: 
.PHONY: fixtures fixtures-dicts check-sanitize all deps deps-run check unit bats run bench bench-acdc-full install uninstall clean format format-check fuzz fuzz-ci
.DELETE_ON_ERROR:
.SECONDARY:
# bin/ is a link to the flavour built last, so tests always run what was just built.
all: $(BINS)
	@ln -sfn $(B)/bin bin

deps:
	@scripts/deps.sh all
deps-run:
	@scripts/deps.sh run

$(B)/%.o: %.c
	@mkdir -p $(@D)
	$(CC) $(ALL_CFLAGS) -MMD -MP -c $< -o $@

$(B)/libcirc.a: $(LIB_OBJ)
	@rm -f $@
	ar rcs $@ $^

$(B)/libcirccli.a: $(CLI_OBJ)
	@rm -f $@
	ar rcs $@ $^

$(B)/bin/circ: $(B)/cmd/circ.o $(B)/libcirccli.a $(B)/libcirc.a
	@mkdir -p $(@D)
	$(CC) $(ALL_CFLAGS) $(LDFLAGS) -o $@ $^ $(LDLIBS)
$(B)/bin/circ-%: $(B)/cmd/%.o $(B)/libcirccli.a $(B)/libcirc.a
	@mkdir -p $(@D)
	$(CC) $(ALL_CFLAGS) $(LDFLAGS) -o $@ $^ $(LDLIBS)
$(B)/tests/%: $(B)/tests/unit/%.o $(B)/libcirc.a
	$(CC) $(ALL_CFLAGS) $(LDFLAGS) -o $@ $^ $(LDLIBS)
$(B)/bench/%: $(B)/bench/%.o $(B)/libcirc.a
	@mkdir -p $(@D)
	$(CC) $(ALL_CFLAGS) $(LDFLAGS) -o $@ $^ $(LDLIBS)


# Each unit test is a target of its own, so that `make -j unit` runs them side
# by side (check does, with each test's output kept together).
UNIT_RUN = $(UNIT_BIN:%=%.run)
.PHONY: $(UNIT_RUN)
$(UNIT_RUN): %.run: % | all
	@echo "unit: $*"; CIRC_ROOT=$(CURDIR) $*
unit: $(UNIT_RUN)

BATS_FILES = $(sort $(wildcard tests/*.bats))
BATS_JOBS ?= 2
bats: all
	bats $(if $(filter-out 1,$(BATS_JOBS)),--jobs $(BATS_JOBS)) $(BATS_FILES)

# With CI=true (as .ci/run sets), check also reruns everything sanitized.
# Builds and unit tests run JOBS at a time (every core), each test's output
# together (-O); Bats runs BATS_JOBS files' tests at a time.
JOBS ?= $(shell nproc 2>/dev/null || echo 1)
PAR = -j$(or $(strip $(JOBS)),1) -Otarget
check: deps
	@$(MAKE) --no-print-directory $(PAR) all
	@$(MAKE) --no-print-directory $(PAR) unit
	@$(MAKE) --no-print-directory bats
ifeq ($(CI),true)
ifndef SANITIZE
	@$(MAKE) --no-print-directory format-check
	@$(MAKE) --no-print-directory check-sanitize
	@$(MAKE) --no-print-directory $(PAR) fuzz-ci
	@$(MAKE) --no-print-directory all
endif
endif

# Leaks are checked in the unit tests; the tools exit on their error paths
# with memory still allocated (as git's die() does), so Bats runs them with
# leak detection off, and every other ASan/UBSan check on.
check-sanitize:
	@$(MAKE) --no-print-directory $(PAR) SANITIZE=address,undefined all
	@$(MAKE) --no-print-directory $(PAR) SANITIZE=address,undefined unit
	@ASAN_OPTIONS=detect_leaks=0 $(MAKE) --no-print-directory SANITIZE=address,undefined bats

run: deps-run
	@$(MAKE) --no-print-directory all
	@$(MAKE) --no-print-directory -f pipelines/demo.mk

bench: deps all $(BENCH_BIN)
	@B=$(B) bench/run.sh

# Every discovery method on every hand-built fixture: a markdown table of ROC
# AUC, faithfulness, CPR, CMD and time (pipelines/methods.mk).
.PHONY: methods-table
methods-table: all
	@$(MAKE) --no-print-directory -f pipelines/methods.mk

# ACDC at full scale (GPT-2 small shape, 100 prompts, every edge decided):
# tens of minutes, so not part of make bench (bench/acdc_full.sh).
bench-acdc-full: all $(BENCH_BIN)
	@B=$(B) bench/acdc_full.sh

# Rebuild the shipped fixture models in place (fixtures/README.md): the
# hand-built ones from their specification, the trained ones with the
# commands that made them (bytes depend on the thread count and the CPU's
# OpenBLAS kernels; the evaluation in each README.md agrees to a few digits).
FIXTURE_TRAIN_induction = --steps 6000 --lr 3e-3 --inner 64 --min-rep 2 --max-rep 2 --focus 3500
FIXTURE_TRAIN_induction_llama = --arch llama --kv-heads 2 --attn-bias --qk-bias-sd 1 $(FIXTURE_TRAIN_induction) --seed 1
fixtures: all
	bin/circ-fixture induction-hand --out fixtures/induction-hand
	bin/circ-fixture ioi-hand --out fixtures/ioi-hand
	bin/circ-train induction --out fixtures/induction-trained $(FIXTURE_TRAIN_induction) --threads 2
	bin/circ-train induction --out fixtures/induction-llama $(FIXTURE_TRAIN_induction_llama) --threads 2
	bin/circ-train ioi --out fixtures/ioi-trained --threads 2
	bin/circ-train greater-than --out fixtures/greater-than-trained --threads 2
	$(MAKE) fixtures-dicts

# The dictionaries shipped with induction-trained (fixtures/README.md): a
# TopK SAE on the residual before layer 1 and TopK transcoders for both MLPs,
# trained on 90,000 induction sequences (2.16M tokens) of that model's recipe.
DICT_CORPUS = $(B)/induction-dict-corpus.tok
DICT_TRAIN = --model fixtures/induction-trained --tokens --arch topk --k 16 --d-sae 512 --ctx-len 24 --seqs 32 --batch 512 --buffer 8192 --steps 4000 --threads 2
fixtures-dicts: all
	mkdir -p fixtures/induction-trained/saes fixtures/induction-trained/transcoders
	bin/circ-dataset induction --len 12 --vocab-lo 0 --vocab-hi 256 --n 90000 --seed 11 | bin/circ-tokenize --model-dir fixtures/induction-trained >$(DICT_CORPUS)
	bin/circ-train sae $(DICT_TRAIN) --hook blocks.1.hook_resid_pre --out fixtures/induction-trained/saes/resid_pre1 $(DICT_CORPUS)
	bin/circ-train transcoder $(DICT_TRAIN) --hook blocks.0.ln2.hook_normalized --out fixtures/induction-trained/transcoders/tc0 $(DICT_CORPUS)
	bin/circ-train transcoder $(DICT_TRAIN) --hook blocks.1.ln2.hook_normalized --out fixtures/induction-trained/transcoders/tc1 $(DICT_CORPUS)
	rm -f $(DICT_CORPUS)

install: all
	install -d $(DESTDIR)$(BINDIR) $(DESTDIR)$(MANDIR)/man1
	install -m 755 $(BINS) $(DESTDIR)$(BINDIR)/
	install -m 644 man/*.1 $(DESTDIR)$(MANDIR)/man1/
	install -d $(DESTDIR)$(DATADIR)/pipelines/models
	install -m 644 pipelines/*.mk $(DESTDIR)$(DATADIR)/pipelines/
	install -m 755 pipelines/*.sh $(DESTDIR)$(DATADIR)/pipelines/
	install -m 644 pipelines/models/*.mk $(DESTDIR)$(DATADIR)/pipelines/models/

uninstall:
	rm -f $(addprefix $(DESTDIR)$(BINDIR)/,$(notdir $(BINS)))
	rm -f $(addprefix $(DESTDIR)$(MANDIR)/man1/,$(notdir $(wildcard man/*.1)))
	rm -rf $(DESTDIR)$(DATADIR)/pipelines
	-rmdir $(DESTDIR)$(DATADIR) 2>/dev/null

FORMAT_SRC = $(wildcard lib/*.[ch] cmd/*.c cmd/cli/*.[ch] tests/unit/*.[ch])
format:
	clang-format -i $(FORMAT_SRC)
format-check:
	@clang-format --dry-run --Werror $(FORMAT_SRC)

clean:
	rm -rf build bin

-include $(LIB_OBJ:.o=.d) $(CLI_OBJ:.o=.d) $(CMD_SRC:%.c=$(B)/%.d) $(UNIT_SRC:%.c=$(B)/%.d) $(BENCH_SRC:%.c=$(B)/%.d)

# Fuzzing with libFuzzer (clang): one target per parser of untrusted input,
# tests/fuzz/fuzz_<name>.c, each with a seed corpus tests/fuzz/corpus-<name>/:
#   stream            the stream reader: sniffing, zstd, msgpack, JSON lines
#   jsonl             the JSON-lines reader and the JSON face of records
#   safetensors       the safetensors header parser (model.safetensors)
#   config            config.json reading
#   vocab             vocab.json and merges.txt
#   tokenizer_json    tokenizer.json
#   records           circ's record streams as the tools read them: scores,
#                     circuits, curves, tokens (by the header's kind)
#   dict              a dictionary's cfg.json (SAELens's format)
# The library is built once with -fsanitize=fuzzer-no-link,address,undefined
# (undefined behaviour stops the run, as in the sanitized tests).
# `make fuzz [FUZZ_TARGET=name]` runs one target until stopped (FUZZ_SECONDS=N
# to bound it); new inputs are kept in build/fuzz/new-<name>.
FUZZ_TARGETS = stream jsonl safetensors config vocab tokenizer_json records dict
FUZZ_TARGET ?= stream
FUZZ_SECONDS ?= 0
FUZZ_CFLAGS = -std=c11 -D_GNU_SOURCE -Ilib $(ARCHFLAGS) -g -O1 -fno-omit-frame-pointer -fno-sanitize-recover=all
FUZZ_SAN = address,undefined
FUZZ_LIB_OBJ = $(LIB_SRC:lib/%.c=build/fuzz/lib/%.o)
FUZZ_BINS = $(FUZZ_TARGETS:%=build/fuzz/fuzz_%)
# the largest input each target is given (a safetensors header or a tokenizer needs more room)
FUZZ_MAXLEN_stream = 4096
FUZZ_MAXLEN_jsonl = 4096
FUZZ_MAXLEN_safetensors = 8192
FUZZ_MAXLEN_config = 2048
FUZZ_MAXLEN_vocab = 16384
FUZZ_MAXLEN_tokenizer_json = 16384
FUZZ_MAXLEN_records = 8192
FUZZ_MAXLEN_dict = 4096
build/fuzz/lib/%.o: lib/%.c
	@mkdir -p $(@D)
	clang $(FUZZ_CFLAGS) -fsanitize=fuzzer-no-link,$(FUZZ_SAN) -MMD -MP -c $< -o $@
build/fuzz/libcirc.a: $(FUZZ_LIB_OBJ)
	@rm -f $@
	ar rcs $@ $^
build/fuzz/fuzz_%: tests/fuzz/fuzz_%.c tests/fuzz/fuzz_file.h tests/fuzz/fuzz_bpe.h build/fuzz/libcirc.a
	clang $(FUZZ_CFLAGS) -fsanitize=fuzzer,$(FUZZ_SAN) -o $@ $< build/fuzz/libcirc.a $(LDLIBS)
-include $(FUZZ_LIB_OBJ:.o=.d)
fuzz: build/fuzz/fuzz_$(FUZZ_TARGET)
	@mkdir -p build/fuzz/new-$(FUZZ_TARGET)
	build/fuzz/fuzz_$(FUZZ_TARGET) -max_len=$(FUZZ_MAXLEN_$(FUZZ_TARGET)) \
		$(if $(filter-out 0,$(FUZZ_SECONDS)),-max_total_time=$(FUZZ_SECONDS)) \
		build/fuzz/new-$(FUZZ_TARGET) tests/fuzz/corpus-$(FUZZ_TARGET)
# A bounded run for CI: each target replays its committed corpus and then
# searches for FUZZ_CI_SECONDS_<name> seconds (104 s in all; 52 s on two
# cores, as check runs it). Each log
# goes to a file, not through a pipe, so a crash fails the target (and CI)
# with its report shown; a crashing input is left in build/fuzz/ as crash-*.
FUZZ_CI_SECONDS_stream = 18
FUZZ_CI_SECONDS_jsonl = 14
FUZZ_CI_SECONDS_safetensors = 12
FUZZ_CI_SECONDS_config = 10
FUZZ_CI_SECONDS_vocab = 13
FUZZ_CI_SECONDS_tokenizer_json = 13
FUZZ_CI_SECONDS_records = 14
FUZZ_CI_SECONDS_dict = 10
# One target per fuzzer, so that `make -j fuzz-ci` (check's) runs them side by side.
FUZZ_CI = $(FUZZ_TARGETS:%=fuzz-ci-%)
.PHONY: $(FUZZ_CI)
fuzz-ci: $(FUZZ_CI)
$(FUZZ_CI): fuzz-ci-%: build/fuzz/fuzz_%
	@mkdir -p build/fuzz/new-$*
	@if build/fuzz/fuzz_$* -max_len=$(or $(FUZZ_MAXLEN_$*),4096) \
		-max_total_time=$(or $(FUZZ_CI_SECONDS_$*),10) -timeout=10 \
		-rss_limit_mb=2048 -artifact_prefix=build/fuzz/ -print_final_stats=1 \
		build/fuzz/new-$* tests/fuzz/corpus-$* >build/fuzz/$*.log 2>&1; then \
		echo "fuzz $*: $$(grep -o 'stat::number_of_executed_units: *[0-9]*' build/fuzz/$*.log | grep -o '[0-9]*$$') runs in $(or $(FUZZ_CI_SECONDS_$*),10) s, no crash"; \
	else \
		echo "fuzz $*: FAILED (build/fuzz/$*.log):"; tail -n 60 build/fuzz/$*.log; exit 1; \
	fi
