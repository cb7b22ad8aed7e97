# Sourced by the cluster bench scripts: with $D set, writes the configurations of a 3-node NATS
# cluster (127.0.0.1:4222-4224, JetStream in $D/data0-2) and of two meterstream nodes
# ($D/cl.toml: "bench", $D/clb.toml: "b"; 256 partitions, 3 replicas), stops any server left
# running, and starts the NATS cluster on fresh data. Defines K, the admin key the benches use.
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
