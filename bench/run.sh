#!/bin/sh
# make bench: every hot path side by side with its reference on this machine.
# Ratios > 1 mean circ is faster. Run on an idle machine; OPENBLAS_CORETYPE
# is left as the environment sets it (printed first, with the CPU).
set -u
cd "$(dirname "$0")/.."
export B=${B:-build/release}
bench/whole.sh --cpu
status=0
# whole first: whole commands as users run them; then the inner loops
for b in whole stream tokenize model bf16 attrib acdc family cdt dict_train trace; do
	if [ -x "bench/$b.sh" ]; then
		echo "== $b"
		"bench/$b.sh" || status=1
	fi
done
exit $status
