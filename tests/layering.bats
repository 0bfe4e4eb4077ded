#!/usr/bin/env bats
# The layering of lib/ (README.md's Architecture section is the order):
# tests/layering.sh passes on the tree, and fails on a copy of lib/ with a
# planted upward include, a module missing from the order, or the old
# stream/json circle.
load helper

# A copy of README.md and lib/ to plant a bad include in.
copy_tree() {
	mkdir -p "$T/tree"
	cp README.md "$T/tree/"
	cp -r lib "$T/tree/"
}

@test "lib/ includes only modules declared above (or beside) their own" {
	run tests/layering.sh
	assert_success
	assert_output ''
}

@test "layering: an include of a module declared below fails, naming file, line and module" {
	copy_tree
	printf '#include "graph.h"\n' >>"$T/tree/lib/rng.c"
	run tests/layering.sh "$T/tree"
	assert_failure 1
	assert_output --partial 'lib/rng.c:'
	assert_output --partial 'rng includes "graph.h": graph is declared below rng'
}

@test "layering: the stream/json circle is caught (json uses record, never stream)" {
	copy_tree
	sed -i 's/#include "record.h"/#include "stream.h"/' "$T/tree/lib/json.c"
	run tests/layering.sh "$T/tree"
	assert_failure 1
	assert_output --partial 'json includes "stream.h": stream is declared below json'
}

@test "layering: a module missing from README's order fails; a <module>_<part>.c belongs to its module" {
	copy_tree
	printf '#include "model.h"\n' >"$T/tree/lib/model_forward.c"
	run tests/layering.sh "$T/tree"
	assert_success
	printf '#include "util.h"\n' >"$T/tree/lib/newmod.c"
	run tests/layering.sh "$T/tree"
	assert_failure 1
	assert_output --partial "module 'newmod' is not in README.md's Architecture order"
	# listed, it passes
	sed -i 's/^    graph     /    newmod    a new module\n    graph     /' "$T/tree/README.md"
	run tests/layering.sh "$T/tree"
	assert_success
}
