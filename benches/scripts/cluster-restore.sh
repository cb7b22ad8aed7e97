#!/bin/bash
# How long a new node takes to hold and apply every partition of a cluster (issue 10,
# docs/scale-out.md), from the log alone (snapshot_interval 0) or from snapshots (600).
# usage: benches/scripts/cluster-restore.sh <snapshot_interval> <tag>   (from the checkout,
# after `cargo build --release -p meterstream-server -p meterstream-bench`; needs nats-server)
# Figures in benches/RESULTS.md, "Rebuilding a node's partitions: snapshots against the log".
# Fresh 3-node NATS; the standard workload's 10 minutes ingested through one node ("bench",
# data kept in $D/pdata). That node is started again on its data, holds all 256
# partitions, and is stopped with SIGTERM (timed: with snapshots on, it snapshots them all).
# Then a new node "b" with an empty store takes all 256 partitions (timed).
set -e
SI=$1; TAG=$2
D=${DIR:-/tmp/nb}
cd "$(dirname "$0")/../.."
. benches/scripts/fresh-cluster.sh
for f in cl clb; do sed -i '/snapshot_interval/d' $D/$f.toml; echo "snapshot_interval = $SI" >> $D/$f.toml; done
./target/release/meterstream-bench ingest --seconds 600 --query-runs 1 --data-dir $D/pdata \
  --server-arg=--config=$D/cl.toml --json $D/rb-$TAG.json > $D/rb-$TAG.out 2> $D/rb-$TAG.err
held() { curl -s -H "Authorization: Bearer $K" http://127.0.0.1:$1/ws/v1/cluster | python3 -c 'import sys,json; print(len(json.load(sys.stdin)["local"]))' 2>/dev/null || echo 0; }
METERSTREAM_ADMIN_KEY=$K ./target/release/meterstream-server --config $D/cl.toml --data-dir $D/pdata --listen 127.0.0.1:18091 > $D/a-$TAG.log 2>&1 &
A=$!
for i in $(seq 1 240); do [ "$(held 18091)" = 256 ] && break; sleep 0.25; done
S=$(date +%s.%N); kill -TERM $A; while [ -e /proc/$A ]; do sleep 0.05; done; E=$(date +%s.%N)
echo "tag=$TAG node 'bench' stopped $(echo "$E - $S" | bc) s after SIGTERM"
grep -h "before stopping" $D/a-$TAG.log | cut -c1-200 || true
START=$(date +%s.%N)
METERSTREAM_ADMIN_KEY=$K ./target/release/meterstream-server --config $D/clb.toml --data-dir $D/b --listen 127.0.0.1:18090 > $D/b-$TAG.log 2>&1 &
B=$!
for i in $(seq 1 2400); do [ "$(held 18090)" = 256 ] && break; sleep 0.1; done
END=$(date +%s.%N)
echo "tag=$TAG node b held and applied all 256 partitions $(echo "$END - $START" | bc) s after its start"
awk '{printf "b cpu_s=%.2f rss_mb=%.1f\n", ($14+$15)/100, $24*4096/1e6}' /proc/$B/stat
echo "restored bytes: $(grep -h 'partition restored' $D/b-$TAG.log | sed 's/.*bytes=\([0-9]*\).*/\1/' | awk '{s+=$1} END {print s+0}')" 
echo "restored from snapshots: $(grep -c 'partition restored from its snapshot' $D/b-$TAG.log || true)"
sleep 1
S1=$(curl -s -H "Authorization: Bearer $K" "http://127.0.0.1:18090/ws/v1/streams/inventory?size=1" | python3 -c 'import sys,json; print(json.load(sys.stdin)["list"][0]["id"])')
curl -s -H "Authorization: Bearer $K" "http://127.0.0.1:18090/ws/v1/streams/history/$S1?size=1000" | python3 -c 'import sys,json; print("a stream reads back", len(json.load(sys.stdin)["list"]), "points")'
curl -s -H "Authorization: Bearer $K" "http://127.0.0.1:18090/ws/v1/streams/inventory?size=100000" | python3 -c 'import sys,json; print("streams", len(json.load(sys.stdin)["list"]))'
kill -TERM $B; while [ -e /proc/$B ]; do sleep 0.1; done
