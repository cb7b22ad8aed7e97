//! Streams: their user-set metadata and what the store reports about them.

use crate::point::DataPoint;
use crate::value::StreamType;
use serde::{Deserialize, Serialize};

/// Metadata of a stream, as users set it (Digi's stream fields less the current value).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StreamMeta {
    /// The data type of every value of the stream.
    pub stream_type: StreamType,
    /// Units, free text (`V`, `kWh`).
    #[serde(default)]
    pub units: String,
    /// Description, free text.
    #[serde(default)]
    pub description: String,
    /// Streams each point is also copied to.
    #[serde(default)]
    pub forward_to: Vec<String>,
    /// Seconds a raw point lives; `None` keeps points forever.
    #[serde(default)]
    pub data_ttl: Option<u64>,
    /// Seconds a rollup value lives; `None` keeps rollups forever.
    #[serde(default)]
    pub rollup_ttl: Option<u64>,
}

impl StreamMeta {
    /// Metadata of a new stream of type `stream_type` with everything else unset.
    pub fn new(stream_type: StreamType) -> Self {
        StreamMeta {
            stream_type,
            units: String::new(),
            description: String::new(),
            forward_to: Vec::new(),
            data_ttl: None,
            rollup_ttl: None,
        }
    }
}

/// Changes to a stream's metadata; `None` leaves a field as it is (or at its default on creation).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StreamUpdate {
    /// New type; changing the type of a stream that holds points is a conflict.
    pub stream_type: Option<StreamType>,
    /// New units.
    pub units: Option<String>,
    /// New description.
    pub description: Option<String>,
    /// New forward list.
    pub forward_to: Option<Vec<String>>,
    /// New data TTL in seconds; `Some(None)` clears it.
    pub data_ttl: Option<Option<u64>>,
    /// New rollup TTL in seconds; `Some(None)` clears it.
    pub rollup_ttl: Option<Option<u64>>,
}

/// A stream as the store reports it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StreamInfo {
    /// The stream's path.
    pub path: String,
    /// Its metadata.
    pub meta: StreamMeta,
    /// Its latest point, if it has any.
    pub current: Option<DataPoint>,
    /// When the stream was created (server time, ms).
    pub created: i64,
}
