use crate::Nats;
use meterstream_cluster::log::PointLog;
use std::time::Duration;

/// Partitions map to their streams, a retried batch part is stored once, and what is stored
/// is what was sent.
#[tokio::test]
async fn parts_land_in_their_partitions_stream_once() {
    let nats = Nats::start();
    let client = async_nats::connect(nats.url.clone()).await.unwrap();
    let hour = Duration::from_secs(3600);
    let log = PointLog::open(client.clone(), 16, 4, 1, hour, Duration::from_secs(120))
        .await
        .unwrap();
    assert_eq!(log.stream_of(5), "MS_POINTS_1");

    let first = log.publish(5, "batch-1:5", "one".into()).await.unwrap();
    assert_eq!(
        (first.stream.as_str(), first.sequence, first.duplicate),
        ("MS_POINTS_1", 1, false)
    );
    // The gateway retries the same batch: acknowledged again, stored once.
    let again = log.publish(5, "batch-1:5", "one".into()).await.unwrap();
    assert_eq!((again.sequence, again.duplicate), (1, true));
    let next = log.publish(13, "batch-2:13", "two".into()).await.unwrap();
    assert_eq!(
        (next.stream.as_str(), next.sequence, next.duplicate),
        ("MS_POINTS_1", 2, false)
    );
    let other = log.publish(6, "batch-2:6", "three".into()).await.unwrap();
    assert_eq!((other.stream.as_str(), other.sequence), ("MS_POINTS_2", 1));

    let js = async_nats::jetstream::new(client);
    let mut s = js.get_stream("MS_POINTS_1").await.unwrap();
    assert_eq!(s.info().await.unwrap().state.messages, 2);
    let m = s.get_raw_message(2).await.unwrap();
    assert_eq!(
        (m.subject.as_str(), &m.payload[..]),
        ("ms.points.13", &b"two"[..])
    );
    // Reopening finds the streams as they are.
    let log = PointLog::open(
        async_nats::connect(nats.url.clone()).await.unwrap(),
        16,
        4,
        1,
        hour,
        Duration::from_secs(120),
    )
    .await
    .unwrap();
    let later = log.publish(5, "batch-3:5", "four".into()).await.unwrap();
    assert_eq!(later.sequence, 3);
}

/// A partition's consumer reads only that partition, in log order, and a new reader of the
/// same durable consumer (a new owner) resumes after what was acknowledged.
#[tokio::test]
async fn a_partitions_consumer_reads_it_in_order_and_resumes() {
    let nats = Nats::start();
    let connect = || async_nats::connect(nats.url.clone());
    let hour = Duration::from_secs(3600);
    let log = PointLog::open(connect().await.unwrap(), 16, 4, 1, hour, hour)
        .await
        .unwrap();
    // Partitions 5 and 13 share stream MS_POINTS_1.
    for (p, id) in [(5, "a"), (13, "b"), (5, "c"), (13, "d"), (5, "e")] {
        log.publish(p, &format!("{id}:{p}"), id.to_string().into())
            .await
            .unwrap();
    }
    let wait = Duration::from_millis(500);
    let reader = log.consumer(5).await.unwrap();
    let got = reader.next_batch(10, wait).await.unwrap();
    let seen: Vec<(u64, &[u8])> = got.iter().map(|e| (e.sequence, &e.body[..])).collect();
    assert_eq!(seen, vec![(1, &b"a"[..]), (3, &b"c"[..]), (5, &b"e"[..])]);
    for e in &got {
        e.ack().await.unwrap();
    }
    drop(reader);

    // A new owner, on another connection, gets only what came after.
    log.publish(13, "f:13", "f".into()).await.unwrap();
    log.publish(5, "g:5", "g".into()).await.unwrap();
    let log = PointLog::open(connect().await.unwrap(), 16, 4, 1, hour, hour)
        .await
        .unwrap();
    let reader = log.consumer(5).await.unwrap();
    let got = reader.next_batch(10, wait).await.unwrap();
    let seen: Vec<(u64, &[u8])> = got.iter().map(|e| (e.sequence, &e.body[..])).collect();
    assert_eq!(seen, vec![(7, &b"g"[..])]);
    // Partition 13's consumer is its own.
    let other = log.consumer(13).await.unwrap();
    assert_eq!(other.next_batch(10, wait).await.unwrap().len(), 3);
}
