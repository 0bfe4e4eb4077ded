#!/bin/sh
# Writes a pipeline run's short report (used by pipelines/common.mk):
#   report.sh CIRCBIN TITLE SETTINGS FAITHFULNESS CURVE|- CURVE_ABS|- ROC_JSON|- SVG HTML
set -eu
bin=$1 title=$2 settings=$3 faith=$4 curve=$5 curveabs=$6 roc=$7 svg=$8 html=$9
r3() { jq -r "$1 | if type == \"number\" then (. * 1000 | round / 1000) else . end"; }
echo "$title"
echo "$settings"
"${bin}circ-cat" --no-header "$faith" | jq -r 'select(.summary) |
	"circuit: \(.n_edges) edges, faithfulness \(.faithfulness * 1000 | round / 1000) (m(model) \(.metric_model * 1000 | round / 1000), m(empty) \(.metric_empty * 1000 | round / 1000), m(circuit) \(.metric_circuit * 1000 | round / 1000))"'
if [ "$curve" != - ]; then
	printf 'CPR (area under f, signed ranking): %s\n' "$("${bin}circ-cat" --no-header "$curve" | jq -s '.[-1].cpr' | r3 .)"
	printf 'CMD (area between f and 1, |score| ranking): %s\n' "$("${bin}circ-cat" --no-header "$curveabs" | jq -s '.[-1].cmd' | r3 .)"
fi
if [ "$roc" != - ]; then
	jq -r '"against the known circuit: ROC AUC \(.auc * 1000 | round / 1000), TPR \(.tpr * 1000 | round / 1000), FPR \(.fpr * 1000 | round / 1000) (\(.n_truth) true edges)"' "$roc"
fi
echo "circuit: $svg $html"
