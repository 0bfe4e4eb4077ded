#!/bin/bash
# Writes a pipeline run's short report (used by pipelines/common.mk):
#   report.sh CIRCBIN TITLE SETTINGS FAITHFULNESS CURVE|- CURVE_ABS|- ROC_JSON|- SVG HTML
# Fails (exit 1, naming the file) when an input cannot be read whole or lacks
# a number the report shows: a report never says "null".
set -euo pipefail
bin=$1 title=$2 settings=$3 faith=$4 curve=$5 curveabs=$6 roc=$7 svg=$8 html=$9
# jq -e fails on a null or missing result; r() rounds to 3 decimals and
# fails on anything but a number.
r='def r: if type == "number" then . * 1000 | round / 1000 else error("not a number") end;'
fail() { echo "report.sh: '$1': $2" >&2; exit 1; }
records() { "${bin}circ-cat" --no-header "$1"; } # fails on a cut or bad stream
# each stream read whole first: circ-cat fails on a cut or bad one
recs=$(records "$faith") || fail "$faith" "cannot be read whole"
summary=$(jq 2>/dev/null -er "$r"' select(.summary) |
	"circuit: \(.n_edges) edges, faithfulness \(.faithfulness | r) (m(model) \(.metric_model | r), m(empty) \(.metric_empty | r), m(circuit) \(.metric_circuit | r))"' <<<"$recs") ||
	fail "$faith" "no faithfulness summary"
echo "$title"
echo "$settings"
echo "$summary"
if [ "$curve" != - ]; then
	recs=$(records "$curve") || fail "$curve" "cannot be read whole"
	cpr=$(jq 2>/dev/null -ser "$r"' .[-1].cpr | r' <<<"$recs") || fail "$curve" "no CPR in the curve's last record"
	recs=$(records "$curveabs") || fail "$curveabs" "cannot be read whole"
	cmd=$(jq 2>/dev/null -ser "$r"' .[-1].cmd | r' <<<"$recs") || fail "$curveabs" "no CMD in the curve's last record"
	printf 'CPR (area under f, signed ranking): %s\n' "$cpr"
	printf 'CMD (area between f and 1, |score| ranking): %s\n' "$cmd"
fi
if [ "$roc" != - ]; then
	jq 2>/dev/null -er "$r"' "against the known circuit: ROC AUC \(.auc | r), TPR \(.tpr | r), FPR \(.fpr | r) (\(.n_truth) true edges)"' "$roc" ||
		fail "$roc" "not an evaluation report"
fi
echo "circuit: $svg $html"
