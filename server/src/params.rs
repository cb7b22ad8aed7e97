//! Query parameters: taken one by one by name, so that a misspelt or unknown parameter is a 400
//! that names it instead of being silently ignored.

use crate::error::ApiError;
use meterstream_storage::time::parse_query_time;
use meterstream_storage::{Cursor, Order, Timeline};

/// The query parameters of one request.
#[derive(Debug)]
pub struct Params(Vec<(String, String)>);

/// Items a page holds when `size` is not given: Digi's page size, so a Digi client pages the
/// same way.
pub const DEFAULT_SIZE: usize = 1000;

/// Most items a page may hold. Digi stops at 1,000; a larger page saves a chart or an export
/// its round trips (a day of 1-minute rollups of 12 streams is 17,280 rows). The bound keeps one
/// answer's memory in check (about 20 MB of JSON at Digi's full point shape).
pub const MAX_SIZE: usize = 100_000;

/// An opaque `cursor` for a position given as text (a device or alert id, a sequence number).
pub fn opaque_cursor(position: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(position)
}

impl Params {
    /// `cursor` as the text position [`opaque_cursor`] made.
    pub fn text_cursor(&mut self) -> Result<Option<String>, ApiError> {
        use base64::Engine as _;
        self.take("cursor")?
            .map(|c| {
                base64::engine::general_purpose::URL_SAFE_NO_PAD
                    .decode(c)
                    .ok()
                    .and_then(|b| String::from_utf8(b).ok())
                    .ok_or_else(|| ApiError::param("cursor", "it is not a cursor this server gave"))
            })
            .transpose()
    }

    /// `cursor` as a number position (0 without a cursor).
    pub fn number_cursor(&mut self) -> Result<u64, ApiError> {
        match self.text_cursor()? {
            None => Ok(0),
            Some(t) => t
                .parse()
                .map_err(|_| ApiError::param("cursor", "it is not a cursor this server gave")),
        }
    }

    /// Parses a query string.
    pub fn parse(query: &str) -> Result<Params, ApiError> {
        serde_urlencoded::from_str::<Vec<(String, String)>>(query)
            .map(Params)
            .map_err(|e| ApiError::BadRequest(format!("the query string cannot be parsed: {e}")))
    }

    /// Takes a parameter; given twice is an error.
    pub fn take(&mut self, name: &str) -> Result<Option<String>, ApiError> {
        let mut found = None;
        let mut dup = false;
        self.0.retain(|(k, v)| {
            if k == name {
                dup |= found.is_some();
                found = Some(v.clone());
                false
            } else {
                true
            }
        });
        if dup {
            return Err(ApiError::param(name, "it is given more than once"));
        }
        Ok(found)
    }

    /// Fails naming the first parameter nobody took.
    pub fn finish(self, allowed: &[&str]) -> Result<(), ApiError> {
        match self.0.first() {
            None => Ok(()),
            Some((k, _)) => Err(ApiError::BadRequest(format!(
                "unknown query parameter {k:?}; this endpoint takes {}",
                allowed.join(", ")
            ))),
        }
    }

    /// `size`: 1..=[`MAX_SIZE`], default [`DEFAULT_SIZE`].
    pub fn size(&mut self) -> Result<usize, ApiError> {
        match self.take("size")? {
            None => Ok(DEFAULT_SIZE),
            Some(s) => match s.trim().parse::<usize>() {
                Ok(n) if (1..=MAX_SIZE).contains(&n) => Ok(n),
                _ => Err(ApiError::param(
                    "size",
                    format!("{s:?} is not a whole number from 1 to {MAX_SIZE}"),
                )),
            },
        }
    }

    /// `order`: asc (default) or desc (also Digi's `ascending`/`descending`).
    pub fn order(&mut self) -> Result<Order, ApiError> {
        match self
            .take("order")?
            .as_deref()
            .map(str::to_ascii_lowercase)
            .as_deref()
        {
            None | Some("asc") | Some("ascending") => Ok(Order::Asc),
            Some("desc") | Some("descending") => Ok(Order::Desc),
            Some(o) => Err(ApiError::param(
                "order",
                format!("{o:?} is not asc or desc"),
            )),
        }
    }

    /// A flag: `true` or `false` (default).
    pub fn flag(&mut self, name: &str) -> Result<bool, ApiError> {
        match self.take(name)?.as_deref() {
            None | Some("false") => Ok(false),
            Some("true") => Ok(true),
            Some(x) => Err(ApiError::param(name, format!("{x:?} is not true or false"))),
        }
    }

    /// `timeline`: client (default) or server.
    pub fn timeline(&mut self) -> Result<Timeline, ApiError> {
        match self.take("timeline")?.as_deref() {
            None | Some("client") => Ok(Timeline::Client),
            Some("server") => Ok(Timeline::Server),
            Some(t) => Err(ApiError::param(
                "timeline",
                format!("{t:?} is not client or server"),
            )),
        }
    }

    /// `cursor`, decoded.
    pub fn cursor(&mut self) -> Result<Option<Cursor>, ApiError> {
        match self.take("cursor")? {
            None => Ok(None),
            Some(c) => Cursor::decode(&c).map(Some).map_err(ApiError::from),
        }
    }

    /// A time parameter (ISO 8601, epoch ms or relative to `now`).
    pub fn time(&mut self, name: &str, now: i64) -> Result<Option<i64>, ApiError> {
        match self.take(name)? {
            None => Ok(None),
            Some(t) => parse_query_time(&t, now)
                .map(Some)
                .map_err(|e| ApiError::param(name, e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_are_true_false_or_absent_and_anything_else_names_the_parameter() {
        let mut p = Params::parse("a=true&b=false&c=yes").unwrap_or_else(|e| panic!("{e}"));
        assert!(matches!(p.flag("a"), Ok(true)));
        assert!(matches!(p.flag("b"), Ok(false)));
        assert!(matches!(p.flag("missing"), Ok(false)));
        match p.flag("c") {
            Err(e) => assert!(
                e.to_string().contains("c") && e.to_string().contains("yes"),
                "{e}"
            ),
            Ok(v) => panic!("c=yes read as {v}"),
        }
    }
}
