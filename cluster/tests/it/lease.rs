use crate::Nats;
use meterstream_cluster::lease::Leases;
use std::time::{Duration, Instant};

/// Two nodes race for a partition: one holds it while it renews; once it stops, the lease
/// expires within its TTL and the other takes it; the old owner's renewal then fails.
#[tokio::test]
async fn one_owner_per_partition_and_expired_leases_move() {
    let nats = Nats::start();
    let ttl = Duration::from_secs(1);
    let open = |node: &'static str| {
        let url = nats.url.clone();
        async move {
            let client = async_nats::connect(url).await.unwrap();
            Leases::open(client, "MS_LEASES", 1, ttl, node)
                .await
                .unwrap()
        }
    };
    let (a, b) = (open("node-a").await, open("node-b").await);

    let held = a
        .claim(7)
        .await
        .unwrap()
        .expect("a free partition is taken");
    assert_eq!(
        b.claim(7).await.unwrap(),
        None,
        "a held partition is refused"
    );
    // A node claiming a lease that names it (its previous run's) takes it over.
    let again = a
        .claim(7)
        .await
        .unwrap()
        .expect("its own lease is taken over");
    assert!(again.revision > held.revision);
    let held = again;
    assert_eq!(b.owner(7).await.unwrap().as_deref(), Some("node-a"));
    // Another partition is independent.
    assert!(b.claim(8).await.unwrap().is_some());
    assert_eq!(a.owner(8).await.unwrap().as_deref(), Some("node-b"));

    // Renewing keeps it past its TTL.
    let mut held = held;
    for _ in 0..4 {
        tokio::time::sleep(ttl / 3).await;
        held = a.renew(held).await.unwrap().expect("renewed");
        assert_eq!(b.claim(7).await.unwrap(), None);
    }

    // node-a stops renewing: node-b gets the partition once the TTL has passed, not before.
    let stopped = Instant::now();
    let taken = loop {
        if let Some(l) = b.claim(7).await.unwrap() {
            break l;
        }
        assert!(
            stopped.elapsed() < Duration::from_secs(10),
            "the lease never expired"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let moved = stopped.elapsed();
    assert!(
        moved >= ttl - Duration::from_millis(400),
        "moved after {moved:?}"
    );
    assert_eq!(a.owner(7).await.unwrap().as_deref(), Some("node-b"));
    assert_eq!(taken.partition, 7);
    // The old owner learns it lost the lease.
    assert_eq!(a.renew(held).await.unwrap(), None);
    assert!(b.renew(taken).await.unwrap().is_some());
}
