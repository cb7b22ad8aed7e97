//! Acknowledged publish throughput to one JetStream stream on a running NATS cluster: the
//! "NATS throughput per replicated stream" figure of docs/scale-out.md.
//!
//! ```sh
//! # three nats-server 2.9 nodes on 127.0.0.1:4222-4224 (docs/scale-out.md has their configs), then
//! cargo run --release -p meterstream-bench --example nats_publish -- 204800 3000 16 3
//! ```
//!
//! Arguments: message bytes, messages (at most), acknowledgements awaited at a time, replicas.
//! Bounded by the count and by 60 s. The stream is created for the run and deleted after it.

use anyhow::{Context, Result};
use async_nats::jetstream::{self, stream};
use std::collections::VecDeque;
use std::time::{Duration, Instant};

#[tokio::main]
async fn main() -> Result<()> {
    let arg = |i: usize, default: usize| -> Result<usize> {
        std::env::args()
            .nth(i)
            .map_or(Ok(default), |s| s.parse().context("arguments are numbers"))
    };
    let (size, count, window, replicas) =
        (arg(1, 10_240)?, arg(2, 20_000)?, arg(3, 64)?, arg(4, 3)?);
    let addrs = ["127.0.0.1:4222", "127.0.0.1:4223", "127.0.0.1:4224"]
        .iter()
        .map(|a| format!("nats://{a}").parse())
        .collect::<Result<Vec<async_nats::ServerAddr>, _>>()?;
    let client = async_nats::connect(addrs).await?;
    println!("nats-server {}", client.server_info().version);
    let js = jetstream::new(client);
    let name = format!("BENCH_{size}_R{replicas}");
    let _ = js.delete_stream(&name).await;
    js.create_stream(stream::Config {
        name: name.clone(),
        subjects: vec![format!("bench.{size}.r{replicas}.>")],
        num_replicas: replicas,
        storage: stream::StorageType::File,
        ..Default::default()
    })
    .await?;
    let payload = bytes::Bytes::from(vec![7u8; size]);
    let started = Instant::now();
    let mut pending = VecDeque::new();
    let mut sent = 0usize;
    while sent < count && started.elapsed() < Duration::from_secs(60) {
        // 64 subjects, as partitions would be.
        let subject = format!("bench.{size}.r{replicas}.p{}", sent % 64);
        pending.push_back(js.publish(subject, payload.clone()).await?);
        sent += 1;
        if pending.len() >= window {
            if let Some(ack) = pending.pop_front() {
                ack.await?;
            }
        }
    }
    while let Some(ack) = pending.pop_front() {
        ack.await?;
    }
    let secs = started.elapsed().as_secs_f64();
    println!(
        "{size} B messages, {replicas} replicas, {window} in flight: {sent} acknowledged in {secs:.2} s, {:.0} messages/s, {:.1} MB/s",
        sent as f64 / secs,
        (sent * size) as f64 / secs / 1e6
    );
    js.delete_stream(&name).await?;
    Ok(())
}
