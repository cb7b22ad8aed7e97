//! Meter model profiles: one TOML file per model holding its register table, the requests that
//! read it, and the conversion between register words and readings.
//!
//! # File format
//! ```toml
//! model = "SDM630"
//! area = "input"            # default area: "input" (function 04) or "holding" (function 03)
//! max_registers = 80        # most registers one request may read
//! align = 2                 # requests start at a multiple of this and read a multiple of it
//! word_order = "high_first" # default for 32- and 64-bit values: "high_first" or "low_first"
//!
//! [[register]]
//! channel = "voltage_l1"    # the reading's channel name (`<meter>/<channel>`)
//! address = 0x00            # wire address (the manual's 30001 is 0)
//! type = "f32"              # u16 i16 u32 i32 u64 i64 f32 f64
//! scale = 1.0               # reading = raw × scale (a power of ten divides exactly)
//! unit = "V"
//! counter = false           # true for counters that only grow (energy)
//! # area, word_order: per register, overriding the defaults
//! ```
//! Built-in profiles (`sdm630`, `pst04`) are compiled in from `profiles/`; any other name is read
//! as a path.

use crate::error::{AgentError, Result};
use serde::Deserialize;
use std::collections::HashSet;
use std::path::Path;

/// The profiles shipped with the agent: (name, TOML).
pub const BUILT_IN: [(&str, &str); 2] = [
    ("sdm630", include_str!("../profiles/sdm630.toml")),
    ("pst04", include_str!("../profiles/pst04.toml")),
];

/// The Modbus register area of a register.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Area {
    /// Input registers, read with function 04.
    Input,
    /// Holding registers, read with function 03.
    Holding,
}

/// How a value is laid out in registers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DataType {
    /// Unsigned 16 bits, one register.
    U16,
    /// Signed 16 bits, one register.
    I16,
    /// Unsigned 32 bits, two registers.
    U32,
    /// Signed 32 bits, two registers.
    I32,
    /// Unsigned 64 bits, four registers.
    U64,
    /// Signed 64 bits, four registers.
    I64,
    /// IEEE-754 single precision, two registers.
    F32,
    /// IEEE-754 double precision, four registers.
    F64,
}

impl DataType {
    /// Registers the value takes.
    pub fn words(self) -> u16 {
        match self {
            DataType::U16 | DataType::I16 => 1,
            DataType::U32 | DataType::I32 | DataType::F32 => 2,
            DataType::U64 | DataType::I64 | DataType::F64 => 4,
        }
    }
}

/// Which register of a multi-register value comes first on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WordOrder {
    /// Most significant word first (big-endian words; Modbus' usual order).
    HighFirst,
    /// Least significant word first (Carlo Gavazzi, some Schneider meters).
    LowFirst,
}

/// One quantity of a meter.
#[derive(Debug, Clone, PartialEq)]
pub struct Register {
    /// Channel name of its readings.
    pub channel: String,
    /// Register area.
    pub area: Area,
    /// Wire address of its first register.
    pub address: u16,
    /// Data type.
    pub data_type: DataType,
    /// Word order of multi-register values.
    pub word_order: WordOrder,
    /// Reading = raw × scale.
    pub scale: f64,
    /// Unit of the reading.
    pub unit: String,
    /// Whether the quantity is a counter that only grows.
    pub counter: bool,
}

/// A meter model: its register table and request limits.
#[derive(Debug, Clone, PartialEq)]
pub struct Profile {
    /// Model name.
    pub model: String,
    /// Most registers one request may read.
    pub max_registers: u16,
    /// Requests start at a multiple of `align` and read a multiple of it.
    pub align: u16,
    /// The quantities.
    pub registers: Vec<Register>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ProfileFile {
    model: String,
    #[serde(default = "default_area")]
    area: Area,
    max_registers: u16,
    #[serde(default = "one")]
    align: u16,
    #[serde(default = "default_order")]
    word_order: WordOrder,
    register: Vec<RegisterFile>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RegisterFile {
    channel: String,
    #[serde(default)]
    area: Option<Area>,
    address: u16,
    #[serde(rename = "type")]
    data_type: DataType,
    #[serde(default)]
    word_order: Option<WordOrder>,
    #[serde(default = "unit_scale")]
    scale: f64,
    #[serde(default)]
    unit: String,
    #[serde(default)]
    counter: bool,
}

fn default_area() -> Area {
    Area::Input
}
fn one() -> u16 {
    1
}
fn default_order() -> WordOrder {
    WordOrder::HighFirst
}
fn unit_scale() -> f64 {
    1.0
}

/// One read request of a plan: `count` registers of `area` from `address`, and the registers of
/// the table it carries.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    /// Register area.
    pub area: Area,
    /// First wire address.
    pub address: u16,
    /// Registers to read.
    pub count: u16,
    /// Indices into the profile's `registers` of the quantities this request reads.
    pub registers: Vec<usize>,
}

impl Profile {
    /// A built-in profile by name (`sdm630`, `pst04`), or else the profile file at that path.
    pub fn load(name_or_path: &str) -> Result<Profile> {
        let key = name_or_path.to_ascii_lowercase();
        if let Some((_, text)) = BUILT_IN.iter().find(|(n, _)| *n == key) {
            return Profile::parse(text, name_or_path);
        }
        let path = Path::new(name_or_path);
        let text = std::fs::read_to_string(path).map_err(|e| {
            AgentError::Config(format!(
                "meter profile {name_or_path:?} is neither built in ({}) nor a readable file: {e}",
                BUILT_IN.map(|b| b.0).join(", ")
            ))
        })?;
        Profile::parse(&text, name_or_path)
    }

    /// Parses and checks a profile file; `origin` names it in errors.
    pub fn parse(text: &str, origin: &str) -> Result<Profile> {
        let f: ProfileFile = toml::from_str(text)
            .map_err(|e| AgentError::Config(format!("meter profile {origin}: {e}")))?;
        let bad = |m: String| AgentError::Config(format!("meter profile {origin}: {m}"));
        if f.max_registers == 0 || f.max_registers > 125 {
            return Err(bad(format!(
                "max_registers {} is not in 1..=125 (Modbus' limit)",
                f.max_registers
            )));
        }
        if f.align == 0 || f.max_registers % f.align != 0 {
            return Err(bad(format!(
                "align {} must be at least 1 and divide max_registers {}",
                f.align, f.max_registers
            )));
        }
        if f.register.is_empty() {
            return Err(bad("no registers".into()));
        }
        let mut names = HashSet::new();
        let registers: Vec<Register> = f
            .register
            .into_iter()
            .map(|r| Register {
                channel: r.channel,
                area: r.area.unwrap_or(f.area),
                address: r.address,
                data_type: r.data_type,
                word_order: r.word_order.unwrap_or(f.word_order),
                scale: r.scale,
                unit: r.unit,
                counter: r.counter,
            })
            .collect();
        for r in &registers {
            meterstream_storage::path::validate_path(&r.channel)
                .map_err(|e| bad(format!("channel {:?}: {e}", r.channel)))?;
            if !names.insert(r.channel.as_str()) {
                return Err(bad(format!("channel {:?} appears twice", r.channel)));
            }
            if !r.scale.is_finite() || r.scale == 0.0 {
                return Err(bad(format!(
                    "channel {:?}: scale must be finite, not 0",
                    r.channel
                )));
            }
            if u32::from(r.address) + u32::from(r.data_type.words()) > 0x1_0000 {
                return Err(bad(format!(
                    "channel {:?}: runs past address 0xFFFF",
                    r.channel
                )));
            }
        }
        let mut by_addr: Vec<&Register> = registers.iter().collect();
        by_addr.sort_by_key(|r| (r.area, r.address));
        for w in by_addr.windows(2) {
            if w[0].area == w[1].area && w[0].address + w[0].data_type.words() > w[1].address {
                return Err(bad(format!(
                    "channels {:?} and {:?} overlap",
                    w[0].channel, w[1].channel
                )));
            }
        }
        Ok(Profile {
            model: f.model,
            max_registers: f.max_registers,
            align: f.align,
            registers,
        })
    }

    /// The fewest requests that read every register within the limits: registers sorted by
    /// address, each request taking the next ones while its aligned span fits `max_registers`.
    pub fn plan(&self) -> Vec<Request> {
        let mut order: Vec<usize> = (0..self.registers.len()).collect();
        order.sort_by_key(|&i| (self.registers[i].area, self.registers[i].address));
        let a = u32::from(self.align);
        let mut out: Vec<Request> = Vec::new();
        for i in order {
            let r = &self.registers[i];
            let end = u32::from(r.address) + u32::from(r.data_type.words());
            if let Some(last) = out.last_mut() {
                let span = (end.div_ceil(a) * a).saturating_sub(u32::from(last.address));
                if last.area == r.area && span <= u32::from(self.max_registers) {
                    last.count = span as u16;
                    last.registers.push(i);
                    continue;
                }
            }
            let start = u32::from(r.address) / a * a;
            out.push(Request {
                area: r.area,
                address: start as u16,
                count: (end.div_ceil(a) * a - start) as u16,
                registers: vec![i],
            });
        }
        out
    }

    /// The readings a request's answer holds: (register index, value). A value that is not a
    /// finite number (a float register holding NaN) is left out.
    pub fn decode(&self, req: &Request, words: &[u16]) -> Result<Vec<(usize, f64)>> {
        if words.len() != usize::from(req.count) {
            return Err(AgentError::Meter(format!(
                "asked for {} registers at {:#06x}, got {}",
                req.count,
                req.address,
                words.len()
            )));
        }
        let mut out = Vec::with_capacity(req.registers.len());
        for &i in &req.registers {
            let r = &self.registers[i];
            let at = usize::from(r.address - req.address);
            let w = &words[at..at + usize::from(r.data_type.words())];
            let v = decode_value(r, w);
            if v.is_finite() {
                out.push((i, v));
            }
        }
        Ok(out)
    }

    /// The register words that hold `value` for register `i` (what a meter would answer; the
    /// simulator uses it).
    pub fn encode(&self, i: usize, value: f64) -> Vec<u16> {
        encode_value(&self.registers[i], value)
    }
}

/// `10^k` if `scale` is `10^-k` for a small `k`, so that scaling divides exactly.
fn decimal_divisor(scale: f64) -> Option<f64> {
    (1..=9)
        .map(|k| 10f64.powi(k))
        .find(|d| (scale * d - 1.0).abs() < 1e-12)
}

fn apply_scale(raw: f64, scale: f64) -> f64 {
    match decimal_divisor(scale) {
        Some(d) => raw / d,
        None => raw * scale,
    }
}

/// The words of a value, most significant first.
fn ordered(r: &Register, w: &[u16]) -> u64 {
    let mut x = 0u64;
    match r.word_order {
        WordOrder::HighFirst => w.iter().for_each(|&v| x = (x << 16) | u64::from(v)),
        WordOrder::LowFirst => w.iter().rev().for_each(|&v| x = (x << 16) | u64::from(v)),
    }
    x
}

fn decode_value(r: &Register, w: &[u16]) -> f64 {
    let x = ordered(r, w);
    let raw = match r.data_type {
        DataType::U16 | DataType::U32 | DataType::U64 => x as f64,
        DataType::I16 => f64::from(x as u16 as i16),
        DataType::I32 => f64::from(x as u32 as i32),
        DataType::I64 => x as i64 as f64,
        // A float32 as the shortest decimal that reads back as the same float32: 230.01, not
        // 230.00999450683594.
        DataType::F32 => {
            let f = f32::from_bits(x as u32);
            f.to_string().parse::<f64>().unwrap_or(f64::NAN)
        }
        DataType::F64 => f64::from_bits(x),
    };
    apply_scale(raw, r.scale)
}

fn encode_value(r: &Register, value: f64) -> Vec<u16> {
    let raw = value / r.scale;
    let x: u64 = match r.data_type {
        DataType::U16 => raw.round().clamp(0.0, f64::from(u16::MAX)) as u64,
        DataType::I16 => {
            raw.round().clamp(f64::from(i16::MIN), f64::from(i16::MAX)) as i16 as u16 as u64
        }
        DataType::U32 => raw.round().clamp(0.0, f64::from(u32::MAX)) as u64,
        DataType::I32 => {
            raw.round().clamp(f64::from(i32::MIN), f64::from(i32::MAX)) as i32 as u32 as u64
        }
        DataType::U64 => raw.round().max(0.0) as u64,
        DataType::I64 => raw.round() as i64 as u64,
        DataType::F32 => u64::from((raw as f32).to_bits()),
        DataType::F64 => raw.to_bits(),
    };
    let n = usize::from(r.data_type.words());
    let mut hi_first: Vec<u16> = (0..n).map(|k| (x >> (16 * (n - 1 - k))) as u16).collect();
    if r.word_order == WordOrder::LowFirst {
        hi_first.reverse();
    }
    hi_first
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn sdm630_is_one_request_of_80_registers() {
        let p = Profile::load("sdm630").unwrap();
        assert_eq!(p.registers.len(), 23);
        let plan = p.plan();
        assert_eq!(plan.len(), 1, "{plan:?}");
        assert_eq!(
            (plan[0].area, plan[0].address, plan[0].count),
            (Area::Input, 0, 80)
        );
        assert_eq!(plan[0].registers.len(), 23);
    }

    #[test]
    fn pst04_is_one_request_of_holding_registers() {
        let p = Profile::load("PST04").unwrap();
        let plan = p.plan();
        assert_eq!(plan.len(), 1);
        assert_eq!(
            (plan[0].area, plan[0].address, plan[0].count),
            (Area::Holding, 0, 22)
        );
    }

    #[test]
    fn plans_split_at_the_limit_and_by_area_and_keep_alignment() {
        let text = r#"
            model = "t"
            max_registers = 8
            align = 2
            [[register]]
            channel = "a"
            address = 1
            type = "u16"
            [[register]]
            channel = "b"
            address = 6
            type = "f32"
            [[register]]
            channel = "c"
            address = 8
            type = "f32"
            [[register]]
            channel = "d"
            address = 0
            area = "holding"
            type = "u16"
        "#;
        let p = Profile::parse(text, "t").unwrap();
        let plan: Vec<_> = p
            .plan()
            .iter()
            .map(|r| (r.area, r.address, r.count))
            .collect();
        // a+b fit in [0, 8); c starts the next; d is another area.
        assert_eq!(
            plan,
            vec![
                (Area::Input, 0, 8),
                (Area::Input, 8, 2),
                (Area::Holding, 0, 2)
            ]
        );
    }

    #[test]
    fn decodes_every_type_and_word_order() {
        let sdm = Profile::load("sdm630").unwrap();
        // 230.01 V as float32 big-endian high word first: 0x436601 0x47AE...
        let bits = 230.01f32.to_bits();
        let words = [(bits >> 16) as u16, bits as u16];
        assert_eq!(decode_value(&sdm.registers[0], &words), 230.01);

        let pst = Profile::load("pst04").unwrap();
        let reg = |name: &str| pst.registers.iter().find(|r| r.channel == name).unwrap();
        assert_eq!(decode_value(reg("voltage_l1"), &[23001]), 230.01);
        // u32 low word first: 70000 mA = 0x0001_1170 → [0x1170, 0x0001]
        assert_eq!(decode_value(reg("current_l1"), &[0x1170, 0x0001]), 70.0);
        // i32 negative power: -12345 (×0.1 W) low word first
        let x = (-12345i32) as u32;
        assert_eq!(
            decode_value(reg("active_power"), &[x as u16, (x >> 16) as u16]),
            -1234.5
        );
        assert_eq!(
            decode_value(reg("power_factor"), &[(-870i16) as u16]),
            -0.87
        );
    }

    #[test]
    fn encode_then_decode_is_the_value_for_every_register() {
        for (name, _) in BUILT_IN {
            let p = Profile::load(name).unwrap();
            for (i, r) in p.registers.iter().enumerate() {
                for v in [0.0, 1.0, 0.87, 229.99, 1234.567] {
                    let fits = match r.data_type {
                        DataType::U16 | DataType::I16 => v / r.scale < 32_767.0,
                        _ => true,
                    };
                    if !fits {
                        continue;
                    }
                    let v = if r.scale < 1.0 {
                        // representable at the register's resolution
                        (v / r.scale).round() * r.scale
                    } else {
                        v
                    };
                    let want = apply_scale((v / r.scale).round(), r.scale);
                    let got = decode_value(r, &p.encode(i, v));
                    let want = if r.data_type == DataType::F32 {
                        (v as f32).to_string().parse::<f64>().unwrap()
                    } else {
                        want
                    };
                    assert_eq!(got, want, "{name} {} {v}", r.channel);
                }
            }
        }
    }

    #[test]
    fn a_plan_decodes_what_was_encoded() {
        let p = Profile::load("sdm630").unwrap();
        let plan = p.plan();
        let mut words = vec![0u16; usize::from(plan[0].count)];
        for (i, r) in p.registers.iter().enumerate() {
            let w = p.encode(i, i as f64 + 0.5);
            let at = usize::from(r.address);
            words[at..at + w.len()].copy_from_slice(&w);
        }
        let got = p.decode(&plan[0], &words).unwrap();
        assert_eq!(got.len(), 23);
        for (i, v) in got {
            assert_eq!(v, i as f64 + 0.5);
        }
        assert!(p.decode(&plan[0], &words[..10]).is_err());
    }

    #[test]
    fn bad_profiles_say_what_is_wrong() {
        let base = "model = \"t\"\nmax_registers = 8\n";
        let reg = |c: &str, a: u16, t: &str| {
            format!("[[register]]\nchannel = \"{c}\"\naddress = {a}\ntype = \"{t}\"\n")
        };
        let cases = [
            (
                format!("{base}{}{}", reg("a", 0, "f32"), reg("b", 1, "u16")),
                "overlap",
            ),
            (
                format!("{base}{}{}", reg("a", 0, "u16"), reg("a", 4, "u16")),
                "twice",
            ),
            (format!("{base}{}", reg("a b", 0, "u16")), "whitespace"),
            (
                format!("model = \"t\"\nmax_registers = 200\n{}", reg("a", 0, "u16")),
                "125",
            ),
            (format!("{base}{}", reg("a", 0, "u128")), "unknown variant"),
            (base.to_string(), "register"),
        ];
        for (text, want) in cases {
            let e = Profile::parse(&text, "t").unwrap_err().to_string();
            assert!(e.contains(want), "{e:?} should mention {want:?}");
        }
        let e = Profile::load("/nonexistent/x.toml")
            .unwrap_err()
            .to_string();
        assert!(e.contains("sdm630, pst04"), "{e}");
    }
}
