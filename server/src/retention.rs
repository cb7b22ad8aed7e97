//! The retention task: every `interval`, deletes points older than their stream's `data_ttl`.

use meterstream_storage::time::now_ms;
use meterstream_storage::Store;
use std::sync::Arc;
use std::time::Duration;

/// Runs sweeps forever; cancel by dropping the task.
pub async fn run(store: Arc<dyn Store>, interval: Duration) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tick.tick().await;
        let s = store.clone();
        match tokio::task::spawn_blocking(move || s.sweep_retention(now_ms())).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "retention sweep failed"),
            Err(e) => tracing::warn!(error = %e, "retention sweep task failed"),
        }
    }
}
