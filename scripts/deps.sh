#!/bin/sh
# Installs what circ needs on Debian 12, and only what is missing, so that a
# fresh machine can build and test with one command. Idempotent; quiet when
# everything is present. Called by `make deps` (and so by `make check`).
set -eu
cd "$(dirname "$0")/.."

# What building and running need (`scripts/deps.sh run`, for `make run`) ...
RUN_PKGS="build-essential pkg-config libmsgpack-dev libzstd-dev zstd libjansson-dev libdnnl-dev
libutf8proc-dev libopenblas-dev parallel jq graphviz"
# ... and what the tests and benchmarks add (the default, for `make check`).
TEST_PKGS="bats bats-support bats-assert python3 python3-torch python3-numpy
python3-jsonschema time clang libclang-rt-14-dev clang-format chromium openssh-client"
case "${1:-all}" in
run) PKGS=$RUN_PKGS ;;
all) PKGS="$RUN_PKGS $TEST_PKGS" ;;
*) echo "deps.sh: usage: deps.sh [run|all]" >&2; exit 2 ;;
esac

missing=""
for p in $PKGS; do
	if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed"; then
		missing="$missing $p"
	fi
done
# Node.js (tests only) may come from elsewhere (the machine image ships one);
# add Debian's only if absent.
if [ "${1:-all}" = all ]; then
	command -v node >/dev/null 2>&1 || missing="$missing nodejs"
	command -v npm >/dev/null 2>&1 || missing="$missing npm"
fi
if [ -n "$missing" ]; then
	echo "deps: installing:$missing" >&2
	SUDO=""
	[ "$(id -u)" -eq 0 ] || SUDO="sudo"
	export DEBIAN_FRONTEND=noninteractive
	$SUDO apt-get update -q >&2
	# shellcheck disable=SC2086
	$SUDO apt-get install -y -q --no-install-recommends $missing >&2
fi

# npm references for the tokenizer tests and benchmark (pinned by the lock file).
[ "${1:-all}" = all ] || exit 0
# The marker holds the lock file's digest, so a changed lock reinstalls.
if [ -f tests/js/package.json ]; then
	want=$(sha256sum tests/js/package-lock.json | cut -d' ' -f1)
	have=$(cat tests/js/node_modules/.circ-ok 2>/dev/null || true)
	if [ "$want" != "$have" ]; then
		echo "deps: npm ci in tests/js" >&2
		(cd tests/js && npm ci --no-audit --no-fund --loglevel=error >&2 &&
			echo "$want" >node_modules/.circ-ok)
	fi
fi
