//! From the channel layer to the server: the spool writer appends every published round to the
//! spool, and the uploader sends pending records in batches and acknowledges them in the spool
//! once the server has.
//!
//! # Spool record payload
//! A MessagePack array of readings, each `[channel, timestamp ms, value, stream type, unit]`
//! (value a float or a string; stream type its Digi name).
//!
//! # Upload
//! `POST <url>/ws/v1/streams/history` with `Content-Type: application/msgpack` in the server's
//! compact shape: `{"groups": [{"stream_id", "stream_type", "stream_units", "points":
//! [[ts, value], ...]}, ...]}`, one group per stream path `<device id>/<channel>`.
//!
//! A batch is sent when `batch_points` are pending or the oldest unsent record has waited
//! `flush_interval`. A backlog (after an outage) replays oldest first, so the server receives
//! each stream in time order. Readings taken after the backlog was found are live; once they
//! have waited `live_max_delay` they are sent ahead of the rest of the backlog. Live readings sent
//! early make the server take the remaining backlog as late data, which costs it ~20× more per
//! point (measured: benches/RESULTS.md), so short outages, which replay within that delay, are
//! sent purely in time order.
//!
//! | answer | what happens |
//! |---|---|
//! | 2xx | acknowledged; for 207, the refused items are logged at ERROR and counted |
//! | 400, 422 | the server refuses the batch for good: logged at ERROR, counted, acknowledged |
//! | 413 | the batch is halved and sent again |
//! | anything else, or no answer | retried after a backoff (doubling, with jitter) |

use crate::channel::{Reading, Sample};
use crate::config::{ServerConfig, UploadConfig};
use crate::metrics::Stats;
use crate::spool::Spool;
use rand::Rng;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Notify;

/// The spool, shared by the writer and the uploader.
pub type SharedSpool = Arc<Mutex<Spool>>;

/// Locks the spool (a panic elsewhere while it was held leaves it usable: its state is on disk).
pub fn lock(s: &SharedSpool) -> std::sync::MutexGuard<'_, Spool> {
    s.lock().unwrap_or_else(|p| p.into_inner())
}

#[derive(Serialize, Deserialize)]
struct Spooled(String, i64, Sample, String, String);

/// Encodes a round as a spool record payload.
pub fn encode_round(readings: &[Reading]) -> Vec<u8> {
    let v: Vec<Spooled> = readings
        .iter()
        .map(|r| {
            Spooled(
                r.channel.to_string(),
                r.timestamp,
                r.value.clone(),
                r.stream_type.as_str().to_string(),
                r.unit.to_string(),
            )
        })
        .collect();
    rmp_serde::to_vec(&v).unwrap_or_default()
}

/// The readings of a spool record payload as (channel, timestamp ms, value), or `None` if it
/// cannot be decoded.
pub fn decode_round(payload: &[u8]) -> Option<Vec<(String, i64, Sample)>> {
    let v: Vec<Spooled> = rmp_serde::from_slice(payload).ok()?;
    Some(v.into_iter().map(|s| (s.0, s.1, s.2)).collect())
}

#[derive(Serialize)]
struct Group<'a> {
    stream_id: String,
    stream_type: &'a str,
    stream_units: &'a str,
    points: Vec<(i64, &'a Sample)>,
}

#[derive(Serialize)]
struct Body<'a> {
    groups: Vec<Group<'a>>,
}

/// Builds the compact upload body of some spool payloads, for `device_id`. Records that cannot
/// be decoded (which the CRC makes unlikely) are skipped and counted in the second value.
pub fn build_body(device_id: &str, payloads: &[Vec<u8>]) -> (Vec<u8>, usize) {
    let mut decoded: Vec<Vec<Spooled>> = Vec::with_capacity(payloads.len());
    let mut bad = 0;
    for p in payloads {
        match rmp_serde::from_slice::<Vec<Spooled>>(p) {
            Ok(v) => decoded.push(v),
            Err(_) => bad += 1,
        }
    }
    let mut order: Vec<&str> = Vec::new();
    let mut groups: HashMap<&str, Group<'_>> = HashMap::new();
    for r in decoded.iter().flatten() {
        let g = groups.entry(r.0.as_str()).or_insert_with(|| {
            order.push(r.0.as_str());
            Group {
                stream_id: format!("{device_id}/{}", r.0),
                stream_type: r.3.as_str(),
                stream_units: r.4.as_str(),
                points: Vec::new(),
            }
        });
        g.points.push((r.1, &r.2));
    }
    let body = Body {
        groups: order.iter().filter_map(|k| groups.remove(k)).collect(),
    };
    (rmp_serde::to_vec_named(&body).unwrap_or_default(), bad)
}

/// What the server made of an upload.
#[derive(Debug, PartialEq)]
enum Answer {
    /// Stored; `refused` items were not.
    Stored { refused: usize, message: String },
    /// Refused for good.
    Refused(String),
    /// Too large: send less.
    TooLarge,
    /// Try again later.
    Retry(String),
}

/// The uploader's half: batches pending spool records and posts them.
pub struct Uploader {
    /// The spool.
    pub spool: SharedSpool,
    /// Woken whenever a record is appended.
    pub appended: Arc<Notify>,
    /// The gateway's device id.
    pub device_id: String,
    /// Where and how.
    pub server: ServerConfig,
    /// Batching and backoff.
    pub upload: UploadConfig,
    /// Counters.
    pub stats: Arc<Stats>,
    /// The last finished command id: uploads ask for the commands after it.
    pub command_cursor: Arc<crate::command::Cursor>,
    /// Where commands found in upload answers go.
    pub commands: tokio::sync::mpsc::UnboundedSender<Vec<crate::command::Incoming>>,
}

/// A batch's `Idempotency-Key`: the run's id, the first spool record it carries and a hash of
/// all of them (the same records give the same key; other records, another).
fn batch_key(run_id: &str, seqs: &[u64]) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for s in seqs {
        for b in s.to_le_bytes() {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    format!(
        "{run_id}-{}-{}-{h:016x}",
        seqs.first().copied().unwrap_or(0),
        seqs.len()
    )
}

impl Uploader {
    /// Uploads for as long as the task runs.
    pub async fn run(self) {
        let client = match reqwest::Client::builder()
            .timeout(Duration::from_secs_f64(self.server.timeout))
            .build()
        {
            Ok(c) => c,
            Err(e) => {
                tracing::error!("cannot build the HTTP client, nothing will be uploaded: {e}");
                return;
            }
        };
        let url = format!(
            "{}/ws/v1/streams/history",
            self.server.url.trim_end_matches('/')
        );
        let min = Duration::from_secs_f64(self.upload.min_backoff);
        let max = Duration::from_secs_f64(self.upload.max_backoff);
        let flush = Duration::from_secs_f64(self.upload.flush_interval);
        // This run's id: with the spool records a batch carries, its `Idempotency-Key`. A
        // batch sent again by this run (its answer was lost, or a cluster node failed) has the
        // same key, and a cluster stores it once; after a restart, keys are new, since the
        // spool's sequence numbers could start again if its files were lost.
        let run_id = format!("{:016x}", rand::thread_rng().gen::<u64>());
        let mut backoff = min;
        let mut limit = self.upload.batch_points;
        let live_max_delay = Duration::from_secs_f64(self.upload.live_max_delay);
        let mut live_from: Option<u64> = None;
        let mut live_due = tokio::time::Instant::now();
        let mut deadline: Option<tokio::time::Instant> = None;
        loop {
            // Wait for a full batch, or for the oldest pending record to have waited `flush`.
            let pending = lock(&self.spool).pending_points();
            if pending == 0 {
                deadline = None;
                self.appended.notified().await;
                continue;
            }
            let due = *deadline.get_or_insert_with(|| tokio::time::Instant::now() + flush);
            if (pending as usize) < limit && tokio::time::Instant::now() < due {
                tokio::select! {
                    () = self.appended.notified() => {}
                    () = tokio::time::sleep_until(due) => {}
                }
                continue;
            }
            // A backlog replays oldest first. Readings taken since it was found are live; if
            // they have waited `live_max_delay`, they go next.
            let backlog = pending as usize > limit;
            let (seqs, payloads, points) = {
                let sp = lock(&self.spool);
                match (backlog, live_from) {
                    (true, None) => {
                        live_from = Some(sp.next_seq());
                        live_due = tokio::time::Instant::now() + live_max_delay;
                    }
                    (false, _) => live_from = None,
                    (true, Some(_)) => {}
                }
                let live = live_from.filter(|_| tokio::time::Instant::now() >= live_due);
                if live.is_some() {
                    live_due = tokio::time::Instant::now() + live_max_delay;
                }
                let (seqs, points) = choose(sp.pending(), limit, live);
                let mut payloads = Vec::with_capacity(seqs.len());
                let mut ok = Vec::with_capacity(seqs.len());
                for s in seqs {
                    match sp.read(s) {
                        Ok((_, p)) => {
                            payloads.push(p);
                            ok.push(s);
                        }
                        Err(e) => tracing::error!("reading the spool: {e}"),
                    }
                }
                (ok, payloads, points)
            };
            if seqs.is_empty() {
                tokio::time::sleep(min).await;
                continue;
            }
            let (body, bad) = build_body(&self.device_id, &payloads);
            if bad > 0 {
                tracing::error!(
                    records = bad,
                    "spool records that cannot be decoded are dropped"
                );
            }
            let key = batch_key(&run_id, &seqs);
            let answer = self.post(&client, &url, body, &key).await;
            match answer {
                Answer::Stored { refused, message } => {
                    if refused > 0 {
                        tracing::error!(refused, "the server refused some readings: {message}");
                        self.stats
                            .rejected_points
                            .fetch_add(refused as u64, Ordering::Relaxed);
                    }
                    self.ack(&seqs, points).await;
                    backoff = min;
                    limit = self.upload.batch_points;
                    deadline = None;
                }
                Answer::Refused(message) => {
                    tracing::error!(
                        points,
                        "the server refused a batch for good, it is dropped: {message}"
                    );
                    self.stats
                        .rejected_points
                        .fetch_add(points as u64, Ordering::Relaxed);
                    self.ack(&seqs, points).await;
                }
                Answer::TooLarge => {
                    limit = (limit / 2).max(1);
                    tracing::warn!(
                        limit,
                        "the server found the batch too large; sending smaller ones"
                    );
                }
                Answer::Retry(why) => {
                    self.stats.upload_failures.fetch_add(1, Ordering::Relaxed);
                    let jittered = backoff.mul_f64(rand::thread_rng().gen_range(0.5..1.0));
                    tracing::warn!(
                        retry_in_ms = jittered.as_millis() as u64,
                        pending,
                        "upload failed: {why}"
                    );
                    tokio::time::sleep(jittered).await;
                    backoff = (backoff * 2).min(max);
                }
            }
        }
    }

    async fn ack(&self, seqs: &[u64], points: usize) {
        let spool = self.spool.clone();
        let seqs = seqs.to_vec();
        let r = tokio::task::spawn_blocking(move || lock(&spool).ack(&seqs)).await;
        match r {
            Ok(Ok(())) => {
                self.stats
                    .uploaded_points
                    .fetch_add(points as u64, Ordering::Relaxed);
            }
            // The records stay pending and are sent again; the server stores nothing twice.
            Ok(Err(e)) => tracing::error!("recording an acknowledgement in the spool: {e}"),
            Err(e) => tracing::error!("recording an acknowledgement in the spool: {e}"),
        }
    }

    async fn post(&self, client: &reqwest::Client, url: &str, body: Vec<u8>, key: &str) -> Answer {
        let mut req = client
            .post(url)
            .header("content-type", "application/msgpack")
            .header("idempotency-key", key)
            .body(body);
        req = crate::command::authorize(&self.server, req);
        let r = match req
            .query(&[("commands_after", self.command_cursor.get())])
            .send()
            .await
        {
            Ok(r) => r,
            Err(e) => return Answer::Retry(e.to_string()),
        };
        let status = r.status().as_u16();
        let text = r.text().await.unwrap_or_default();
        if (200..300).contains(&status) {
            let commands = serde_json::from_str::<serde_json::Value>(&text)
                .ok()
                .and_then(|v| {
                    serde_json::from_value::<Vec<crate::command::Incoming>>(v["commands"].clone())
                        .ok()
                })
                .unwrap_or_default();
            if !commands.is_empty() {
                let _ = self.commands.send(commands);
            }
        }
        classify(status, &text)
    }
}

/// The seqs of the next batch and their points: the oldest pending records up to `limit`
/// points (at least one record), or with `live_from`, the oldest of those from that seq on (and
/// the oldest overall if there are none).
pub fn choose(
    pending: impl Iterator<Item = (u64, u32)> + Clone,
    limit: usize,
    live_from: Option<u64>,
) -> (Vec<u64>, usize) {
    let take = |it: &mut dyn Iterator<Item = (u64, u32)>| {
        let mut seqs = Vec::new();
        let mut points = 0usize;
        for (seq, p) in it {
            if !seqs.is_empty() && points + p as usize > limit {
                break;
            }
            seqs.push(seq);
            points += p as usize;
        }
        (seqs, points)
    };
    if let Some(from) = live_from {
        let live = take(&mut pending.clone().filter(|(s, _)| *s >= from));
        if !live.0.is_empty() {
            return live;
        }
    }
    take(&mut pending.into_iter())
}

fn classify(status: u16, text: &str) -> Answer {
    match status {
        207 => {
            let refused = serde_json::from_str::<serde_json::Value>(text)
                .ok()
                .and_then(|v| v["errors"].as_array().map(Vec::len))
                .unwrap_or(1);
            Answer::Stored {
                refused,
                message: text.chars().take(500).collect(),
            }
        }
        200..=299 => Answer::Stored {
            refused: 0,
            message: String::new(),
        },
        400 | 422 => Answer::Refused(format!(
            "{status}: {}",
            text.chars().take(500).collect::<String>()
        )),
        413 => Answer::TooLarge,
        _ => Answer::Retry(format!(
            "{status}: {}",
            text.chars().take(200).collect::<String>()
        )),
    }
}

/// The spool writer: appends every round received to the spool and wakes the uploader. When
/// `stop` fires it takes no new rounds, appends those already queued, and returns.
pub async fn write_rounds(
    mut rx: tokio::sync::mpsc::Receiver<crate::channel::Round>,
    spool: SharedSpool,
    appended: Arc<Notify>,
    stats: Arc<Stats>,
    stop: tokio::sync::oneshot::Receiver<()>,
) {
    let mut stop = std::pin::pin!(stop);
    let mut stopping = false;
    loop {
        let round = if stopping {
            rx.recv().await
        } else {
            tokio::select! {
                r = rx.recv() => r,
                _ = &mut stop => {
                    stopping = true;
                    rx.close();
                    continue;
                }
            }
        };
        let Some(round) = round else {
            return;
        };
        let payload = encode_round(&round);
        let points = round.len() as u32;
        let sp = spool.clone();
        let r = tokio::task::spawn_blocking(move || lock(&sp).append(points, &payload)).await;
        match r {
            Ok(Ok(_)) => appended.notify_one(),
            Ok(Err(e)) => {
                stats
                    .spool_write_failures
                    .fetch_add(u64::from(points), Ordering::Relaxed);
                tracing::error!(
                    points,
                    "cannot write readings to the spool, they are lost: {e}"
                );
            }
            Err(e) => tracing::error!("spool writer: {e}"),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use meterstream_storage::StreamType;

    #[test]
    fn a_batch_key_names_the_run_and_exactly_the_records() {
        let k = batch_key("00ff", &[3, 4, 6]);
        assert_eq!(
            k,
            batch_key("00ff", &[3, 4, 6]),
            "the same records, the same key"
        );
        assert!(k.starts_with("00ff-3-3-"), "{k}");
        // Same first record and count, another record: another key.
        assert_ne!(k, batch_key("00ff", &[3, 5, 6]));
        assert_ne!(k, batch_key("00fe", &[3, 4, 6]));
        assert!(k.len() <= 200 && k.bytes().all(|b| (0x21..=0x7e).contains(&b)));
    }

    #[test]
    fn rounds_become_one_group_per_stream_in_time_order() {
        let r = |c: &str, t: i64, v: Sample| Reading {
            channel: c.into(),
            timestamp: t,
            value: v,
            stream_type: if c.ends_with("status") {
                StreamType::String
            } else {
                StreamType::Double
            },
            unit: if c.ends_with("status") {
                "".into()
            } else {
                "V".into()
            },
        };
        let p1 = encode_round(&[
            r("m/v", 1000, Sample::Number(230.5)),
            r("m/status", 1000, Sample::Text("active".into())),
        ]);
        let p2 = encode_round(&[r("m/v", 2000, Sample::Number(231.0))]);
        let (body, bad) = build_body("gw1", &[p1, p2, vec![1, 2, 3]]);
        assert_eq!(bad, 1);
        let v: serde_json::Value = rmp_serde::from_slice(&body).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"groups": [
                {"stream_id": "gw1/m/v", "stream_type": "DOUBLE", "stream_units": "V", "points": [[1000, 230.5], [2000, 231.0]]},
                {"stream_id": "gw1/m/status", "stream_type": "STRING", "stream_units": "", "points": [[1000, "active"]]},
            ]})
        );
    }

    #[test]
    fn batches_are_the_oldest_records_or_the_live_ones() {
        let pending = [(3u64, 40u32), (4, 40), (5, 40), (9, 40), (10, 40)];
        let it = || pending.iter().copied();
        assert_eq!(choose(it(), 100, None), (vec![3, 4], 80));
        assert_eq!(choose(it(), 1000, None), (vec![3, 4, 5, 9, 10], 200));
        // A record larger than the limit still goes, alone.
        assert_eq!(choose(it(), 10, None), (vec![3], 40));
        assert_eq!(choose(it(), 100, Some(9)), (vec![9, 10], 80));
        assert_eq!(choose(it(), 100, Some(11)), (vec![3, 4], 80));
    }

    #[test]
    fn answers_are_classified() {
        assert_eq!(
            classify(200, ""),
            Answer::Stored {
                refused: 0,
                message: String::new()
            }
        );
        assert!(matches!(
            classify(207, r#"{"errors":[{},{}]}"#),
            Answer::Stored { refused: 2, .. }
        ));
        assert!(matches!(classify(400, "bad"), Answer::Refused(_)));
        assert_eq!(classify(413, ""), Answer::TooLarge);
        for s in [401, 403, 404, 429, 500, 503] {
            assert!(matches!(classify(s, ""), Answer::Retry(_)), "{s}");
        }
    }
}
