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
