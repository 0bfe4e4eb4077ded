#!/bin/sh
# layering: every `#include "x.h"` in lib/ names a module at or above the
# including one in README.md's Architecture section, which is the only list
# of the order. There, each line of the indented block after "Layering of
# `lib/`" starts with its modules (separated by ", ", a run of spaces ending
# them); "(+ json)" and similar notes add a module to that line's layer.
# A module is a lib/ file's name without .c/.h and without a "_part"
# suffix after a listed name (model_forward.c belongs to model).
# Modules on one line may use each other; a module not in the list fails.
# Usage: tests/layering.sh [ROOT]  (exit 1 and one line per violation)
root=${1:-.}
awk '
/^Layering of `lib\/`/ { on = 1; next }
on && /^    [a-z]/ {
	line = substr($0, 5)
	head = line; sub(/   .*/, "", head)     # modules end at a run of spaces
	n = split(head, m, /, */)
	for (i = 1; i <= n; i++) if (m[i] != "") print layer + 0, m[i]
	while (match(line, /\(\+ [a-z_, ]+\)/)) {
		extra = substr(line, RSTART + 3, RLENGTH - 4)
		k = split(extra, x, /, */)
		for (i = 1; i <= k; i++) print layer + 0, x[i]
		line = substr(line, RSTART + RLENGTH)
	}
	layer++
	next
}
on && /^[^ ]/ && layer { exit }
' "$root/README.md" >"${TMPDIR:-/tmp}/layering.$$"
order="${TMPDIR:-/tmp}/layering.$$"
trap 'rm -f "$order"' EXIT
if [ ! -s "$order" ]; then
	echo "layering: no module order found in $root/README.md (Architecture)" >&2
	exit 1
fi
bad=0
layer_of() { # the layer of module $1 (a listed name, or listed_name_part), or nothing
	awk -v m="$1" '$2 == m { print $1; exit } index(m, $2 "_") == 1 { p = $1 } END { if (p != "") print p }' "$order" | head -1
}
for f in "$root"/lib/*.c "$root"/lib/*.h; do
	[ -e "$f" ] || continue
	base=$(basename "$f"); mod=${base%.*}
	lm=$(layer_of "$mod")
	if [ -z "$lm" ]; then
		echo "layering: lib/$base: module '$mod' is not in README.md's Architecture order"
		bad=1
		continue
	fi
	grep -n '^[[:space:]]*#[[:space:]]*include[[:space:]]*"' "$f" | while IFS= read -r hit; do
		ln=${hit%%:*}
		inc=$(printf '%s\n' "$hit" | sed 's/.*include[[:space:]]*"\([^"]*\)".*/\1/')
		imod=${inc%.h}
		[ "$imod" = "$mod" ] && continue
		li=$(layer_of "$imod")
		if [ -z "$li" ]; then
			echo "layering: lib/$base:$ln: includes \"$inc\", which is not a module in README.md's order"
			echo x
		elif [ "$li" -gt "$lm" ]; then
			echo "layering: lib/$base:$ln: $mod includes \"$inc\": $imod is declared below $mod"
			echo x
		fi
	done >"$order.out"
	if [ -s "$order.out" ]; then
		grep -v '^x$' "$order.out"
		bad=1
	fi
	rm -f "$order.out"
done
exit $bad
