# circ-paths against tests/ref/tcircuit_ref.py, for tests/tcircuit.bats and
# tests/tcircuit_family.bats: $T scratch, IDS the prompt.

tc_routes() { # model set up down
	circ-paths --model "$1" --dict "$2" --tokens $IDS --routes "$3->$4" --json >"$T/c.jsonl"
	tests/validate.py schemas/transcoder-paths.schema.json "$T/c.jsonl"
	/usr/bin/python3 tests/ref/tcircuit_ref.py routes "$1" "$2" $IDS "$3" "$4" >"$T/r.json"
	run /usr/bin/python3 tests/ref/tcircuit_ref.py compare-routes "$T/c.jsonl" "$T/r.json"
	echo "$output"
	[ "$status" -eq 0 ]
	# routes that carry nothing would pass against anything
	jq -e '[.routes[] | fabs] | max > 1e-4' "$T/r.json" >/dev/null
}

tc_paths() { # model set target beam depth [abs]
	local a=()
	[ "${6:-}" = abs ] && a=(--abs)
	circ-paths --model "$1" --dict "$2" --tokens $IDS --paths "$3" --beam "$4" --depth "$5" "${a[@]}" --json >"$T/c.jsonl"
	tests/validate.py schemas/transcoder-paths.schema.json "$T/c.jsonl"
	/usr/bin/python3 tests/ref/tcircuit_ref.py paths "$1" "$2" $IDS "$3" "$4" "$5" ${6:-} >"$T/r.json"
	run /usr/bin/python3 tests/ref/tcircuit_ref.py compare-paths "$T/c.jsonl" "$T/r.json"
	echo "$output"
	[ "$status" -eq 0 ]
}

# every Nth edge into target (of circ-trace --all-edges in $T/g.jsonl, run
# with the same model and set): circ-paths' routes sum to its weight
tc_edge_sums() { # model set target N
	jq -r --arg t "$3" 'select(.edge and (.edge | endswith("->" + $t))) | [.edge, .weight] | @tsv' "$T/g.jsonl" >"$T/edges"
	[ "$(wc -l <"$T/edges")" -gt 20 ]
	awk -v n="$4" 'NR % n == 1' "$T/edges" | while IFS=$'\t' read -r edge w; do
		circ-paths --model "$1" --dict "$2" --tokens $IDS --routes "$edge" --json |
			jq -e -s --argjson w "$w" '([.[] | select(.route) | .attribution | fabs] | max // 0) as $r | map(select(.summary))[0] | ((.total - $w) | fabs) <= 1e-5 * ([($w | fabs), $r, 1e-3] | max)' >/dev/null ||
			{ echo "$edge: routes do not sum to $w"; return 1; }
	done
}
