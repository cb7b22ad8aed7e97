use crate::Nats;
use meterstream_cluster::registry::{key, Change, SharedRegistry};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A watch gives every key's latest value, then each change as it comes; deletions are empty
/// values; a watch from a revision gives only what came after it.
#[tokio::test]
async fn the_shared_registry_is_watched_from_its_state_then_its_changes() {
    let nats = Nats::start();
    let client = async_nats::connect(nats.url.clone()).await.unwrap();
    let reg = Arc::new(
        SharedRegistry::open(client, "MS_REGISTRY", 1)
            .await
            .unwrap(),
    );
    assert_eq!(reg.last_revision().await.unwrap(), 0);
    reg.put(&key("cred", "ana"), "v1".into()).await.unwrap();
    reg.put(&key("cred", "ana"), "v2".into()).await.unwrap();
    let r3 = reg.put(&key("alert", "a1"), "x".into()).await.unwrap();
    assert_eq!(reg.last_revision().await.unwrap(), r3);

    let seen: Arc<Mutex<Vec<Change>>> = Arc::default();
    let (reg2, seen2) = (reg.clone(), seen.clone());
    let watcher = tokio::spawn(async move {
        let push = move |c: Change| seen2.lock().unwrap().push(c);
        reg2.watch(0, &push).await
    });
    let wait_for = |n: usize| {
        let seen = seen.clone();
        async move {
            for _ in 0..200 {
                if seen.lock().unwrap().len() >= n {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            panic!("saw {:?}", seen.lock().unwrap());
        }
    };
    wait_for(2).await;
    let values: Vec<(String, String)> = seen
        .lock()
        .unwrap()
        .iter()
        .map(|c| (c.key.clone(), String::from_utf8(c.value.to_vec()).unwrap()))
        .collect();
    assert_eq!(
        values,
        vec![
            (key("cred", "ana"), "v2".to_string()),
            (key("alert", "a1"), "x".to_string())
        ]
    );
    let r4 = reg
        .put(&key("alert", "a1"), bytes::Bytes::new())
        .await
        .unwrap();
    wait_for(3).await;
    let last = seen.lock().unwrap()[2].clone();
    assert_eq!(
        (last.key, last.value.len(), last.revision),
        (key("alert", "a1"), 0, r4)
    );
    watcher.abort();

    // From a revision: only what came after.
    let after: Arc<Mutex<Vec<u64>>> = Arc::default();
    let (reg3, after2) = (reg.clone(), after.clone());
    let w = tokio::spawn(async move {
        let push = move |c: Change| after2.lock().unwrap().push(c.revision);
        reg3.watch(r3, &push).await
    });
    for _ in 0..200 {
        if !after.lock().unwrap().is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(*after.lock().unwrap(), vec![r4]);
    w.abort();
}
