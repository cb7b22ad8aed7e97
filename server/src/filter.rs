//! The `query` parameter of `GET /ws/v1/streams/inventory`, Digi's small filter language:
//!
//! ```text
//! query     := condition ("and" condition)*
//! condition := field operator value
//! field     := id | type | units | description | last_update
//! operator  := startsWith | contains | = | <> | != | < | <= | > | >=
//! value     := 'text' | "text" | bare-token          (a quote inside is doubled: 'it''s')
//! ```
//! `id startsWith 'gw1/'`, `id contains 'voltage'`, `type = 'double'`, `units = 'V'`,
//! `description contains 'phase'`, `last_update > -1h` (any time form of the history API).
//! Keywords are case-insensitive. Errors name the token they stumbled on.

use crate::error::ApiError;
use meterstream_storage::time::parse_query_time;
use meterstream_storage::{CmpOp, Condition, StreamFilter, StreamType};

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Word(String),
    Quoted(String),
    Op(&'static str),
}

fn bad(msg: impl std::fmt::Display) -> ApiError {
    ApiError::param("query", msg)
}

fn tokenize(q: &str) -> Result<Vec<Tok>, ApiError> {
    let mut out = Vec::new();
    let cs: Vec<char> = q.chars().collect();
    let mut i = 0;
    while i < cs.len() {
        let c = cs[i];
        if c.is_whitespace() {
            i += 1;
        } else if c == '\'' || c == '"' {
            let mut s = String::new();
            i += 1;
            loop {
                match cs.get(i) {
                    None => return Err(bad(format!("unterminated quoted text starting with {c}"))),
                    Some(&d) if d == c && cs.get(i + 1) == Some(&c) => {
                        s.push(c);
                        i += 2;
                    }
                    Some(&d) if d == c => {
                        i += 1;
                        break;
                    }
                    Some(&d) => {
                        s.push(d);
                        i += 1;
                    }
                }
            }
            out.push(Tok::Quoted(s));
        } else if "<>=!".contains(c) {
            let two: String = cs[i..(i + 2).min(cs.len())].iter().collect();
            let op = match two.as_str() {
                "<=" => "<=",
                ">=" => ">=",
                "<>" => "<>",
                "!=" => "<>",
                _ => match c {
                    '<' => "<",
                    '>' => ">",
                    '=' => "=",
                    _ => return Err(bad(format!("unexpected '{c}'"))),
                },
            };
            i += if op.len() == 2 || two == "!=" { 2 } else { 1 };
            out.push(Tok::Op(op));
        } else {
            let start = i;
            while i < cs.len() && !cs[i].is_whitespace() && !"<>=!'\"".contains(cs[i]) {
                i += 1;
            }
            out.push(Tok::Word(cs[start..i].iter().collect()));
        }
    }
    Ok(out)
}

fn cmp_op(op: &str) -> CmpOp {
    match op {
        "=" => CmpOp::Eq,
        "<>" => CmpOp::Ne,
        "<" => CmpOp::Lt,
        "<=" => CmpOp::Le,
        ">" => CmpOp::Gt,
        _ => CmpOp::Ge,
    }
}

/// The conditions of a query as (field lowercased, operator lowercased, value), in order; the
/// grammar above with any field names (callers check them).
pub fn triples(query: &str) -> Result<Vec<(String, String, String)>, ApiError> {
    let toks = tokenize(query)?;
    let mut out = Vec::new();
    let mut it = toks.into_iter().peekable();
    loop {
        let field = match it.next() {
            Some(Tok::Word(w)) => w.to_ascii_lowercase(),
            Some(t) => return Err(bad(format!("expected a field name, found {t:?}"))),
            None if out.is_empty() => return Err(bad("it is empty")),
            None => return Err(bad("it ends after 'and'")),
        };
        let op = match it.next() {
            Some(Tok::Op(o)) => o.to_string(),
            Some(Tok::Word(w)) => w.to_ascii_lowercase(),
            Some(t) => {
                return Err(bad(format!(
                    "expected an operator after {field}, found {t:?}"
                )))
            }
            None => return Err(bad(format!("expected an operator after {field}"))),
        };
        let value = match it.next() {
            Some(Tok::Quoted(s)) | Some(Tok::Word(s)) => s,
            Some(t) => {
                return Err(bad(format!(
                    "expected a value after {field} {op}, found {t:?}"
                )))
            }
            None => return Err(bad(format!("expected a value after {field} {op}"))),
        };
        out.push((field, op, value));
        match it.next() {
            None => break,
            Some(Tok::Word(w)) if w.eq_ignore_ascii_case("and") => continue,
            Some(t) => {
                return Err(bad(format!(
                    "expected 'and' between conditions, found {t:?}"
                )))
            }
        }
    }
    Ok(out)
}

/// Whether `op` is one of the comparison operators.
pub fn is_comparison(op: &str) -> bool {
    ["=", "<>", "<", "<=", ">", ">="].contains(&op)
}

/// A 400 about the `query` parameter.
pub fn query_error(msg: impl std::fmt::Display) -> ApiError {
    bad(msg)
}

/// Parses a query into a filter; `now` resolves relative times.
pub fn parse(query: &str, now: i64) -> Result<StreamFilter, ApiError> {
    let mut conditions = Vec::new();
    for (field, op, value) in triples(query)? {
        let is_cmp = is_comparison(&op);
        let cond = match (field.as_str(), op.as_str()) {
            ("id", "startswith") => Condition::IdStartsWith(value),
            ("id", "contains") => Condition::IdContains(value),
            ("id", _) if is_cmp => Condition::Id(cmp_op(&op), value),
            ("type", "=" | "<>") => Condition::Type(
                cmp_op(&op),
                StreamType::parse(&value).ok_or_else(|| bad(format!("unknown type {value:?}")))?,
            ),
            ("units", _) if is_cmp => Condition::Units(cmp_op(&op), value),
            ("description", "contains") => Condition::DescriptionContains(value),
            ("last_update", _) if is_cmp => Condition::LastUpdate(
                cmp_op(&op),
                parse_query_time(&value, now).map_err(|e| bad(e.to_string()))?,
            ),
            ("id" | "type" | "units" | "description" | "last_update", _) => {
                return Err(bad(format!("operator {op:?} does not apply to {field}")))
            }
            _ => {
                return Err(bad(format!(
                    "unknown field {field:?}; expected id, type, units, description or last_update"
                )))
            }
        };
        conditions.push(cond);
    }
    Ok(StreamFilter { conditions })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_digi_examples() {
        let f = parse(
            "id startsWith 'gw1/' and type = 'double' and last_update > -1h and id contains \"volt\"",
            10_000_000,
        )
        .unwrap();
        assert_eq!(
            f.conditions,
            vec![
                Condition::IdStartsWith("gw1/".into()),
                Condition::Type(CmpOp::Eq, StreamType::Double),
                Condition::LastUpdate(CmpOp::Gt, 10_000_000 - 3_600_000),
                Condition::IdContains("volt".into()),
            ]
        );
        let f = parse("units <> 'V' AND description contains 'it''s'", 0).unwrap();
        assert_eq!(
            f.conditions,
            vec![
                Condition::Units(CmpOp::Ne, "V".into()),
                Condition::DescriptionContains("it's".into())
            ]
        );
    }

    #[test]
    fn errors_name_the_problem() {
        for (q, want) in [
            ("", "empty"),
            ("colour = 'red'", "unknown field"),
            ("id startsWith", "expected a value"),
            ("id startsWith 'a' or id contains 'b'", "expected 'and'"),
            ("type = 'decimal'", "unknown type"),
            ("type > 'double'", "does not apply"),
            ("id = 'x", "unterminated"),
            ("last_update > soon", "invalid timestamp"),
        ] {
            let e = parse(q, 0).unwrap_err().to_string();
            assert!(e.contains(want) && e.contains("query"), "{q}: {e}");
        }
    }
}
