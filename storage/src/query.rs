//! What readers ask for: history ranges, stream filters, pages, and the opaque cursors that carry
//! a reader from one page to the next.
//!
//! A cursor is the position after the last item of a page, never an offset, so paging returns
//! every item exactly once even while new points arrive: `(timestamp)` on the client timeline,
//! `(server timestamp, timestamp)` on the server timeline, the last path for stream listings.
//! On the wire it is base64url of `u8 version, u8 kind, u8 order, fields`.

use crate::codec::{put_bytes, put_zvarint, Reader};
use crate::error::{Result, StorageError};
use crate::stream::StreamInfo;
use crate::value::StreamType;
use base64::Engine as _;

/// Sort order of a listing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Order {
    /// Oldest (or first path) first.
    #[default]
    Asc,
    /// Newest (or last path) first.
    Desc,
}

/// Which timestamp a history query ranges and orders by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Timeline {
    /// The device's timestamp.
    #[default]
    Client,
    /// The server's receive timestamp.
    Server,
}

/// A raw-history read.
#[derive(Debug, Clone, PartialEq)]
pub struct HistoryQuery {
    /// First timestamp included.
    pub from: i64,
    /// First timestamp excluded.
    pub to: i64,
    /// Order of the items.
    pub order: Order,
    /// Timeline that `from`, `to` and the order refer to.
    pub timeline: Timeline,
    /// Most items returned.
    pub limit: usize,
    /// Where the previous page ended.
    pub cursor: Option<Cursor>,
}

/// A page of a listing.
#[derive(Debug, Clone, PartialEq)]
pub struct Page<T> {
    /// The items.
    pub items: Vec<T>,
    /// Cursor for the next page; `None` on the last page.
    pub next: Option<Cursor>,
}

/// A position in a listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cursor {
    /// After (or, descending, before) this device timestamp.
    Client {
        /// Order of the query that made it.
        order: Order,
        /// Last timestamp returned.
        ts: i64,
    },
    /// After this (server timestamp, timestamp) pair.
    Server {
        /// Order of the query that made it.
        order: Order,
        /// Last server timestamp returned.
        server_ts: i64,
        /// Last timestamp returned.
        ts: i64,
    },
    /// After this key (a stream path, or a folder child name).
    Key {
        /// Order of the query that made it.
        order: Order,
        /// Last key returned.
        key: String,
    },
}

const CURSOR_VERSION: u8 = 1;

impl Cursor {
    /// The order of the query this cursor belongs to.
    pub fn order(&self) -> Order {
        match self {
            Cursor::Client { order, .. }
            | Cursor::Server { order, .. }
            | Cursor::Key { order, .. } => *order,
        }
    }

    /// The opaque text form.
    pub fn encode(&self) -> String {
        let mut b = vec![CURSOR_VERSION];
        let order = |o: Order| if o == Order::Asc { 0 } else { 1 };
        match self {
            Cursor::Client { order: o, ts } => {
                b.extend([1, order(*o)]);
                put_zvarint(&mut b, *ts);
            }
            Cursor::Server {
                order: o,
                server_ts,
                ts,
            } => {
                b.extend([2, order(*o)]);
                put_zvarint(&mut b, *server_ts);
                put_zvarint(&mut b, *ts);
            }
            Cursor::Key { order: o, key } => {
                b.extend([3, order(*o)]);
                put_bytes(&mut b, key.as_bytes());
            }
        }
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
    }

    /// Parses the text form; any damage is an [`StorageError::InvalidArgument`] on `cursor`.
    pub fn decode(text: &str) -> Result<Cursor> {
        let bad = || {
            StorageError::invalid(
                "cursor",
                format!("{text:?} is not a cursor this server issued"),
            )
        };
        let b = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(text.trim())
            .map_err(|_| bad())?;
        let mut r = Reader::new(&b, "cursor");
        if r.u8().map_err(|_| bad())? != CURSOR_VERSION {
            return Err(bad());
        }
        let kind = r.u8().map_err(|_| bad())?;
        let order = match r.u8().map_err(|_| bad())? {
            0 => Order::Asc,
            1 => Order::Desc,
            _ => return Err(bad()),
        };
        let c = match kind {
            1 => Cursor::Client {
                order,
                ts: r.zvarint().map_err(|_| bad())?,
            },
            2 => Cursor::Server {
                order,
                server_ts: r.zvarint().map_err(|_| bad())?,
                ts: r.zvarint().map_err(|_| bad())?,
            },
            3 => Cursor::Key {
                order,
                key: r.string().map_err(|_| bad())?,
            },
            _ => return Err(bad()),
        };
        if !r.is_empty() {
            return Err(bad());
        }
        Ok(c)
    }
}

/// Comparison operators of stream filters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CmpOp {
    /// `=`
    Eq,
    /// `<>`
    Ne,
    /// `<`
    Lt,
    /// `<=`
    Le,
    /// `>`
    Gt,
    /// `>=`
    Ge,
}

impl CmpOp {
    /// Applies the operator.
    pub fn test<T: PartialOrd>(self, a: &T, b: &T) -> bool {
        match self {
            CmpOp::Eq => a == b,
            CmpOp::Ne => a != b,
            CmpOp::Lt => a < b,
            CmpOp::Le => a <= b,
            CmpOp::Gt => a > b,
            CmpOp::Ge => a >= b,
        }
    }
}

/// One condition of a stream filter.
#[derive(Debug, Clone, PartialEq)]
pub enum Condition {
    /// The path starts with this prefix.
    IdStartsWith(String),
    /// The path starts with one of these prefixes (a credential's scope).
    Within(Vec<String>),
    /// The path is this one or lies under it (`p` or `p/...`): Digi's `/ws/DataStream/{p}`.
    Subtree(String),
    /// The path contains this text.
    IdContains(String),
    /// Compares the path.
    Id(CmpOp, String),
    /// Compares the type.
    Type(CmpOp, StreamType),
    /// Compares the units.
    Units(CmpOp, String),
    /// The description contains this text.
    DescriptionContains(String),
    /// Compares the server time of the last write of the current value (ms); streams without a
    /// value never match.
    LastUpdate(CmpOp, i64),
}

/// Conditions that must all hold.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StreamFilter {
    /// The conditions, joined with `and`.
    pub conditions: Vec<Condition>,
}

impl StreamFilter {
    /// Whether `s` passes every condition.
    pub fn matches(&self, s: &StreamInfo) -> bool {
        self.conditions.iter().all(|c| match c {
            Condition::IdStartsWith(p) => s.path.starts_with(p.as_str()),
            Condition::Within(ps) => ps.iter().any(|p| s.path.starts_with(p.as_str())),
            Condition::Subtree(p) => {
                s.path.starts_with(p.as_str())
                    && (s.path.len() == p.len() || s.path.as_bytes().get(p.len()) == Some(&b'/'))
            }
            Condition::IdContains(p) => s.path.contains(p.as_str()),
            Condition::Id(op, v) => op.test(&s.path.as_str(), &v.as_str()),
            Condition::Type(op, t) => match op {
                CmpOp::Eq => s.meta.stream_type == *t,
                CmpOp::Ne => s.meta.stream_type != *t,
                _ => op.test(&s.meta.stream_type.as_str(), &t.as_str()),
            },
            Condition::Units(op, u) => op.test(&s.meta.units.as_str(), &u.as_str()),
            Condition::DescriptionContains(d) => s.meta.description.contains(d.as_str()),
            Condition::LastUpdate(op, t) => s
                .current
                .as_ref()
                .is_some_and(|c| op.test(&c.server_timestamp, t)),
        })
    }

    /// The longest path prefix every match must have, to narrow the scan.
    pub fn prefix(&self) -> &str {
        self.conditions
            .iter()
            .filter_map(|c| match c {
                Condition::IdStartsWith(p) | Condition::Subtree(p) => Some(p.as_str()),
                _ => None,
            })
            .max_by_key(|p| p.len())
            .unwrap_or("")
    }
}

/// A direct child of a folder.
#[derive(Debug, Clone, PartialEq)]
pub enum Child {
    /// A sub-folder.
    Folder {
        /// Its last segment.
        name: String,
        /// Its full path.
        path: String,
        /// How many streams lie under it, at any depth.
        streams: usize,
    },
    /// A stream directly in the folder.
    Stream(Box<StreamInfo>),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_reject_garbage() {
        for c in [
            Cursor::Client {
                order: Order::Desc,
                ts: 1_700_000_000_000,
            },
            Cursor::Server {
                order: Order::Asc,
                server_ts: 5,
                ts: 0,
            },
            Cursor::Key {
                order: Order::Asc,
                key: "gw/ü/x".into(),
            },
        ] {
            assert_eq!(Cursor::decode(&c.encode()).unwrap(), c);
        }
        for bad in ["", "!!", "AAAA", "AQEA", "AQEAAAA"] {
            let e = Cursor::decode(bad).unwrap_err();
            assert!(e.to_string().contains("cursor"), "{bad}: {e}");
        }
    }
}
