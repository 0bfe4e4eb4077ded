#!/usr/bin/env bats
# The bad-input catalogue (tests/catalogue/README.md): each case's exit
# status and message, and nothing crashed, hung or left behind.
load helper

run_catalogue() { # file
	local f="$ROOT/tests/catalogue/$1" line id rest want_rc want_msg cmd d rc n=0 fail=0
	while IFS= read -r line || [ -n "$line" ]; do
		[[ -z "$line" || "$line" == \#* ]] && continue
		id=${line%% :: *}
		rest=${line#* :: }
		want_rc=${rest%% :: *}
		rest=${rest#* :: }
		want_msg=${rest%% :: *}
		cmd=${rest#* :: }
		n=$((n + 1))
		d=$(mktemp -d "$T/case.XXXXXX")
		rc=0
		(cd "$d" && ROOT="$ROOT" timeout -k 5 60 bash -c "set -o pipefail; source '$ROOT/tests/catalogue/lib.bash'; $cmd") \
			</dev/null >"$T/out" 2>"$T/err" || rc=$?
		local why=""
		if [ "$rc" -ne "$want_rc" ]; then
			why="exit $rc, want $want_rc"
		elif ! grep -qF -- "$want_msg" "$T/err"; then
			why="stderr lacks the message"
		elif grep -qE 'AddressSanitizer|runtime error:|LeakSanitizer' "$T/err"; then
			why="sanitizer report"
		elif [ -n "$(find "$d" -name '*.tmp.*' -print -quit)" ]; then
			why="temporary left behind: $(find "$d" -name '*.tmp.*' | head -1)"
		fi
		if [ -n "$why" ]; then
			fail=$((fail + 1))
			printf '# %s: %s\n#   command: %s\n#   want: %s\n' "$id" "$why" "$cmd" "$want_msg" >&3
			sed 's/^/#   stderr: /' "$T/err" | head -5 >&3
		fi
		rm -rf "$d"
	done <"$f"
	echo "# $1: $n cases, $fail failed" >&3
	[ "$n" -gt 0 ] && [ "$fail" -eq 0 ]
}

@test "catalogue: streams" { run_catalogue streams.cases; }
@test "catalogue: tools" { run_catalogue tools.cases; }
@test "catalogue: files and pipelines" { run_catalogue files.cases; }
@test "catalogue: tokenizer and model directories" { run_catalogue tokenizer.cases; }
@test "catalogue: sparse dictionaries" { run_catalogue dict.cases; }
@test "catalogue: attribution graphs" { run_catalogue trace.cases; }
