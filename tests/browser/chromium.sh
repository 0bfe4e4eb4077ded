#!/bin/sh
# Runs Debian's Chromium headless for the HTML tests: every network-facing
# feature off, a throwaway profile, a time limit. Chromium's own chatter on
# stderr is shown only when it fails; with CIRC_CHROMIUM_LOG=FILE it is
# also kept in FILE (with --enable-logging=stderr --v=0 it holds the page's
# console messages, lines with "CONSOLE").
# usage: tests/browser/chromium.sh [chromium options] URL
set -eu
profile=$(mktemp -d)
trap 'rm -rf "$profile"' EXIT
if ! timeout "${CIRC_CHROMIUM_TIMEOUT:-120}" /usr/bin/chromium --headless --no-sandbox \
	--disable-gpu --disable-quic --no-first-run --disable-background-networking \
	--disable-component-update --disable-sync --hide-scrollbars \
	--user-data-dir="$profile" "$@" 2>"$profile/stderr"; then
	cat "$profile/stderr" >&2
	exit 1
fi
if [ -n "${CIRC_CHROMIUM_LOG:-}" ]; then
	cp "$profile/stderr" "$CIRC_CHROMIUM_LOG"
fi
