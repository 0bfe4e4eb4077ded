#!/bin/sh
# ACDC edge tests on the GPT-2-small shape (issue 6, "Speed"): each test is
# one patched forward of the dataset resumed at the tested receiver's stage
# (circ_patcher_eval, as circ_acdc_run makes it). The goal: a test costs no
# more than recomputing the layers above the receiver, measured as the
# unpatched forward resumed at the same stage (and, for reference, the
# share (2L+1-s)/(2L+1) of a full forward).
#
# Circuits as ACDC holds them when it tests an edge of a stage-s receiver
# (the receivers above s are decided, everything below s is kept):
#   spread   5% of the decided edges kept at random, over every receiver
#            (the size of ACDC's circuits, the patcher's worst case);
#   circuit  half the edges among 20% of the nodes kept (about 2%), the
#            other receivers fully patched, as ACDC leaves dropped nodes;
#   early    every decided edge kept: only the tested edge is patched.
#
# Environment: THREADS (default 2), ACDC_N (prompts, default 16),
# ACDC_REPS (best of, default 3; each kind of test timed in turn with
# its own unpatched forwards, ratios of the two).
set -eu
B=${B:-build/release}
THREADS=${THREADS:-2}
N=${ACDC_N:-16}
REPS=${ACDC_REPS:-3}
bin=$B/bench/attrib_bench
d=$(mktemp -d)
trap 'rm -rf "$d"' EXIT

$bin make "$d/m"
$bin acdc "$d/m" "$THREADS" "$REPS" "$N" >"$d/acdc"
awk -v thr="$THREADS" '
$1 == "acdc_examples" { n = $2 }
$1 == "acdc_full_fwd" { full = $2 }
$1 == "acdc_stage" { st[++k] = $0 }
$1 == "acdc_all" { e = $2; tb = $3; for (j = 0; j < 3; j++) { tt[j] = $(4 + 2 * j); rt[j] = $(5 + 2 * j) } }
$1 == "acdc_worst" { for (j = 0; j < 3; j++) { nm[j] = $(2 + 3 * j); w[j] = $(3 + 3 * j); ws[j] = $(4 + 3 * j) } }
END {
	S = 25
	printf "acdc    GPT-2 small shape, %d prompts x 16 tokens, %d threads; full forward %.3fs\n", n, thr, full
	printf "        seconds per edge test, and its ratio to the unpatched forward resumed at the same stage\n"
	printf "        receiver     stage  fwd from s  (share)     spread  ratio   circuit  ratio     early  ratio\n"
	for (i = 1; i <= k; i++) {
		split(st[i], f, " ")
		s = f[2]
		printf "        %-11s  %5d  %9.3fs  (%5.3fs)", f[3], s, f[4], full * (S - s) / S
		for (j = 0; j < 3; j++)
			printf "  %7.3fs  %5.2f", f[5 + 2 * j], f[6 + 2 * j]
		printf "\n"
	}
	printf "      a whole run (%d edges, each tested at its receiver stage; the forwards alone %.0fs):\n", e, tb
	for (j = 0; j < 3; j++)
		printf "        %-8s %6.0fs = %5.1f edges tested/s; test / forward %.2fx overall, worst %.2fx (stage %d)  %s\n",
		    nm[j], tt[j], e / tt[j], rt[j], w[j], ws[j], (rt[j] <= 1.1 ? "ok" : "MISSED")
	printf "      goal: a test costs no more than recomputing the layers above its receiver (overall ratio <= 1.10)\n"
}' "$d/acdc"
