use crate::Nats;
use meterstream_cluster::snapshot::{hash, Entry, PieceKey, Root, Snapshots};

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

/// Pieces published pipelined come back by sequence, checked against their hashes; a manifest
/// longer than a page is paged and read back whole, in order; a root is replaced only by
/// compare-and-set on the revision read; deleted messages are gone.
#[tokio::test]
async fn pieces_manifests_and_roots() {
    let nats = Nats::start();
    let client = async_nats::connect(nats.url.clone()).await.unwrap();
    let snaps = Snapshots::open(client, 1).await.unwrap();
    assert!(snaps.root(3).await.unwrap().is_none());

    let bodies: Vec<bytes::Bytes> = (0..9_000u32)
        .map(|i| bytes::Bytes::from(format!("piece {i}").into_bytes()))
        .collect();
    let seqs = snaps.publish(3, bodies.clone()).await.unwrap();
    assert_eq!(seqs.len(), 9_000);
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "in order");
    let manifest: Vec<Entry> = bodies
        .iter()
        .zip(&seqs)
        .enumerate()
        .map(|(i, (b, s))| Entry {
            key: PieceKey {
                name: format!("gw{:05}/m", i),
                kind: 1,
                ts: i as i64,
            },
            seq: *s,
            hash: hash(b),
            len: b.len() as u64,
        })
        .collect();
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
    let fetched = snaps.fetch(&read[8_990..]).await.unwrap();
    assert_eq!(fetched, bodies[8_990..].to_vec());

    // A piece that does not match its hash is refused.
    let mut wrong = read[5].clone();
    wrong.hash = hash(b"something else");
    let e = snaps.fetch(&[wrong]).await.unwrap_err();
    assert!(e.to_string().contains("hash"), "{e}");

    // The holder's next root, at the revision it read; then the old pieces go.
    let r2 = root(50, vec![], 0);
    assert!(snaps.write_root(3, &r2, Some(rev)).await.unwrap().is_some());
    assert_eq!(snaps.root(3).await.unwrap().unwrap().0, r2);
    snaps.delete(&seqs[..10]).await.unwrap();
    snaps.delete(&seqs[..10]).await.unwrap(); // already gone: not an error
    assert!(snaps.get(seqs[0]).await.is_err());
    assert_eq!(snaps.get(seqs[10]).await.unwrap(), bodies[10]);
    let (messages, _) = snaps.usage().await.unwrap();
    assert_eq!(messages, 9_000 - 10 + 3);
}
