bats_require_minimum_version 1.5.0
# Shared setup for circ's Bats tests: the fresh build first on PATH, a fixed
# locale, bats-support and bats-assert, and a scratch directory per test.
ROOT="$(cd "$(dirname "${BATS_TEST_FILENAME}")/.." && pwd)"
export ROOT
export PATH="$ROOT/bin:$PATH"
export LC_ALL=C
export CIRC_NO_PROGRESS=1
load '/usr/lib/bats/bats-support/load'
load '/usr/lib/bats/bats-assert/load'

setup() {
	T="$BATS_TEST_TMPDIR"
	cd "$ROOT"
}

# Writes a small headered JSON-lines stream of the given kind to stdout.
mini_stream() {
	printf '{"format":"circ","version":1,"kind":"%s"}\n' "${1:-test}"
	printf '{"i":%d}\n' 1 2 3
}
