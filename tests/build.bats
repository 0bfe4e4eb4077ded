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
