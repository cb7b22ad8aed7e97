//! Stream paths: validation and the device id.
//!
//! A path is at most 255 bytes of UTF-8 in `/`-separated segments, e.g.
//! `00000000-00000000-00409DFF-FF418079/pst04/voltage_l1`. No segment is empty, there is no
//! leading or trailing `/`, no control character or whitespace, and no `*` (kept for patterns).
//! The first segment is the device id, the key by which all per-stream state is partitioned.

use crate::error::{Result, StorageError};

/// Longest path accepted, in bytes of UTF-8.
pub const MAX_PATH_BYTES: usize = 255;

/// Checks `path` against the path rules; the error names the rule it broke.
pub fn validate_path(path: &str) -> Result<()> {
    let bad = |reason: String| {
        Err(StorageError::InvalidPath {
            path: path.to_string(),
            reason,
        })
    };
    if path.is_empty() {
        return bad("the path is empty".into());
    }
    if path.len() > MAX_PATH_BYTES {
        return bad(format!(
            "it is {} bytes long, the limit is {MAX_PATH_BYTES} bytes of UTF-8",
            path.len()
        ));
    }
    if path.starts_with('/') {
        return bad("it starts with '/'".into());
    }
    if path.ends_with('/') {
        return bad("it ends with '/'".into());
    }
    if let Some(c) = path.chars().find(|c| c.is_control()) {
        return bad(format!(
            "it contains the control character U+{:04X}",
            c as u32
        ));
    }
    if let Some(c) = path.chars().find(|c| c.is_whitespace()) {
        return bad(format!("it contains whitespace (U+{:04X})", c as u32));
    }
    if path.contains('*') {
        return bad("it contains '*', which is reserved for patterns".into());
    }
    if path.split('/').any(str::is_empty) {
        return bad("it has an empty segment ('//')".into());
    }
    Ok(())
}

/// Checks a stream pattern: a path whose segments may each be `*` (any one segment). The same
/// rules as [`validate_path`] otherwise; the error names the rule.
pub fn validate_pattern(pattern: &str) -> Result<()> {
    if pattern
        .split('/')
        .any(|seg| seg.contains('*') && seg != "*")
    {
        return Err(StorageError::InvalidPath {
            path: pattern.to_string(),
            reason: "'*' must stand alone as a whole segment (gw/*/voltage)".into(),
        });
    }
    // A pattern obeys the path rules once its wildcards are replaced by a plain segment.
    let probe: String = pattern
        .split('/')
        .map(|seg| if seg == "*" { "x" } else { seg })
        .collect::<Vec<_>>()
        .join("/");
    validate_path(&probe).map_err(|e| match e {
        StorageError::InvalidPath { reason, .. } => StorageError::InvalidPath {
            path: pattern.to_string(),
            reason,
        },
        other => other,
    })
}

/// Whether `path` matches `pattern` segment by segment (`*` matches any one segment).
pub fn matches_pattern(pattern: &str, path: &str) -> bool {
    let (mut p, mut s) = (pattern.split('/'), path.split('/'));
    loop {
        match (p.next(), s.next()) {
            (None, None) => return true,
            (Some(a), Some(b)) if a == "*" || a == b => continue,
            _ => return false,
        }
    }
}

/// The literal prefix of a pattern before its first wildcard segment (`gw1/` for `gw1/*/v`).
pub fn pattern_prefix(pattern: &str) -> String {
    let mut out = String::new();
    for seg in pattern.split('/') {
        if seg == "*" {
            return out;
        }
        out.push_str(seg);
        out.push('/');
    }
    out
}

/// The device id of a path: its first segment.
pub fn device_id(path: &str) -> &str {
    path.split('/').next().unwrap_or(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_digi_paths() {
        validate_path("00000000-00000000-00409DFF-FF418079/pst04/voltage_l1").unwrap();
        validate_path("single").unwrap();
        validate_path("dev/ünïcödé/µV").unwrap();
    }

    #[test]
    fn rejects_each_rule_with_its_reason() {
        let cases = [
            ("", "empty"),
            ("/a/b", "starts with '/'"),
            ("a/b/", "ends with '/'"),
            ("a//b", "empty segment"),
            ("a/b c", "whitespace"),
            ("a/\u{7}", "control character"),
            ("a/*/b", "reserved for patterns"),
        ];
        for (p, why) in cases {
            let e = validate_path(p).unwrap_err().to_string();
            assert!(e.contains(why), "{p:?}: {e}");
        }
        let long = "a".repeat(256);
        assert!(validate_path(&long)
            .unwrap_err()
            .to_string()
            .contains("256 bytes"));
        validate_path(&"a".repeat(255)).unwrap();
        // 255 bytes counted in UTF-8, not characters.
        assert!(validate_path(&"é".repeat(128)).is_err());
    }

    #[test]
    fn patterns_match_whole_segments() {
        validate_pattern("*/*/active_power").unwrap();
        validate_pattern("gw1/*").unwrap();
        assert!(validate_pattern("gw*/x")
            .unwrap_err()
            .to_string()
            .contains("whole segment"));
        assert!(validate_pattern("*//x")
            .unwrap_err()
            .to_string()
            .contains("empty segment"));
        assert!(matches_pattern("*/*/p", "gw/m1/p"));
        assert!(!matches_pattern("*/*/p", "gw/m1/q"));
        assert!(!matches_pattern("*/p", "gw/m1/p"));
        assert!(matches_pattern("gw/m1/p", "gw/m1/p"));
        assert_eq!(pattern_prefix("gw1/*/v"), "gw1/");
        assert_eq!(pattern_prefix("*/v"), "");
    }

    #[test]
    fn device_id_is_the_first_segment() {
        assert_eq!(device_id("gw1/pst04/voltage"), "gw1");
        assert_eq!(device_id("gw1"), "gw1");
    }
}
