#!/bin/sh
# The digests of what `make run` computes: every stream's records (header
# left out: it records paths and arguments) and every report, under a run
# directory given as $1. `tests/golden.sh DIR > tests/data/golden/make-run.sha256`
# after a change that means to alter them (say why in the commit).
set -eu
cd "$1"
find . -name '*.circ' | LC_ALL=C sort | while read -r f; do
	printf '%s  %s\n' "$(circ-cat --no-header "$f" | sha256sum | cut -d' ' -f1)" "$f"
done
find . -name 'report.txt' | LC_ALL=C sort | while read -r f; do
	# the report names its run directory: keep what follows it
	printf '%s  %s\n' "$(sed 's|[^ ]*runs/|runs/|g' "$f" | sha256sum | cut -d' ' -f1)" "$f"
done
