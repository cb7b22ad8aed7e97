//! Stream types and values: what arrives on the wire ([`InValue`]) and what is stored ([`Value`]).
//!
//! Digi's eight stream types map onto four stored kinds:
//! INTEGER and LONG are stored as `i64`, FLOAT and DOUBLE as `f64` (a FLOAT value is rounded to
//! the nearest `f32` first), STRING, JSON and GEOJSON as text (JSON as its compact serialization),
//! BINARY as bytes (base64 in JSON documents).

use base64::Engine as _;
use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Serialize};
use std::fmt;

/// Digi's data types of a stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum StreamType {
    /// 32-bit signed integer.
    Integer,
    /// 64-bit signed integer.
    Long,
    /// 32-bit float.
    Float,
    /// 64-bit float.
    Double,
    /// UTF-8 text.
    String,
    /// Opaque bytes.
    Binary,
    /// Any JSON document.
    Json,
    /// A GeoJSON document.
    Geojson,
}

/// How values of a stream are laid out in memory and in chunks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ValueKind {
    /// `i64` column, compressed with pco.
    Int,
    /// `f64` column, compressed with pco.
    Float,
    /// Length-prefixed UTF-8 strings.
    Text,
    /// Length-prefixed bytes.
    Bytes,
}

impl StreamType {
    /// All types, in Digi's order.
    pub const ALL: [StreamType; 8] = [
        StreamType::Integer,
        StreamType::Long,
        StreamType::Float,
        StreamType::Double,
        StreamType::String,
        StreamType::Binary,
        StreamType::Json,
        StreamType::Geojson,
    ];

    /// Digi's upper-case name, e.g. `DOUBLE`.
    pub fn as_str(self) -> &'static str {
        match self {
            StreamType::Integer => "INTEGER",
            StreamType::Long => "LONG",
            StreamType::Float => "FLOAT",
            StreamType::Double => "DOUBLE",
            StreamType::String => "STRING",
            StreamType::Binary => "BINARY",
            StreamType::Json => "JSON",
            StreamType::Geojson => "GEOJSON",
        }
    }

    /// Parses a type name case-insensitively (`double`, `DOUBLE`).
    pub fn parse(name: &str) -> Option<StreamType> {
        StreamType::ALL
            .into_iter()
            .find(|t| t.as_str().eq_ignore_ascii_case(name.trim()))
    }

    /// The stored kind of this type.
    pub fn kind(self) -> ValueKind {
        match self {
            StreamType::Integer | StreamType::Long => ValueKind::Int,
            StreamType::Float | StreamType::Double => ValueKind::Float,
            StreamType::String | StreamType::Json | StreamType::Geojson => ValueKind::Text,
            StreamType::Binary => ValueKind::Bytes,
        }
    }

    /// Whether values of this type are numbers (and so can be rolled up).
    pub fn is_numeric(self) -> bool {
        matches!(self.kind(), ValueKind::Int | ValueKind::Float)
    }

    /// The type a stream gets from its first value when no `stream_type` was given.
    pub fn infer(v: &InValue) -> Option<StreamType> {
        match v {
            InValue::Int(_) | InValue::UInt(_) | InValue::Float(_) => Some(StreamType::Double),
            InValue::Str(_) => Some(StreamType::String),
            InValue::Bytes(_) => Some(StreamType::Binary),
            InValue::Json(_) => Some(StreamType::Json),
            InValue::Bool(_) | InValue::Null => None,
        }
    }
}

impl fmt::Display for StreamType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A stored value (serializable for a cluster's nodes, in MessagePack, which keeps non-finite
/// floats).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Value {
    /// INTEGER or LONG.
    Int(i64),
    /// FLOAT or DOUBLE.
    Float(f64),
    /// STRING, JSON or GEOJSON.
    Text(String),
    /// BINARY.
    Bytes(Vec<u8>),
}

impl Value {
    /// The value as JSON for a stream of type `ty`: numbers as numbers (non-finite floats as the
    /// strings `"NaN"`, `"Infinity"`, `"-Infinity"`), JSON documents as documents, bytes as base64.
    pub fn to_json(&self, ty: StreamType) -> serde_json::Value {
        match self {
            Value::Int(i) => serde_json::Value::from(*i),
            Value::Float(f) => match serde_json::Number::from_f64(*f) {
                Some(n) => serde_json::Value::Number(n),
                None => serde_json::Value::String(float_special_name(*f).to_string()),
            },
            Value::Text(s) => match ty {
                StreamType::Json | StreamType::Geojson => {
                    serde_json::from_str(s).unwrap_or_else(|_| serde_json::Value::String(s.clone()))
                }
                _ => serde_json::Value::String(s.clone()),
            },
            Value::Bytes(b) => {
                serde_json::Value::String(base64::engine::general_purpose::STANDARD.encode(b))
            }
        }
    }

    /// The value as a number, for numeric streams.
    pub fn as_f64(&self) -> Option<f64> {
        match self {
            Value::Int(i) => Some(*i as f64),
            Value::Float(f) => Some(*f),
            _ => None,
        }
    }
}

fn float_special_name(f: f64) -> &'static str {
    if f.is_nan() {
        "NaN"
    } else if f > 0.0 {
        "Infinity"
    } else {
        "-Infinity"
    }
}

/// A value as it arrives in JSON or MessagePack, before it is checked against its stream's type.
#[derive(Debug, Clone, PartialEq)]
pub enum InValue {
    /// A signed integer.
    Int(i64),
    /// An unsigned integer above `i64::MAX`.
    UInt(u64),
    /// A float.
    Float(f64),
    /// A string.
    Str(String),
    /// Raw bytes (MessagePack `bin`).
    Bytes(Vec<u8>),
    /// A boolean.
    Bool(bool),
    /// An object or array.
    Json(serde_json::Value),
    /// `null` / nil.
    Null,
}

impl InValue {
    /// Converts a JSON value.
    pub fn from_json(v: serde_json::Value) -> InValue {
        match v {
            serde_json::Value::Null => InValue::Null,
            serde_json::Value::Bool(b) => InValue::Bool(b),
            serde_json::Value::Number(n) => {
                if let Some(i) = n.as_i64() {
                    InValue::Int(i)
                } else if let Some(u) = n.as_u64() {
                    InValue::UInt(u)
                } else {
                    InValue::Float(n.as_f64().unwrap_or(f64::NAN))
                }
            }
            serde_json::Value::String(s) => InValue::Str(s),
            v @ (serde_json::Value::Array(_) | serde_json::Value::Object(_)) => InValue::Json(v),
        }
    }

    fn describe(&self) -> String {
        match self {
            InValue::Int(i) => format!("the integer {i}"),
            InValue::UInt(u) => format!("the integer {u}"),
            InValue::Float(f) => format!("the number {f}"),
            InValue::Str(s) if s.len() > 40 => format!("a string of {} bytes", s.len()),
            InValue::Str(s) => format!("the string {s:?}"),
            InValue::Bytes(b) => format!("{} bytes", b.len()),
            InValue::Bool(b) => format!("the boolean {b}"),
            InValue::Json(_) => "a JSON object or array".into(),
            InValue::Null => "null".into(),
        }
    }

    /// Converts to the stored value of a stream of type `ty`; the error says why it does not fit.
    /// Numeric strings are accepted for numeric types (Digi's legacy API sends values as
    /// strings), `"NaN"`, `"Infinity"` and `"-Infinity"` included.
    pub fn into_value(self, ty: StreamType) -> std::result::Result<Value, String> {
        let mismatch = |v: &InValue| format!("{} does not fit a {ty} stream", v.describe());
        match ty.kind() {
            ValueKind::Int => {
                let i = match &self {
                    InValue::Int(i) => *i,
                    InValue::Float(f) if f.fract() == 0.0 && f.abs() < 9.007_199_254_740_992e15 => {
                        *f as i64
                    }
                    InValue::Str(s) => s.trim().parse::<i64>().map_err(|_| mismatch(&self))?,
                    _ => return Err(mismatch(&self)),
                };
                if ty == StreamType::Integer && i32::try_from(i).is_err() {
                    return Err(format!(
                        "{i} is outside the range of an INTEGER stream (32-bit)"
                    ));
                }
                Ok(Value::Int(i))
            }
            ValueKind::Float => {
                let f = match &self {
                    InValue::Int(i) => *i as f64,
                    InValue::UInt(u) => *u as f64,
                    InValue::Float(f) => *f,
                    InValue::Str(s) => parse_float_text(s).ok_or_else(|| mismatch(&self))?,
                    _ => return Err(mismatch(&self)),
                };
                if ty == StreamType::Float {
                    let g = f as f32;
                    if f.is_finite() && !g.is_finite() {
                        return Err(format!(
                            "{f} is outside the range of a FLOAT stream (32-bit)"
                        ));
                    }
                    Ok(Value::Float(g as f64))
                } else {
                    Ok(Value::Float(f))
                }
            }
            ValueKind::Text => match (ty, self) {
                (StreamType::String, InValue::Str(s)) => Ok(Value::Text(s)),
                (StreamType::String, InValue::Int(i)) => Ok(Value::Text(i.to_string())),
                (StreamType::String, InValue::UInt(u)) => Ok(Value::Text(u.to_string())),
                (StreamType::String, InValue::Float(f)) => Ok(Value::Text(f.to_string())),
                (StreamType::String, InValue::Bool(b)) => Ok(Value::Text(b.to_string())),
                (StreamType::String, v) => Err(mismatch(&v)),
                (_, InValue::Json(j)) => Ok(Value::Text(j.to_string())),
                (_, InValue::Str(s)) => match serde_json::from_str::<serde_json::Value>(&s) {
                    Ok(j) => Ok(Value::Text(j.to_string())),
                    Err(e) => Err(format!("the string is not a JSON document: {e}")),
                },
                (_, v) => Err(mismatch(&v)),
            },
            ValueKind::Bytes => match self {
                InValue::Bytes(b) => Ok(Value::Bytes(b)),
                InValue::Str(s) => base64::engine::general_purpose::STANDARD
                    .decode(s.trim())
                    .map(Value::Bytes)
                    .map_err(|e| format!("a BINARY value must be base64: {e}")),
                v => Err(mismatch(&v)),
            },
        }
    }
}

/// A number written as text: decimal or exponent notation, `NaN`, `Infinity`/`inf` (Java's and
/// Rust's spellings), `-Infinity`/`-inf`.
pub fn parse_float_text(s: &str) -> Option<f64> {
    match s.trim() {
        "NaN" => Some(f64::NAN),
        "Infinity" | "inf" => Some(f64::INFINITY),
        "-Infinity" | "-inf" => Some(f64::NEG_INFINITY),
        t => t.parse::<f64>().ok(),
    }
}

/// As the native value it came as, so that MessagePack (where floats, integers and bytes keep
/// their markers) gives back the same `InValue`: the cluster's log carries batches this way.
impl Serialize for InValue {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        match self {
            InValue::Int(i) => s.serialize_i64(*i),
            InValue::UInt(u) => s.serialize_u64(*u),
            InValue::Float(f) => s.serialize_f64(*f),
            InValue::Str(v) => s.serialize_str(v),
            InValue::Bytes(b) => s.serialize_bytes(b),
            InValue::Bool(b) => s.serialize_bool(*b),
            InValue::Json(v) => v.serialize(s),
            InValue::Null => s.serialize_unit(),
        }
    }
}

impl<'de> Deserialize<'de> for InValue {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = InValue;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a number, string, bytes, boolean, object or array")
            }
            fn visit_bool<E>(self, v: bool) -> Result<InValue, E> {
                Ok(InValue::Bool(v))
            }
            fn visit_i64<E>(self, v: i64) -> Result<InValue, E> {
                Ok(InValue::Int(v))
            }
            fn visit_u64<E>(self, v: u64) -> Result<InValue, E> {
                Ok(i64::try_from(v).map_or(InValue::UInt(v), InValue::Int))
            }
            fn visit_f32<E>(self, v: f32) -> Result<InValue, E> {
                Ok(InValue::Float(v as f64))
            }
            fn visit_f64<E>(self, v: f64) -> Result<InValue, E> {
                Ok(InValue::Float(v))
            }
            fn visit_str<E>(self, v: &str) -> Result<InValue, E> {
                Ok(InValue::Str(v.to_owned()))
            }
            fn visit_string<E>(self, v: String) -> Result<InValue, E> {
                Ok(InValue::Str(v))
            }
            fn visit_bytes<E>(self, v: &[u8]) -> Result<InValue, E> {
                Ok(InValue::Bytes(v.to_vec()))
            }
            fn visit_byte_buf<E>(self, v: Vec<u8>) -> Result<InValue, E> {
                Ok(InValue::Bytes(v))
            }
            fn visit_unit<E>(self) -> Result<InValue, E> {
                Ok(InValue::Null)
            }
            fn visit_none<E>(self) -> Result<InValue, E> {
                Ok(InValue::Null)
            }
            fn visit_some<D2: Deserializer<'de>>(self, d: D2) -> Result<InValue, D2::Error> {
                InValue::deserialize(d)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<InValue, A::Error> {
                let v = serde_json::Value::deserialize(de::value::SeqAccessDeserializer::new(seq))?;
                Ok(InValue::Json(v))
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<InValue, A::Error> {
                let v = serde_json::Value::deserialize(de::value::MapAccessDeserializer::new(map))?;
                Ok(InValue::Json(v))
            }
        }
        d.deserialize_any(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_values_round_trip_through_messagepack() {
        let values = vec![
            InValue::Int(-5),
            InValue::Int(7),
            InValue::UInt(u64::MAX),
            InValue::Float(2.0),
            InValue::Float(-0.5),
            InValue::Str("on".into()),
            InValue::Bytes(vec![0, 255, 3]),
            InValue::Bool(true),
            InValue::Json(serde_json::json!({"a": [1, 2.5, "x"]})),
            InValue::Json(serde_json::json!([null, true])),
            InValue::Null,
        ];
        let bytes = rmp_serde::to_vec(&values).unwrap();
        let back: Vec<InValue> = rmp_serde::from_slice(&bytes).unwrap();
        assert_eq!(back, values);
        let nan: InValue =
            rmp_serde::from_slice(&rmp_serde::to_vec(&InValue::Float(f64::NAN)).unwrap()).unwrap();
        assert!(matches!(nan, InValue::Float(f) if f.is_nan()));
    }

    #[test]
    fn inference() {
        assert_eq!(
            StreamType::infer(&InValue::Float(1.5)),
            Some(StreamType::Double)
        );
        assert_eq!(
            StreamType::infer(&InValue::Int(1)),
            Some(StreamType::Double)
        );
        assert_eq!(
            StreamType::infer(&InValue::Str("x".into())),
            Some(StreamType::String)
        );
        assert_eq!(StreamType::infer(&InValue::Bool(true)), None);
    }

    #[test]
    fn fits_and_misfits() {
        assert_eq!(
            InValue::Int(5).into_value(StreamType::Integer),
            Ok(Value::Int(5))
        );
        assert!(InValue::Float(5.5)
            .into_value(StreamType::Integer)
            .unwrap_err()
            .contains("does not fit a INTEGER stream"));
        assert!(InValue::Int(1 << 40)
            .into_value(StreamType::Integer)
            .unwrap_err()
            .contains("32-bit"));
        assert_eq!(
            InValue::Int(1 << 40).into_value(StreamType::Long),
            Ok(Value::Int(1 << 40))
        );
        assert!(InValue::Str("abc".into())
            .into_value(StreamType::Double)
            .is_err());
        assert_eq!(
            InValue::Str("231.02".into()).into_value(StreamType::Double),
            Ok(Value::Float(231.02))
        );
        assert_eq!(
            InValue::Float(0.1).into_value(StreamType::Float),
            Ok(Value::Float(0.1f32 as f64))
        );
        assert!(InValue::Str("{".into())
            .into_value(StreamType::Json)
            .is_err());
        assert_eq!(
            InValue::Str("AAE=".into()).into_value(StreamType::Binary),
            Ok(Value::Bytes(vec![0, 1]))
        );
    }

    #[test]
    fn json_documents_round_trip() {
        let doc = serde_json::json!({"type": "Point", "coordinates": [8.5, 47.3]});
        let v = InValue::Json(doc.clone())
            .into_value(StreamType::Geojson)
            .unwrap();
        assert_eq!(v.to_json(StreamType::Geojson), doc);
    }
}
