#!/usr/bin/env bats
# make run's results are pinned: every stream's records and every report of
# the main job, against tests/data/golden/make-run.sha256. A refactoring must
# leave them byte-identical; a change that means to alter them regenerates
# the file (tests/golden.sh) and says why.
load helper

@test "make run's streams and reports are byte-identical to the pinned digests" {
	make --no-print-directory -s -f pipelines/demo.mk RUNS="$T/runs" >"$T/out" 2>&1 || {
		cat "$T/out"
		false
	}
	tests/golden.sh "$T/runs" >"$T/got"
	diff tests/data/golden/make-run.sha256 "$T/got"
}
