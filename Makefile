# circ: build, test, install. GNU make.
#
#   make deps      install Debian packages and npm test references (needs root or sudo)
#   make           build bin/ (circ and circ-<tool>)
#   make check     deps + build + every test (unit, Bats); SANITIZE=address,undefined works
#   make run       the main job: a full circuit discovery on a shipped fixture model
#   make bench     speed side by side with PyTorch / zstd / js-tiktoken
#   make fixtures  rebuild the shipped fixture models in place
#   make install   PREFIX=/usr/local DESTDIR=

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
CMD_SRC = $(sort $(wildcard cmd/*.c))
TOOLS = $(filter-out circ,$(notdir $(basename $(CMD_SRC))))
BINS = $(B)/bin/circ $(TOOLS:%=$(B)/bin/circ-%)
UNIT_SRC = $(sort $(wildcard tests/unit/*.c))
UNIT_BIN = $(UNIT_SRC:tests/unit/%.c=$(B)/tests/%)
BENCH_SRC = $(sort $(wildcard bench/*.c))
BENCH_BIN = $(BENCH_SRC:bench/%.c=$(B)/bench/%)

all: 
.PHONY: fixtures check-sanitize all deps deps-run check unit bats run bench install uninstall clean format format-check fuzz fuzz-ci
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

$(B)/bin/circ: $(B)/cmd/circ.o $(B)/libcirc.a
	@mkdir -p $(@D)
	$(CC) $(ALL_CFLAGS) $(LDFLAGS) -o $@ $^ $(LDLIBS)
$(B)/bin/circ-%: $(B)/cmd/%.o $(B)/libcirc.a
	@mkdir -p $(@D)
	$(CC) $(ALL_CFLAGS) $(LDFLAGS) -o $@ $^ $(LDLIBS)
$(B)/tests/%: $(B)/tests/unit/%.o $(B)/libcirc.a
	$(CC) $(ALL_CFLAGS) $(LDFLAGS) -o $@ $^ $(LDLIBS)
$(B)/bench/%: $(B)/bench/%.o $(B)/libcirc.a
	@mkdir -p $(@D)
	$(CC) $(ALL_CFLAGS) $(LDFLAGS) -o $@ $^ $(LDLIBS)


unit: all $(UNIT_BIN)
	@set -e; for t in $(UNIT_BIN); do echo "unit: $$t"; CIRC_ROOT=$(CURDIR) $$t; done

BATS_FILES = $(sort $(wildcard tests/*.bats))
BATS_JOBS ?= 2
bats: all
	bats $(if $(filter-out 1,$(BATS_JOBS)),--jobs $(BATS_JOBS)) $(BATS_FILES)

# With CI=true (as .ci/run sets), check also reruns everything sanitized.
check: deps
	@$(MAKE) --no-print-directory all
	@$(MAKE) --no-print-directory unit
	@$(MAKE) --no-print-directory bats
ifeq ($(CI),true)
ifndef SANITIZE
	@$(MAKE) --no-print-directory format-check
	@$(MAKE) --no-print-directory check-sanitize
	@$(MAKE) --no-print-directory fuzz-ci
	@$(MAKE) --no-print-directory all
endif
endif

# Leaks are checked in the unit tests; the tools exit on their error paths
# with memory still allocated (as git's die() does), so Bats runs them with
# leak detection off, and every other ASan/UBSan check on.
check-sanitize:
	@$(MAKE) --no-print-directory SANITIZE=address,undefined all unit
	@ASAN_OPTIONS=detect_leaks=0 $(MAKE) --no-print-directory SANITIZE=address,undefined bats

run: deps-run
	@$(MAKE) --no-print-directory all
	@$(MAKE) --no-print-directory -f pipelines/demo.mk

bench: deps all $(BENCH_BIN)
	@B=$(B) bench/run.sh

# Rebuild the shipped fixture models in place (fixtures/README.md): the
# hand-built ones from their specification, the trained ones with the
# commands that made them (bytes depend on the thread count and the CPU's
# OpenBLAS kernels; the evaluation in each README.md agrees to a few digits).
FIXTURE_TRAIN_induction = --steps 6000 --lr 3e-3 --inner 64 --min-rep 2 --max-rep 2 --focus 3500
fixtures: all
	bin/circ-fixture induction-hand --out fixtures/induction-hand
	bin/circ-fixture ioi-hand --out fixtures/ioi-hand
	bin/circ-train induction --out fixtures/induction-trained $(FIXTURE_TRAIN_induction) --threads 2
	bin/circ-train ioi --out fixtures/ioi-trained --threads 2
	bin/circ-train greater-than --out fixtures/greater-than-trained --threads 2

install: all
	install -d $(DESTDIR)$(BINDIR) $(DESTDIR)$(MANDIR)/man1
	install -m 755 $(BINS) $(DESTDIR)$(BINDIR)/
	install -m 644 man/*.1 $(DESTDIR)$(MANDIR)/man1/

uninstall:
	rm -f $(addprefix $(DESTDIR)$(BINDIR)/,$(notdir $(BINS)))
	rm -f $(addprefix $(DESTDIR)$(MANDIR)/man1/,$(notdir $(wildcard man/*.1)))

FORMAT_SRC = $(wildcard lib/*.[ch] cmd/*.c tests/unit/*.[ch])
format:
	clang-format -i $(FORMAT_SRC)
format-check:
	@clang-format --dry-run --Werror $(FORMAT_SRC)

clean:
	rm -rf build bin

-include $(LIB_OBJ:.o=.d) $(CMD_SRC:%.c=$(B)/%.d) $(UNIT_SRC:%.c=$(B)/%.d) $(BENCH_SRC:%.c=$(B)/%.d)

# Fuzzing the stream reader with libFuzzer (clang). `make fuzz` runs until
# stopped (FUZZ_SECONDS=N to bound it); new inputs are kept in the corpus.
FUZZ_SECONDS ?= 0
FUZZ_CFLAGS = -std=c11 -D_GNU_SOURCE -Ilib -g -O1 -fsanitize=fuzzer,address,undefined
FUZZ_BIN = build/fuzz/fuzz_stream
FUZZ_LIB_SRC = lib/util.c lib/stream.c lib/json.c
$(FUZZ_BIN): tests/fuzz/fuzz_stream.c $(FUZZ_LIB_SRC) lib/stream.h lib/json.h lib/util.h
	@mkdir -p $(@D)
	clang $(FUZZ_CFLAGS) -o $@ tests/fuzz/fuzz_stream.c $(FUZZ_LIB_SRC) -lmsgpackc -lzstd -ljansson -lm
fuzz: $(FUZZ_BIN)
	@mkdir -p build/fuzz/new
	$(FUZZ_BIN) -max_len=4096 $(if $(filter-out 0,$(FUZZ_SECONDS)),-max_total_time=$(FUZZ_SECONDS)) \
		build/fuzz/new tests/fuzz/corpus
# A short bounded run for CI: the committed corpus plus 30 seconds of new inputs.
fuzz-ci: $(FUZZ_BIN)
	@mkdir -p build/fuzz/new
	$(FUZZ_BIN) -max_len=4096 -max_total_time=30 -print_final_stats=0 build/fuzz/new tests/fuzz/corpus 2>&1 | tail -3
