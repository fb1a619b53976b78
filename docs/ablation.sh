#!/usr/bin/env bash
# Ablation over one recipe key: for each value fine-tune, dump costs, solve and evaluate,
# then print the PQ of every value as one table.
#   bash docs/ablation.sh KEY "VALUES" WEIGHTS OUT [--set key=value ...]
# RECIPE picks the fine-tuning recipe (default synthetic_finetune). Running it again
# continues unfinished fine-tuning runs (--resume) and redoes the other stages.
set -euo pipefail
key=$1 values=$2 weights=$3 out=$4
shift 4
for v in $values; do
  copsctl finetune --recipe "${RECIPE:-synthetic_finetune}" --weights "$weights" \
      --out "$out/$v/run" --resume --set "$key=$v" "$@"
  copsctl dump-costs --run "$out/$v/run" --out "$out/$v/costs.h5"
  copsctl solve "$out/$v/costs.h5" --out "$out/$v/pred"
  copsctl evaluate --recipe "$out/$v/run/recipe.yaml" --pred "$out/$v/pred" \
      --json "$out/$v/pq.json"
done
python -c '
import json, sys
key, out, values = sys.argv[1], sys.argv[2], sys.argv[3:]
print("| " + key + " | PQ | PQ_th | PQ_st |\n|---|---|---|---|")
for v in values:
    r = json.load(open(out + "/" + v + "/pq.json"))
    pq = ["%.1f" % (100 * r[g]["pq"]) for g in ("All", "Things", "Stuff")]
    print("| " + " | ".join([v] + pq) + " |")
' "$key" "$out" $values
