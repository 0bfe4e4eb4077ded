#!/usr/bin/env bats
# make run's results are pinned (tests/data/golden/make-run/): every stream's
# records and every report of the main job. On the CPU the golden files were
# made on they must be byte-identical, so a refactoring shows it changed
# nothing; elsewhere numbers agree to 1e-5 (tests/golden.py). A change that
# means to alter them runs `tests/golden.py save DIR tests/data/golden/make-run`
# on a fresh `make -f pipelines/demo.mk RUNS=DIR` and says why.
load helper

@test "make run's streams and reports match the pinned ones" {
	make --no-print-directory -s -f pipelines/demo.mk RUNS="$T/runs" >"$T/out" 2>&1 || {
		cat "$T/out"
		false
	}
	/usr/bin/python3 tests/golden.py check "$T/runs" tests/data/golden/make-run
}
