//! Data points: what is written ([`PointIn`], grouped by stream in [`GroupIn`]) and what is read
//! back ([`DataPoint`]), and the derived point id.

use crate::value::{InValue, StreamType, Value};
use serde::{Deserialize, Serialize};

/// Optional per-point fields, rare enough to be stored sparsely.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Extras {
    /// User-defined quality code.
    pub quality: Option<i32>,
    /// Location, `lat,long,elevation`.
    pub location: Option<String>,
    /// Free-text description.
    pub description: Option<String>,
}

impl Extras {
    /// Whether no field is set.
    pub fn is_empty(&self) -> bool {
        self.quality.is_none() && self.location.is_none() && self.description.is_none()
    }

    /// `Some(boxed)` when any field is set.
    pub fn boxed(self) -> Option<Box<Extras>> {
        (!self.is_empty()).then(|| Box::new(self))
    }
}

/// A stored data point, as read back.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DataPoint {
    /// The device's timestamp, ms since the epoch. With the stream, the point's identity.
    pub timestamp: i64,
    /// When the server stored the point, ms since the epoch.
    pub server_timestamp: i64,
    /// The value.
    pub value: Value,
    /// Optional fields.
    pub extras: Option<Box<Extras>>,
}

/// One point to write.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PointIn {
    /// Device timestamp in ms; `None` means the server's time.
    pub timestamp: Option<i64>,
    /// The value as sent.
    pub value: InValue,
    /// Optional fields.
    pub extras: Option<Box<Extras>>,
}

/// Points for one stream, in a write batch (serializable: a cluster logs batches, see
/// docs/scale-out.md).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GroupIn {
    /// The stream's path.
    pub stream: String,
    /// Type for the stream if this group creates it.
    pub stream_type: Option<StreamType>,
    /// Units for the stream if this group creates it.
    pub stream_units: Option<String>,
    /// The points.
    pub points: Vec<PointIn>,
    /// Index of the group's first point in the request, so errors can name items.
    pub first_index: usize,
}

/// 64-bit FNV-1a, a stable hash of a path (used in point ids and for sharding).
pub fn stable_hash(s: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in s.as_bytes() {
        h ^= *b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// The id of the point of `stream` at `timestamp`: a time-ordered UUID (version 8) whose first
/// 48 bits are the timestamp in ms and whose other bits come from a hash of the path. Because a
/// point is identified by (stream, timestamp), the id is derived, never stored, and a point that
/// is written again keeps its id.
pub fn point_id(stream: &str, timestamp: i64) -> uuid::Uuid {
    point_id_hashed(stable_hash(stream), timestamp)
}

/// [`point_id`] with the path's [`stable_hash`] computed once, for pages of many points.
pub fn point_id_hashed(h: u64, timestamp: i64) -> uuid::Uuid {
    let mut b = [0u8; 16];
    b[..6].copy_from_slice(&(timestamp as u64).to_be_bytes()[2..]);
    b[6..8].copy_from_slice(&h.to_be_bytes()[..2]);
    b[8..].copy_from_slice(&h.rotate_left(17).to_be_bytes());
    uuid::Builder::from_custom_bytes(b).into_uuid()
}

/// The timestamp encoded in a point id made by [`point_id`], if `id` is one for `stream`.
pub fn timestamp_of_point_id(stream: &str, id: &uuid::Uuid) -> Option<i64> {
    let b = id.as_bytes();
    let mut t = [0u8; 8];
    t[2..].copy_from_slice(&b[..6]);
    let ts = u64::from_be_bytes(t) as i64;
    (point_id(stream, ts) == *id).then_some(ts)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn point_ids_are_stable_time_ordered_and_invertible() {
        let a = point_id("gw/m/v", 1_700_000_000_000);
        let b = point_id("gw/m/v", 1_700_000_000_001);
        assert_eq!(a, point_id("gw/m/v", 1_700_000_000_000));
        assert!(a < b);
        assert_ne!(a, point_id("gw/m/w", 1_700_000_000_000));
        assert_eq!(a.get_version_num(), 8);
        assert_eq!(timestamp_of_point_id("gw/m/v", &a), Some(1_700_000_000_000));
        assert_eq!(timestamp_of_point_id("gw/m/w", &a), None);
    }
}
