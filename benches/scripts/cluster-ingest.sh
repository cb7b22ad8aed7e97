#!/bin/bash
# What settling stream types with the partitions' holders costs a cluster's ingest (issue 10,
# docs/scale-out.md "Stream types before the answer").
# usage: benches/scripts/cluster-ingest.sh <server binary> <tag> <points per batch> <nodes: 1|2>
# (from the checkout, after `cargo build --release -p meterstream-server -p meterstream-bench`;
# needs nats-server). Fresh 3-node NATS each run. With 2 nodes, node "b" is started first and
# the bench's own node joins it, so about half the batches are for partitions b holds and their
# types are asked of b over NATS. The standard workload's 10 minutes through the bench's node.
# Figures in benches/RESULTS.md, "What settling stream types costs a cluster's ingest".
set -e
BIN=$1; TAG=$2; BATCH=$3; NODES=$4
D=${DIR:-/tmp/nb}
cd "$(dirname "$0")/../.."
. benches/scripts/fresh-cluster.sh
unchecked() { curl -s -H "Authorization: Bearer $K" http://127.0.0.1:$1/ws/v1/cluster | python3 -c 'import sys,json; print(json.load(sys.stdin).get("types_unchecked"))' 2>/dev/null || echo "?"; }
if [ "$NODES" = 2 ]; then
  METERSTREAM_ADMIN_KEY=$K $BIN --config $D/clb.toml --data-dir $D/b --listen 127.0.0.1:18090 > $D/b-$TAG.log 2>&1 &
  B=$!
  sleep 4
fi
./target/release/meterstream-bench ingest --server-bin $BIN --seconds 600 --batch $BATCH --query-runs 1 \
  --data-dir $D/pdata --server-arg=--config=$D/cl.toml --json $D/ci-$TAG.json > $D/ci-$TAG.out 2> $D/ci-$TAG.err
python3 - $D/ci-$TAG.json <<'PY'
import json, sys
j = json.load(open(sys.argv[1]))
def find(o, path=""):
    if isinstance(o, dict):
        for k, v in o.items():
            if any(w in k for w in ("ingest", "points_per_s", "cpu", "rss")) and not isinstance(v, (dict, list)):
                print(f"{path}{k} = {v}")
            find(v, f"{path}{k}.")
find(j)
PY
if [ "$NODES" = 2 ]; then
  echo "b types_unchecked=$(unchecked 18090)"
  awk '{printf "b cpu_s=%.2f rss_mb=%.1f\n", ($14+$15)/100, $24*4096/1e6}' /proc/$B/stat
  kill -TERM $B; while [ -e /proc/$B ]; do sleep 0.1; done
fi
pkill -f nats-server || true
