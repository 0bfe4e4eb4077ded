#!/bin/sh
# ACDC at full scale (issue 15): a whole `circ-prune --acdc` run on the
# GPT-2-small shape (12 layers, 12 heads, d 768, random weights) with 100
# prompts x 16 tokens, timed end to end with /usr/bin/time (loading, the
# clean and corrupted runs, every edge test, writing the circuit).
#
# With random weights and the default tau ACDC drops the edges into logits
# early, disconnects most nodes and tests about 1,200 edges; a user's IOI
# run on GPT-2 keeps its receivers connected and tests all 32,491. So tau is
# set below the least KL change of an edge into logits patched alone
# (attrib_bench acdc-tau): ACDC then keeps every edge into logits, every node
# reaches the logits, and every edge is tested.
#
# Measured end to end, 2026-12-06 (Intel(R) Xeon(R) Processor, AVX-512,
# 2 threads, nice -n 5, machine shared with other jobs: load average 5.0 on
# average over the run, 3.4-7.5; the command got 70% of one core on
# average): --screen 1 (an approximation, eap-ig, below), tau 2.29e-6:
# the attribution took 80 s; 31,657 edges were screened (one forward) and
# 816 tested one by one (817 tests), 32,473 of 32,491 edges decided (18
# into receivers left unreachable), 422 kept. Whole command: wall 3455 s
# (57.6 min, over the 30-minute goal on this loaded machine), user 2407 s,
# sys 26 s, peak RSS 4.33 GB. On 2 idle cores the 2433 CPU-s would take
# about 20-25 min (NOT measured). Exact ACDC at this size: about 12,600
# full forwards' worth, 5-6 h. An earlier partial run with --group 64
# (killed at 52 min) extrapolated to 28-58 min.
#
# Measured end to end, 2026-12-06 (AMD EPYC, Zen 4, AVX-512, 2 threads, the
# machine otherwise idle: load 1.1-1.9): --screen 1, tau 2.29e-6: the
# attribution took 26 s; 817 tests decided 32,473 edges (31,657 of them
# below the screen), 18 went untested with a receiver whose node no longer
# reached the logits (ACDC's rule), 422 kept. Whole command: wall 1458 s
# (24.3 min: under the 30-minute goal), user 2733 s, sys 13 s, peak RSS
# 4.33 GB.
#
# Measured end to end, 2026-12-07 (AMD EPYC, Zen 5, AVX-512,
# OPENBLAS_CORETYPE=Haswell, 2 threads, idle but for a few compiles):
# --screen 1, tau 2.29e-6: the attribution took 25 s; the same 817 tests,
# 32,473 edges decided, 18 dropped untested, 422 kept. Whole command: wall
# 1156 s (19.3 min: under the goal), user 1768 s, sys 28 s, peak RSS 4.62 GB.
#
#   bench/acdc_full.sh            the full-scale run (make bench-acdc-full)
#   bench/acdc_full.sh fixtures   --group G against exact ACDC on the fixtures
#
# Environment: THREADS (default 2), ACDC_N (prompts, default 100),
# ACDC_GROUP (--group; default 1), ACDC_SCREEN (--screen; default 1, an
# approximation: ACDC_SCREEN=0 ACDC_GROUP=1 is exact ACDC, hours at this
# size), ACDC_TAU (default: half the least single-edge change into
# logits), ACDC_GOAL (seconds, default 1800), ACDC_OUT (keep the run's
# circuit, log and time in this directory), ACDC_GROUPS (fixtures: the G
# compared, default "4 16 64"), ACDC_SCREENS (fixtures: the F compared,
# "F+gG" with --group G, default "0.5 1 4 1+g16"), ACDC_FIXTURE_TAU (fixtures: default 0.01),
# ACDC_OLD (fixtures: another circ-prune whose
# default decisions must equal this one's, e.g. main's build).
set -eu
B=${B:-build/release}
THREADS=${THREADS:-2}
bin=$B/bench/attrib_bench
export PATH="$PWD/bin:$PATH" LC_ALL=C CIRC_NO_PROGRESS=1
d=$(mktemp -d)
trap 'rm -rf "$d"' EXIT

cpu() {
	lscpu | sed -n 's/^Model name: *//p' | head -1
}

# One line per decision: edge and kept, sorted (the order of tests aside).
kept_of() {
	circ-cat --no-header "$1" | jq -r '"\(.edge) \(.kept)"' | sort
}

# One row of the fixtures table: fixture $1, group $2 (0: exact), model $3,
# tokens $4, from $d/g$2.log, $d/g$2.circ and circ-prune's stderr in $d/err.
row() {
	tests=$(sed -n 's/.*acdc: \([0-9]*\) edge tests.*/\1/p; s/.*decided by \([0-9]*\) \(group \)*tests.*/\1/p' "$d/err")
	edges=$(circ-cat --no-header "$d/g$2.log" | wc -l)
	kept=$(circ-cat --no-header "$d/g$2.circ" | wc -l)
	kept_of "$d/g$2.log" >"$d/k$2"
	differ=$(diff "$d/k0" "$d/k$2" | sed -n 's/^[<>] \([^ ]*\) .*/\1/p' | sort -u | wc -l)
	circ-cat --no-header "$d/g$2.circ" | jq -r .edge | sort >"$d/c$2"
	cdiff=$(comm -3 "$d/c0" "$d/c$2" | wc -l)
	faith=$(circ-patch --model "$3" --circuit "$d/g$2.circ" -o /dev/null "$4" 2>&1 |
	    sed -n 's/.*faithfulness \([-0-9.e]*\).*/\1/p')
	auc=$(circ-cat "$d/g$2.circ" | head -1 | jq -r '.eval.auc // "-"')
	printf "  %-21s %-7s %6s %6s %6s %7s %6s %8.4f %8s\n" "$1" "$([ "$2" = 0 ] && echo exact || echo "$2")" \
	    "$tests" "$edges" "$kept" "$differ" "$cdiff" "$faith" "$auc"
}

# The options of configuration $1 of the fixtures table: 0 exact, gG --group
# G, sF --screen F, sF+gG both.
opt_of() {
	case $1 in
	0) ;;
	s*+g*)
		f=${1%+g*}
		echo "--screen ${f#s} --group ${1#*+g}"
		;;
	s*) echo "--screen ${1#s}" ;;
	g*) echo "--group ${1#g}" ;;
	*) echo "--group $1" ;;
	esac
}

fixtures() {
	groups=${ACDC_GROUPS:-"4 16 64"}
	screens=${ACDC_SCREENS:-"0.5 1 4 1+g16"}
	configs="0 $(for g in $groups; do printf "g%s " "$g"; done)$(for f in $screens; do printf "s%s " "$f"; done)"
	ftau=${ACDC_FIXTURE_TAU:-0.01}
	printf "acdc --group G (gG) and --screen F (sF) against exact ACDC on the fixtures (32 examples, seed 1; tau %s, kl)\n" "$ftau"
	printf "  %-21s %-7s %6s %6s %6s %7s %6s %8s %8s\n" fixture config tests edges kept differ cdiff faithful auc
	for m in induction-hand ioi-hand ioi-trained induction-trained greater-than-trained; do
		case $m in
		*-hand) circ-fixture "$m" --examples 32 --seed 1 >"$d/$m.jsonl" ;;
		*)
			task=${m%-trained}
			args=
			[ "$task" = induction ] && args="--len 12 --vocab-lo 0 --vocab-hi 256"
			# shellcheck disable=SC2086
			circ-dataset "$task" --n 32 --seed 1 --model-dir "fixtures/$m" $args >"$d/$m.jsonl"
			;;
		esac
		circ-tokenize --model-dir "fixtures/$m" -o "$d/$m.tok" "$d/$m.jsonl"
		truth=
		[ -f "fixtures/$m/truth.jsonl" ] && truth="--truth fixtures/$m/truth.jsonl"
		if [ -n "${ACDC_OLD:-}" ]; then
			"$ACDC_OLD" --acdc --model "fixtures/$m" --tau "$ftau" --log "$d/old.log" -o "$d/old.circ" \
			    "$d/$m.tok" 2>/dev/null
		fi
		for g in $configs; do
			opt=$(opt_of "$g")
			# shellcheck disable=SC2086
			circ-prune --acdc --model "fixtures/$m" --tau "$ftau" $opt $truth --log "$d/g$g.log" \
			    -o "$d/g$g.circ" "$d/$m.tok" 2>"$d/err"
			row "$m" "$g" "fixtures/$m" "$d/$m.tok"
		done
		if [ -n "${ACDC_OLD:-}" ]; then
			if cmp -s "$d/old.log" "$d/g0.log" || [ "$(circ-cat --no-header "$d/old.log")" = "$(circ-cat --no-header "$d/g0.log")" ]; then
				printf "  %-21s exact: the same decisions as %s\n" "$m" "$ACDC_OLD"
			else
				printf "  %-21s exact: decisions DIFFER from %s\n" "$m" "$ACDC_OLD"
			fi
		fi
	done
	# A random model of the fixtures' size (4 layers, 4 heads, d 64, ioi-trained's
	# vocabulary and prompts), at the tau the full-scale run uses: half the
	# least change of a head or MLP into logits (from a run that keeps them all).
	m=random-4x4
	circ-fixture --random --vocab-dir fixtures/ioi-trained --layers 4 --heads 4 --embd 64 --ctx 32 \
	    --out "$d/$m" >/dev/null
	circ-dataset ioi --n 32 --seed 1 --model-dir fixtures/ioi-trained |
	    circ-tokenize --model-dir fixtures/ioi-trained -o "$d/$m.tok"
	circ-prune --acdc --model "$d/$m" --tau 0 --log "$d/t.log" -o /dev/null "$d/$m.tok" 2>/dev/null
	rtau=$(circ-cat --no-header "$d/t.log" | jq -s -r \
	    '[.[] | select((.edge | endswith("->logits")) and (.edge | startswith("input") | not)) | .change] | min / 2')
	printf "  %s at tau %s (half the least change of a head or MLP into logits):\n" "$m" "$rtau"
	for g in $configs; do
		opt=$(opt_of "$g")
		# shellcheck disable=SC2086
		circ-prune --acdc --model "$d/$m" --tau "$rtau" $opt --log "$d/g$g.log" -o "$d/g$g.circ" \
		    "$d/$m.tok" 2>"$d/err"
		row "$m" "$g" "$d/$m" "$d/$m.tok"
	done
	printf "  differ: edges whose decision (or whether it was decided) is not exact ACDC's;\n"
	printf "  cdiff: edges in one circuit and not the other (after dangling edges are pruned)\n"
}

full() {
	N=${ACDC_N:-100}
	G=${ACDC_GROUP:-1}
	S=${ACDC_SCREEN:-1}
	GOAL=${ACDC_GOAL:-1800}
	$bin make "$d/m" >/dev/null
	if [ "$N" -lt 100 ]; then
		head -n $((N + 1)) "$d/m/tokens.jsonl" >"$d/tok"
	else
		cp "$d/m/tokens.jsonl" "$d/tok"
	fi
	if [ -n "${ACDC_TAU:-}" ]; then
		tau=$ACDC_TAU
		taunote="ACDC_TAU"
	else
		$bin acdc-tau "$d/m" "$THREADS" 1 "$N" >"$d/tau"
		least=$(awk '$1 == "acdc_tau_min" { print $2 }' "$d/tau")
		tau=$(awk -v x="$least" 'BEGIN { printf "%.3g", x / 2 }')
		taunote="half the least single-edge KL change into logits, $least"
	fi
	opt=
	[ "$G" -gt 1 ] && opt="--group $G"
	[ "$S" != 0 ] && opt="$opt --screen $S"
	out=${ACDC_OUT:-$d}
	mkdir -p "$out"
	# shellcheck disable=SC2086
	/usr/bin/time -v bin/circ-prune --acdc --model "$d/m" --tau "$tau" --threads "$THREADS" $opt \
	    --log "$out/decisions.circ" -o "$out/circuit.circ" "$d/tok" 2>"$out/time.txt"
	wall=$(sed -n 's/.*Elapsed (wall clock) time (h:mm:ss or m:ss): //p' "$out/time.txt" |
	    awk -F: '{ s = 0; for (i = 1; i <= NF; i++) s = s * 60 + $i; print s }')
	user=$(sed -n 's/.*User time (seconds): //p' "$out/time.txt")
	sys=$(sed -n 's/.*System time (seconds): //p' "$out/time.txt")
	rss=$(sed -n 's/.*Maximum resident set size (kbytes): //p' "$out/time.txt")
	line=$(sed -n 's/^circ-prune: acdc:/acdc:/p' "$out/time.txt")
	decided=$(circ-cat --no-header "$out/decisions.circ" | wc -l)
	kept=$(circ-cat --no-header "$out/circuit.circ" | wc -l)
	total=$(circ-cat "$out/circuit.circ" | head -1 | jq -r .n_edges_total)
	printf "acdc full scale   CPU: %s, %d threads; load average before: %s\n" "$(cpu)" "$THREADS" "$LOAD0"
	printf "  GPT-2 small shape (random weights), %d prompts x 16 tokens, kl, resample, tau %s (%s)\n" "$N" "$tau" "$taunote"
	if [ "$G" -gt 1 ] || [ "$S" != 0 ]; then
		printf "  %s: an APPROXIMATION of ACDC (see man circ-prune); ACDC_SCREEN=0 ACDC_GROUP=1 is exact\n" "${opt# }"
	else
		printf "  exact ACDC\n"
	fi
	printf "%s\n" "$line" | sed 's/^/  /'
	unreach=$(printf "%s\n" "$line" | sed -n 's/.*, \([0-9]*\) edges dropped untested with a receiver left unreachable.*/\1/p')
	unreach=${unreach:-0}
	printf "  edges decided %d of %d: %d logged (each by a test, or with --screen by the screen's tests),\n" \
	    "$((decided + unreach))" "$total" "$decided"
	printf "    %d dropped untested with their receiver (its node left with no path to the logits); circuit %s edges\n" \
	    "$unreach" "$kept"
	printf "  load average after: %s\n" "$(cut -d' ' -f1-3 /proc/loadavg)"
	printf "  whole command: wall %.0f s, user %s s, sys %s s, peak RSS %.2f GB\n" "$wall" "$user" "$sys" "$(echo "$rss" | awk '{ print $1 / 1048576 }')"
	printf "  goal: all %d edges decided in under %d s on 2 cores: %s\n" "$total" "$GOAL" \
	    "$([ "$((decided + unreach))" -eq "$total" ] && awk -v w="$wall" -v g="$GOAL" 'BEGIN { exit !(w < g) }' && echo ok || echo MISSED)"
}

LOAD0=$(cut -d' ' -f1-3 /proc/loadavg)
case ${1:-full} in
fixtures) fixtures ;;
full) full ;;
*)
	echo "usage: bench/acdc_full.sh [full|fixtures]" >&2
	exit 2
	;;
esac
