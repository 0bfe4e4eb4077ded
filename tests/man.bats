#!/usr/bin/env bats
# Man pages: each tool has one with the standard sections, every --help flag
# appears in it, and its EXAMPLES (lines starting "$ ") run successfully.
load helper

tools() {
	for b in bin/circ bin/circ-*; do
		basename "$b"
	done
}

@test "every tool has a man page with the standard sections" {
	for t in $(tools); do
		[ -f "man/$t.1" ] || { echo "missing man/$t.1"; return 1; }
		for s in NAME SYNOPSIS DESCRIPTION OPTIONS INPUT OUTPUT "EXIT STATUS" EXAMPLES "SEE ALSO"; do
			grep -q "^\.SH \"\?$s\"\?\$" "man/$t.1" || { echo "man/$t.1: no section $s"; return 1; }
		done
	done
}

@test "every --help flag is in the man page" {
	for t in $(tools); do
		flags=$("$t" --help | grep -o -- '--[a-z0-9][a-z0-9-]*' | sort -u)
		page=$(sed 's/\\-/-/g; s/\\f[BIRP]//g' "man/$t.1")
		for f in $flags; do
			grep -q -- "$f" <<<"$page" || { echo "man/$t.1 lacks $f"; return 1; }
		done
	done
}

@test "the EXAMPLES of every man page run" {
	for t in $(tools); do
		ex=$(sed -n '/^\.SH EXAMPLES/,/^\.SH /p' "man/$t.1" | sed -n 's/^\$ //p' | sed 's/\\-/-/g; s/\\e/\\/g')
		while IFS= read -r cmd; do
			[ -n "$cmd" ] || continue
			run bash -o pipefail -c "$cmd"
			# 141: a producer stopped by `| head` (SIGPIPE) under pipefail is fine
			[ "$status" -eq 0 ] || [ "$status" -eq 141 ] || { echo "man/$t.1 example failed ($status): $cmd"; echo "$output"; return 1; }
		done <<<"$ex"
	done
}
