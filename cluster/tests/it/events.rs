use crate::Nats;

/// An alarm storm's flush: thousands of events published in one call (more than the client lets
/// wait for acknowledgement at once, which once hung), in order, a repeated id recognized.
#[tokio::test]
async fn thousands_of_events_publish_in_one_call() {
    let nats = Nats::start();
    let client = async_nats::connect(nats.url.clone()).await.unwrap();
    let events = meterstream_cluster::events::EventLog::open(
        client,
        1,
        std::time::Duration::ZERO,
        std::time::Duration::from_secs(120),
    )
    .await
    .unwrap();
    let batch: Vec<(String, bytes::Bytes)> = (0..9_000)
        .map(|i| (format!("alert/s{i}/1/triggered"), bytes::Bytes::from("e")))
        .collect();
    let placed = tokio::time::timeout(
        std::time::Duration::from_secs(60),
        events.publish_all(batch.clone()),
    )
    .await
    .expect("published within a minute")
    .unwrap();
    assert_eq!(placed.len(), 9_000);
    assert!(placed
        .iter()
        .enumerate()
        .all(|(i, p)| *p == (i as u64 + 1, false)));
    let again = events.publish_all(batch[..3].to_vec()).await.unwrap();
    assert_eq!(again, vec![(1, true), (2, true), (3, true)]);
    assert_eq!(events.last_sequence().await.unwrap(), 9_000);
}
