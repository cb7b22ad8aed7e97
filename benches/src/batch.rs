//! Encoding the workload as the compact MessagePack batches a gateway sends: each batch holds one
//! gateway's streams over a window of seconds, so each stream's path is sent once per batch.

use crate::workload::{Fleet, UNITS};
use serde::Serialize;

#[derive(Serialize)]
struct Group<'a> {
    stream_id: String,
    stream_type: &'a str,
    stream_units: &'a str,
    points: Vec<(i64, f64)>,
}

#[derive(Serialize)]
struct Body<'a> {
    groups: Vec<Group<'a>>,
}

/// Generates the workload for `seconds` seconds from `start_ms` and returns the encoded batches
/// in sending order (window by window, gateway by gateway), each about `batch_points` points.
pub fn build(
    fleet: &mut Fleet,
    meters_per_gateway: usize,
    start_ms: i64,
    seconds: usize,
    batch_points: usize,
) -> Vec<Vec<u8>> {
    let meters = fleet.meters();
    let gateways = meters.div_ceil(meters_per_gateway);
    let per_gw_streams = meters_per_gateway * 12;
    let window = (batch_points / per_gw_streams).max(1);
    let mut out = Vec::new();
    let paths: Vec<Vec<String>> = (0..meters)
        .map(|m| (0..12).map(|c| fleet.stream_path(m, c)).collect())
        .collect();
    let mut s = 0;
    while s < seconds {
        let w = window.min(seconds - s);
        // values[m][c] over the window
        let mut vals: Vec<Vec<Vec<(i64, f64)>>> = (0..meters)
            .map(|_| (0..12).map(|_| Vec::with_capacity(w)).collect())
            .collect();
        for k in 0..w {
            let t = start_ms + ((s + k) as i64) * 1000;
            fleet.second(t, |m, v| {
                for c in 0..12 {
                    vals[m][c].push((t, v[c]));
                }
            });
        }
        for g in 0..gateways {
            let mut groups = Vec::with_capacity(per_gw_streams);
            for m in g * meters_per_gateway..((g + 1) * meters_per_gateway).min(meters) {
                for c in 0..12 {
                    groups.push(Group {
                        stream_id: paths[m][c].clone(),
                        stream_type: "DOUBLE",
                        stream_units: UNITS[c],
                        points: std::mem::take(&mut vals[m][c]),
                    });
                }
            }
            // Encoding plain structs of strings and numbers cannot fail.
            out.push(rmp_serde::to_vec_named(&Body { groups }).unwrap_or_default());
        }
        s += w;
    }
    out
}
