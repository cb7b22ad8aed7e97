//! The channel layer, in the spirit of the channel manager of Digi's gateway framework: meters
//! publish readings to named channels (`<meter>/<channel>`, `metrics/...`), and subscribers
//! receive those matching their pattern. The uploader is one subscriber; a local alarm or log is
//! another.
//!
//! A publication is one sampling round (all readings of one meter at one time), delivered whole.
//! A *reliable* subscriber (the uploader's spool writer) is never skipped: a publisher waits
//! while its queue is full. A *lossy* subscriber (a display, a local log) is skipped when its
//! queue is full, and the skipped readings are counted.

use meterstream_storage::StreamType;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::mpsc;

/// A reading's value.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(untagged)]
pub enum Sample {
    /// A number.
    Number(f64),
    /// Text (a meter's `status`).
    Text(String),
}

/// One reading on one channel.
#[derive(Debug, Clone, PartialEq)]
pub struct Reading {
    /// Channel name, `<meter>/<channel>` or `metrics/...`; the stream path is
    /// `<device id>/<channel name>`.
    pub channel: Arc<str>,
    /// Time it was taken, Unix ms.
    pub timestamp: i64,
    /// The value.
    pub value: Sample,
    /// Stream type the server should create the stream with.
    pub stream_type: StreamType,
    /// Units (may be empty).
    pub unit: Arc<str>,
}

/// What a subscriber receives: one publication.
pub type Round = Arc<Vec<Reading>>;

struct Subscriber {
    pattern: Option<String>,
    tx: mpsc::Sender<Round>,
    reliable: bool,
    skipped: Arc<AtomicU64>,
}

/// The channel layer. Cheap to clone.
#[derive(Clone, Default)]
pub struct Channels {
    subs: Arc<Mutex<Vec<Subscriber>>>,
}

/// A subscription: the receiving end and, for a lossy one, the count of readings it missed.
pub struct Subscription {
    /// Publications, in the order they were published.
    pub rx: mpsc::Receiver<Round>,
    /// Readings not delivered because the queue was full (always 0 for a reliable one).
    pub skipped: Arc<AtomicU64>,
}

impl Channels {
    /// A channel layer without subscribers.
    pub fn new() -> Channels {
        Channels::default()
    }

    /// Subscribes to channels matching `pattern` (`*` = any one segment; `None` = every
    /// channel), with a queue of `capacity` publications.
    pub fn subscribe(
        &self,
        pattern: Option<&str>,
        capacity: usize,
        reliable: bool,
    ) -> Subscription {
        let (tx, rx) = mpsc::channel(capacity.max(1));
        let skipped = Arc::new(AtomicU64::new(0));
        self.lock().push(Subscriber {
            pattern: pattern.map(str::to_string),
            tx,
            reliable,
            skipped: skipped.clone(),
        });
        Subscription { rx, skipped }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Subscriber>> {
        // A panic while holding this lock leaves the list valid; keep going.
        self.subs.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Publishes one round to every matching subscriber; waits while a reliable subscriber's
    /// queue is full. Subscribers that have gone away are forgotten.
    pub async fn publish(&self, readings: Vec<Reading>) {
        if readings.is_empty() {
            return;
        }
        let all: Round = Arc::new(readings);
        // Decide under the lock, send outside it.
        let targets: Vec<(mpsc::Sender<Round>, bool, Arc<AtomicU64>, Round)> = {
            let mut subs = self.lock();
            subs.retain(|s| !s.tx.is_closed());
            subs.iter()
                .filter_map(|s| {
                    let round = match &s.pattern {
                        None => all.clone(),
                        Some(p) => {
                            let mine: Vec<Reading> = all
                                .iter()
                                .filter(|r| {
                                    meterstream_storage::path::matches_pattern(p, &r.channel)
                                })
                                .cloned()
                                .collect();
                            if mine.is_empty() {
                                return None;
                            }
                            if mine.len() == all.len() {
                                all.clone()
                            } else {
                                Arc::new(mine)
                            }
                        }
                    };
                    Some((s.tx.clone(), s.reliable, s.skipped.clone(), round))
                })
                .collect()
        };
        for (tx, reliable, skipped, round) in targets {
            if reliable {
                // Err only if the subscriber has gone; it is dropped at the next publish.
                let _ = tx.send(round).await;
            } else if let Err(mpsc::error::TrySendError::Full(r)) = tx.try_send(round) {
                skipped.fetch_add(r.len() as u64, Ordering::Relaxed);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn reading(channel: &str, ts: i64, v: f64) -> Reading {
        Reading {
            channel: channel.into(),
            timestamp: ts,
            value: Sample::Number(v),
            stream_type: StreamType::Double,
            unit: "V".into(),
        }
    }

    #[tokio::test]
    async fn subscribers_get_what_matches_their_pattern_in_order() {
        let ch = Channels::new();
        let mut all = ch.subscribe(None, 8, true);
        let mut volts = ch.subscribe(Some("*/voltage_l1"), 8, true);
        let mut none = ch.subscribe(Some("other/*"), 8, true);
        for t in 0..3 {
            ch.publish(vec![
                reading("m1/voltage_l1", t, 230.0),
                reading("m1/current_l1", t, 5.0),
            ])
            .await;
        }
        for t in 0..3 {
            let r = all.rx.recv().await.unwrap();
            assert_eq!(r.len(), 2);
            assert_eq!(r[0].timestamp, t);
            let v = volts.rx.recv().await.unwrap();
            assert_eq!(v.len(), 1);
            assert_eq!(&*v[0].channel, "m1/voltage_l1");
        }
        assert!(none.rx.try_recv().is_err());
    }

    #[tokio::test]
    async fn a_full_lossy_subscriber_is_skipped_and_counted_a_reliable_one_waits() {
        let ch = Channels::new();
        let lossy = ch.subscribe(None, 1, false);
        let mut reliable = ch.subscribe(None, 1, true);
        ch.publish(vec![reading("a/b", 1, 1.0)]).await;
        // The reliable queue is full now: the next publish waits until it is read.
        let ch2 = ch.clone();
        let second = tokio::spawn(async move {
            ch2.publish(vec![reading("a/b", 2, 2.0), reading("a/c", 2, 2.0)])
                .await;
        });
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        assert!(!second.is_finished());
        assert_eq!(reliable.rx.recv().await.unwrap()[0].timestamp, 1);
        second.await.unwrap();
        assert_eq!(reliable.rx.recv().await.unwrap()[0].timestamp, 2);
        assert_eq!(lossy.skipped.load(Ordering::Relaxed), 2);
    }
}
