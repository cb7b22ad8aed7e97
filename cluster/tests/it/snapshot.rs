use crate::Nats;
use meterstream_cluster::snapshot::{hash, PieceKey, Root, Snapshots, PACK_BYTES};

fn root(covers: u64, pages: Vec<u64>, pieces: u64) -> Root {
    Root {
        covers,
        taken: 1,
        node: "a".into(),
        pages,
        pieces,
        bytes: 0,
    }
}

/// Pieces are packed into messages of up to PACK_BYTES (a bigger one alone) and come back,
/// checked against their hashes; a manifest longer than a page is paged and read back whole, in
/// order; a root is replaced only by compare-and-set on the revision read; deleted messages are
/// gone.
#[tokio::test]
async fn pieces_manifests_and_roots() {
    let nats = Nats::start();
    let client = async_nats::connect(nats.url.clone()).await.unwrap();
    let snaps = Snapshots::open(client, 1).await.unwrap();
    assert!(snaps.root(3).await.unwrap().is_none());

    let mut bodies: Vec<bytes::Bytes> = (0..9_000u32)
        .map(|i| bytes::Bytes::from(format!("piece {i} ").repeat(8).into_bytes()))
        .collect();
    bodies[4_000] = bytes::Bytes::from(vec![7u8; PACK_BYTES + 10]);
    let pieces = bodies
        .iter()
        .enumerate()
        .map(|(i, b)| {
            let key = PieceKey {
                name: format!("gw{i:05}/m"),
                kind: 1,
                ts: i as i64,
            };
            (key, b.clone(), hash(b))
        })
        .collect();
    let manifest = snaps.publish_packed(3, pieces).await.unwrap();
    assert_eq!(manifest.len(), 9_000);
    let mut messages: Vec<u64> = manifest.iter().map(|e| e.seq).collect();
    messages.dedup();
    // ~80 bytes a piece: 3,276 to a message; the big one alone.
    assert!((4..=6).contains(&messages.len()), "{messages:?}");
    let big = &manifest[4_000];
    assert_eq!((big.offset, big.packed), (0, 1));
    assert!(manifest.iter().all(|e| e.packed > 1 || e.seq == big.seq));

    let pages = snaps.publish_manifest(3, &manifest).await.unwrap();
    assert_eq!(pages.len(), 3, "4,000 entries a page");
    let r1 = root(42, pages.clone(), 9_000);
    let rev = snaps.write_root(3, &r1, None).await.unwrap().unwrap();
    // A second writer that read no root, or an older revision, loses.
    assert_eq!(
        snaps
            .write_root(3, &root(43, vec![], 0), None)
            .await
            .unwrap(),
        None
    );
    assert_eq!(
        snaps
            .write_root(3, &root(43, vec![], 0), Some(rev + 100))
            .await
            .unwrap(),
        None
    );
    let (got, got_rev) = snaps.root(3).await.unwrap().unwrap();
    assert_eq!((got, got_rev), (r1.clone(), rev));
    let read = snaps.manifest(&r1).await.unwrap();
    assert_eq!(read, manifest);
    let fetched = snaps.fetch(&read).await.unwrap();
    assert_eq!(fetched, bodies);

    // A piece that does not match its hash, or lies past its message's end, is refused.
    let mut wrong = read[5].clone();
    wrong.hash = hash(b"something else");
    let e = snaps.fetch(&[wrong]).await.unwrap_err();
    assert!(e.to_string().contains("hash"), "{e}");
    let mut past = read[6].clone();
    past.offset = PACK_BYTES as u32;
    assert!(snaps.fetch(&[past]).await.is_err());

    // The holder's next root, at the revision it read; then the old messages go.
    let r2 = root(50, vec![], 0);
    assert!(snaps.write_root(3, &r2, Some(rev)).await.unwrap().is_some());
    assert_eq!(snaps.root(3).await.unwrap().unwrap().0, r2);
    snaps.delete(&messages[..1]).await.unwrap();
    snaps.delete(&messages[..1]).await.unwrap(); // already gone: not an error
    assert!(snaps.fetch(&read[..1]).await.is_err());
    assert_eq!(
        snaps.fetch(&read[8_999..]).await.unwrap(),
        bodies[8_999..].to_vec()
    );
    let (left, _) = snaps.usage().await.unwrap();
    assert_eq!(left, messages.len() as u64 - 1 + 3);
}
