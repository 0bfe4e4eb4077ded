#!/usr/bin/env bats
# The build as users meet it: install and uninstall under DESTDIR with the
# circ- prefix (never shadowing a system command), and the front door.
load helper

@test "make install and uninstall honour PREFIX and DESTDIR" {
	run make -s install DESTDIR="$T/root" PREFIX=/opt/circ
	assert_success
	for t in circ circ-cat circ-score circ-patch circ-prune circ-render circ-tokenize circ-harvest; do
		[ -x "$T/root/opt/circ/bin/$t" ] || { echo "missing $t"; return 1; }
	done
	[ -f "$T/root/opt/circ/share/man/man1/circ-score.1" ]
	# every installed binary carries the prefix
	for f in "$T/root/opt/circ/bin/"*; do
		case $(basename "$f") in circ | circ-*) ;; *) echo "unprefixed: $f"; return 1 ;; esac
	done
	"$T/root/opt/circ/bin/circ" cat --version
	run make -s uninstall DESTDIR="$T/root" PREFIX=/opt/circ
	assert_success
	[ -z "$(ls -A "$T/root/opt/circ/bin")" ]
	[ ! -e "$T/root/opt/circ/share/circ" ]
}

@test "the installed pipelines run from any directory with the installed tools" {
	make -s install DESTDIR="$T/root" PREFIX=/opt/circ
	P="$T/root/opt/circ/share/circ/pipelines"
	[ -f "$P/ioi.mk" ] && [ -f "$P/common.mk" ] && [ -x "$P/report.sh" ] && [ -x "$P/sweep.sh" ]
	[ -f "$P/models/induction-hand.mk" ]
	mkdir "$T/m" && cp -r fixtures/induction-hand "$T/m/"
	mkdir "$T/work"
	cd "$T/work"
	# only the installed tools: no bin/ here, the build tree off PATH
	PATH="$T/root/opt/circ/bin:/usr/bin:/bin" run make --no-print-directory -s -f "$P/induction.mk" \
		MODEL="$T/m/induction-hand" N=8 METHOD=eap report
	assert_success
	[[ "$output" == *"ROC AUC"* ]]
	# the installed models/induction-hand.mk applied (K 8, its dataset settings)
	[ -f runs/induction/induction-hand/n8-s0/eap-resample/top-n8/circuit.svg ]
	# no tools here or on PATH: said before anything runs
	PATH=/usr/bin:/bin run make --no-print-directory -s -f "$P/ioi.mk" MODEL="$T/m/induction-hand" N=8 report
	[ "$status" -eq 2 ]
	[[ "$output" == *"no circ tools: build them here (make) or put the installed ones on PATH"* ]]
	# a sweep through the installed sweep.sh finds its pipelines
	PATH="$T/root/opt/circ/bin:/usr/bin:/bin" run "$P/sweep.sh" -m "eap exact" -- MODEL="$T/m/induction-hand" N=8
	assert_success
	[ -f runs/induction/induction-hand/n8-s0/exact-resample/top-n8/report.txt ]
}

@test "circ --help and circ(1) list every tool, and circ runs each" {
	run bin/circ --help
	assert_success
	tools=$output
	page=$(sed 's/\\-/-/g; s/\\f[BIRP]//g' man/circ.1)
	for b in bin/circ-*; do
		t=${b#bin/circ-}
		grep -q "^  $t " <<<"$tools" || { echo "circ --help lacks $t"; return 1; }
		grep -qw -- "$t" <<<"$(grep -A3 '^Tools:' <<<"$page")" || { echo "circ(1) lacks $t"; return 1; }
		bin/circ "$t" --version | grep -q "^circ-$t "
	done
	run bin/circ help score
	assert_success
	[[ "$output" == "usage: circ-score "* ]]
	run bin/circ help
	assert_success
	[[ "$output" == "usage: circ <tool>"* ]]
	run bin/circ help nosuch
	[ "$status" -eq 2 ]
	# and nothing that is not a tool
	[ "$(grep -c '^  [a-z]' <<<"$tools")" -eq "$(ls bin/circ-* | wc -l)" ]
}

@test "every tool answers --help and --version, and a bad flag exits 2" {
	for b in bin/circ-*; do
		run --separate-stderr "$b" --help
		assert_success
		[[ "$output" == usage:* ]] || { echo "$b --help: $output"; return 1; }
		run --separate-stderr "$b" --version
		assert_success
		run --separate-stderr "$b" --no-such-flag
		[ "$status" -eq 2 ] || { echo "$b: bad flag gave $status"; return 1; }
	done
}

@test "lib/ only computes: no messages, exits or option parsing (allocation failure aside)" {
	# A message on stderr is allowed only for running out of memory, an exit
	# only right after one, and _exit only in util's SIGBUS guard of a
	# mapping (a fault inside a read has nobody to return an error to), and
	# CIRC_ASSERT's report of a programmer error before it aborts. The
	# headers only document.
	run awk '
		/stderr|stdout\)|[^_a-z]exit\(|circ_die|circ_usage_error|getopt|"opt\.h"|"patchopt\.h"/ {
			ok = (/fprintf\(stderr, .*out of memory/ || (/[^_a-z]exit\(1\)/ && prev ~ /out of memory/) ||
			      /fprintf\(stderr, .*assertion failed/ || (/fflush\(stderr\)/ && prev ~ /assertion failed/))
			if (!ok && $0 !~ /<stdout>/) { print FILENAME ":" FNR ": " $0; bad = 1 }
		}
		/_exit\(/ && FILENAME != "lib/util.c" { print FILENAME ":" FNR ": " $0; bad = 1 }
		{ prev = $0 }
		END { exit bad }' lib/*.c
	[ "$status" -eq 0 ] || { echo "$output"; return 1; }
}
