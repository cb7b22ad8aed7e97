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

/// A partition's reader reads only that partition, in log order, from the position it is
/// given (the reader's own, docs/scale-out.md "Applying"); the log's end is known.
#[tokio::test]
async fn a_partition_is_read_in_order_from_a_position() {
    let nats = Nats::start();
    let connect = || async_nats::connect(nats.url.clone());
    let hour = Duration::from_secs(3600);
    let log = PointLog::open(connect().await.unwrap(), 16, 4, 1, hour, hour)
        .await
        .unwrap();
    assert_eq!(log.last_sequence(5).await.unwrap(), 0);
    // Partitions 5 and 13 share stream MS_POINTS_1.
    for (p, id) in [(5, "a"), (13, "b"), (5, "c"), (13, "d"), (5, "e")] {
        log.publish(p, &format!("{id}:{p}"), id.to_string().into())
            .await
            .unwrap();
    }
    assert_eq!(log.last_sequence(5).await.unwrap(), 5);
    assert_eq!(log.last_sequence(13).await.unwrap(), 4);
    let wait = Duration::from_millis(50);
    let read_all = |mut r: meterstream_cluster::log::DirectReader| async move {
        let mut seen = Vec::new();
        while let Some((seq, body)) = r.next(wait).await.unwrap() {
            seen.push((seq, String::from_utf8(body.to_vec()).unwrap()));
        }
        (seen, r)
    };
    let (seen, mut reader) = read_all(log.read_from(5, 0).await.unwrap()).await;
    assert_eq!(
        seen,
        vec![(1, "a".into()), (3, "c".into()), (5, "e".into())]
    );
    // What comes later is read next, by the same reader.
    log.publish(13, "f:13", "f".into()).await.unwrap();
    log.publish(5, "g:5", "g".into()).await.unwrap();
    assert_eq!(reader.next(wait).await.unwrap(), Some((7, "g".into())));
    // A reader from a position (a node that held the partition before, on a new connection)
    // starts there.
    let log = PointLog::open(connect().await.unwrap(), 16, 4, 1, hour, hour)
        .await
        .unwrap();
    let (seen, _) = read_all(log.read_from(5, 4).await.unwrap()).await;
    assert_eq!(seen, vec![(5, "e".into()), (7, "g".into())]);
    let (seen, _) = read_all(log.read_from(13, 0).await.unwrap()).await;
    assert_eq!(seen.len(), 3);
}
