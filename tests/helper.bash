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

# Skips a test whose tool is missing on a developer's machine; in CI, where
# make deps installs everything, a missing tool is a failure (no test skips).
need_cmd() { # path-or-name package
	command -v "$1" >/dev/null && return 0
	[ "${CI:-}" != true ] || fail "$1 is missing in CI (package $2; make deps installs it)"
	skip "$1 is not installed (package $2; make deps installs it)"
}
