#!/bin/bash
# What settling stream types with the partitions' holders costs a cluster's ingest (issue 10,
# docs/scale-out.md "Stream types before the answer").
# usage: benches/scripts/cluster-ingest.sh <server binary> <tag> <points per batch> <nodes: 1|2>
# (from the checkout, after `cargo build --release -p meterstream-server -p meterstream-bench`;
# needs nats-server). Fresh 3-node NATS each run. With 2 nodes, node "b" is started first and
# the bench's own node joins it, so about half the batches are for partitions b holds and their
# types are asked of b over NATS. The standard workload's 10 minutes through the bench's node.
# Figures in benches/RESULTS.md, "What settling stream types costs ingest".
set -e
BIN=$1; TAG=$2; BATCH=$3; NODES=$4
D=${DIR:-/tmp/nb}
mkdir -p $D
routes="nats-route://127.0.0.1:6222, nats-route://127.0.0.1:6223, nats-route://127.0.0.1:6224"
for i in 0 1 2; do
  cat > $D/n$i.conf <<CONF
listen: 127.0.0.1:422$((2 + i))
server_name: n$i
jetstream { store_dir: "$D/data$i", max_memory_store: 256MB, max_file_store: 20GB }
cluster { name: ms, listen: 127.0.0.1:622$((2 + i)), routes: [$routes] }
CONF
done
for n in cl:bench clb:b; do
  cat > $D/${n%%:*}.toml <<CONF
[cluster]
nats_urls = ["nats://127.0.0.1:4222", "nats://127.0.0.1:4223", "nats://127.0.0.1:4224"]
node_id = "${n##*:}"
partitions = 256
log_streams = 8
replicas = 3
CONF
done
K=msk_bench_0123456789abcdefghijklmnopqrstuv
pkill -f meterstream-server || true
while pgrep -f meterstream-server > /dev/null; do sleep 0.2; done
pkill -f nats-server || true
while pgrep -f nats-server > /dev/null; do sleep 0.2; done
rm -rf $D/data0 $D/data1 $D/data2 $D/b $D/pdata
for i in 0 1 2; do nats-server -c $D/n$i.conf > $D/n$i.log 2>&1 & done
sleep 3
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
