//! The chunk codec: a [`Series`] to bytes and back.
//!
//! A chunk holds up to a few thousand points of one stream. Layout (integers are LEB128 varints,
//! signed ones zigzag-encoded first):
//!
//! ```text
//! u8      version (1)
//! u8      kind: 0 Int (pco), 1 Float (pco), 2 Text, 3 Bytes, 4 Int (delta), 5 Float (decimal
//!         delta), 6 Float (raw bits)
//! varint  n                       number of points (≥ 1)
//! zvarint first_ts                timestamp of the first point (ms)
//! zvarint last_ts - first_ts
//! zvarint min server ts, zvarint max - min server ts
//! varint  len, bytes              timestamps: delta of deltas, zero runs collapsed (below)
//! varint  runs, runs × (varint index delta, zvarint server ts delta)
//! varint  len, bytes              values, by kind (below); Text and Bytes: n × (varint len, bytes)
//! varint  extras, extras × (varint index, u8 flags, [zvarint quality], [str location], [str description])
//! u32 LE  CRC-32 of everything before it
//! ```
//!
//! Timestamps: after the first timestamp come the first delta and then the deltas of deltas. A
//! token `t` is `(run << 1) | 1` for `run` zero deltas of deltas, or `zigzag(dod) << 1` otherwise.
//! A regular 1-second series therefore costs a handful of bytes per chunk, however long.
//!
//! Values (the kind byte says which): chunks on disk use pco on the `i64`/`f64` column (kinds
//! 0, 1). On the standard workload pco finds the decimal resolution of each channel by itself:
//! 0.87 bytes per value at 2,048 points per chunk (`docs/storage.md` compares the alternatives).
//! The small in-memory blocks of open heads use decimal-aware zigzag-varint deltas instead
//! (kinds 4 Int; 5 Float scaled by `10^e`, `u8 e` first; 6 Float as raw 8-byte bits when no
//! `e` ≤ 9 is exact): about 10 ns and 1 to 2 bytes per value, without pco's per-call cost. Both
//! are lossless to the bit: NaN payloads, -0.0 and infinities come back as written.

use crate::error::{Result, StorageError};
use crate::point::Extras;
use crate::series::{Series, Values};

const VERSION: u8 = 1;

/// How a chunk's numeric values are encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ValueCodec {
    /// pco: the best ratio, about 50 µs of fixed cost per call; for chunks on disk.
    Pco,
    /// Decimal-aware deltas (floats scaled by the power of ten that makes them integers, else raw
    /// bits; integers as they are), zigzag varints: about 10 ns per value, for the small blocks
    /// that keep open heads compressed in memory.
    Delta,
}
/// pco compression level used for chunks (4 of 0..=12: within 1 % of level 8, twice as fast).
const PCO_LEVEL: usize = 4;

/// What the header of a chunk says, readable without decoding the columns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkHeader {
    /// Number of points.
    pub n: usize,
    /// First timestamp.
    pub first_ts: i64,
    /// Last timestamp.
    pub last_ts: i64,
    /// Smallest server timestamp.
    pub min_server: i64,
    /// Largest server timestamp.
    pub max_server: i64,
}

pub(crate) fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

pub(crate) fn put_zvarint(out: &mut Vec<u8>, v: i64) {
    put_varint(out, ((v << 1) ^ (v >> 63)) as u64);
}

/// Writes a column of integers in the smallest of four forms: `u8 0, zvarint v` when every value
/// is `v`; `u8 1, n × zvarint`; `u8 2, u8 w, ceil(n·w/8) bytes` of the zigzagged values packed `w`
/// bits each, least significant bit first; `u8 3, zvarint min, u8 w, ceil(n·w/8) bytes` of each
/// value minus the column's minimum, packed the same way (frame of reference: a column that
/// never goes below zero, or sits around an offset, packs without zigzag's extra bit). The
/// reader must know `n`.
pub(crate) fn put_ints(out: &mut Vec<u8>, col: &[i64]) {
    let zz = |v: i64| ((v << 1) ^ (v >> 63)) as u64;
    let bits = |u: u64| 64 - u.leading_zeros();
    let Some(&first) = col.first() else {
        out.push(1);
        return;
    };
    let (min, max) = col
        .iter()
        .fold((first, first), |(lo, hi), v| (lo.min(*v), hi.max(*v)));
    if min == max {
        out.push(0);
        put_zvarint(out, first);
        return;
    }
    let width = col.iter().map(|v| bits(zz(*v))).max().unwrap_or(0);
    let varint_len: usize = col
        .iter()
        .map(|v| bits(zz(*v)).max(1).div_ceil(7) as usize)
        .sum();
    let packed_len = 1 + (col.len() * width as usize).div_ceil(8);
    let range_width = bits(max.wrapping_sub(min) as u64);
    let mut base = Vec::new();
    put_zvarint(&mut base, min);
    let for_len = base.len() + 1 + (col.len() * range_width as usize).div_ceil(8);
    if varint_len <= packed_len && varint_len <= for_len {
        out.push(1);
        for v in col {
            put_zvarint(out, *v);
        }
        return;
    }
    let (w, offset) = if for_len < packed_len {
        out.push(3);
        out.extend_from_slice(&base);
        (range_width, Some(min))
    } else {
        out.push(2);
        (width, None)
    };
    out.push(w as u8);
    let (mut acc, mut nbits) = (0u128, 0u32);
    for v in col {
        let u = match offset {
            Some(m) => v.wrapping_sub(m) as u64,
            None => zz(*v),
        };
        acc |= u128::from(u) << nbits;
        nbits += w;
        while nbits >= 8 {
            out.push(acc as u8);
            acc >>= 8;
            nbits -= 8;
        }
    }
    if nbits > 0 {
        out.push(acc as u8);
    }
}

pub(crate) fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    put_varint(out, b.len() as u64);
    out.extend_from_slice(b);
}

/// A cursor over bytes being decoded; every read checks bounds.
pub(crate) struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
    what: &'static str,
}

impl<'a> Reader<'a> {
    pub(crate) fn new(buf: &'a [u8], what: &'static str) -> Self {
        Reader { buf, pos: 0, what }
    }

    fn err(&self, m: &str) -> StorageError {
        StorageError::corrupt(self.what, format!("{m} at byte {}", self.pos))
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.pos >= self.buf.len()
    }

    pub(crate) fn u8(&mut self) -> Result<u8> {
        let b = *self
            .buf
            .get(self.pos)
            .ok_or_else(|| self.err("truncated"))?;
        self.pos += 1;
        Ok(b)
    }

    pub(crate) fn varint(&mut self) -> Result<u64> {
        let mut v: u64 = 0;
        for shift in (0..64).step_by(7) {
            let b = self.u8()?;
            v |= ((b & 0x7f) as u64) << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(self.err("varint too long"))
    }

    pub(crate) fn zvarint(&mut self) -> Result<i64> {
        let u = self.varint()?;
        Ok(((u >> 1) as i64) ^ -((u & 1) as i64))
    }

    pub(crate) fn len(&mut self, max: usize) -> Result<usize> {
        let n = self.varint()? as usize;
        if n > max {
            return Err(self.err("length out of bounds"));
        }
        Ok(n)
    }

    pub(crate) fn bytes(&mut self) -> Result<&'a [u8]> {
        let n = self.len(self.buf.len() - self.pos)?;
        let b = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(b)
    }

    pub(crate) fn fixed<const N: usize>(&mut self) -> Result<[u8; N]> {
        if self.buf.len() - self.pos < N {
            return Err(self.err("truncated"));
        }
        let mut a = [0u8; N];
        a.copy_from_slice(&self.buf[self.pos..self.pos + N]);
        self.pos += N;
        Ok(a)
    }

    /// Reads `n` integers written by [`put_ints`].
    pub(crate) fn ints(&mut self, n: usize) -> Result<Vec<i64>> {
        let unzz = |u: u64| ((u >> 1) as i64) ^ -((u & 1) as i64);
        let form = self.u8()?;
        match form {
            0 => Ok(vec![self.zvarint()?; n]),
            1 => (0..n).map(|_| self.zvarint()).collect(),
            2 | 3 => {
                let base = if form == 3 {
                    Some(self.zvarint()?)
                } else {
                    None
                };
                let width = u32::from(self.u8()?);
                if width > 64 {
                    return Err(self.err("bit width over 64"));
                }
                let len = n
                    .checked_mul(width as usize)
                    .ok_or_else(|| self.err("column too long"))?
                    .div_ceil(8);
                if self.buf.len() - self.pos < len {
                    return Err(self.err("truncated"));
                }
                let bytes = &self.buf[self.pos..self.pos + len];
                self.pos += len;
                let mask = if width == 64 {
                    u64::MAX
                } else {
                    (1u64 << width) - 1
                };
                let (mut acc, mut bits, mut next) = (0u128, 0u32, 0usize);
                let mut out = Vec::with_capacity(n);
                for _ in 0..n {
                    while bits < width {
                        acc |= u128::from(bytes[next]) << bits;
                        next += 1;
                        bits += 8;
                    }
                    let u = acc as u64 & mask;
                    out.push(match base {
                        Some(b) => b.wrapping_add(u as i64),
                        None => unzz(u),
                    });
                    acc >>= width;
                    bits -= width;
                }
                Ok(out)
            }
            t => Err(self.err(&format!("unknown integer column form {t}"))),
        }
    }

    pub(crate) fn string(&mut self) -> Result<String> {
        let b = self.bytes()?;
        String::from_utf8(b.to_vec()).map_err(|_| self.err("invalid UTF-8"))
    }
}

fn encode_timestamps(ts: &[i64], out: &mut Vec<u8>) {
    if ts.len() < 2 {
        return;
    }
    let mut prev_delta = ts[1] - ts[0];
    put_zvarint(out, prev_delta);
    let mut zeros: u64 = 0;
    for w in ts[1..].windows(2) {
        let delta = w[1] - w[0];
        let dod = delta - prev_delta;
        prev_delta = delta;
        if dod == 0 {
            zeros += 1;
            continue;
        }
        if zeros > 0 {
            put_varint(out, (zeros << 1) | 1);
            zeros = 0;
        }
        put_varint(out, (((dod << 1) ^ (dod >> 63)) as u64) << 1);
    }
    if zeros > 0 {
        put_varint(out, (zeros << 1) | 1);
    }
}

fn decode_timestamps(first: i64, n: usize, r: &mut Reader<'_>) -> Result<Vec<i64>> {
    let mut ts = Vec::with_capacity(n);
    ts.push(first);
    if n < 2 {
        return Ok(ts);
    }
    let mut delta = r.zvarint()?;
    ts.push(first + delta);
    while ts.len() < n {
        let tok = r.varint()?;
        if tok & 1 == 1 {
            let run = (tok >> 1) as usize;
            if run > n - ts.len() {
                return Err(StorageError::corrupt("chunk", "timestamp run too long"));
            }
            for _ in 0..run {
                let next = ts[ts.len() - 1] + delta;
                ts.push(next);
            }
        } else {
            let z = tok >> 1;
            let dod = ((z >> 1) as i64) ^ -((z & 1) as i64);
            delta += dod;
            let next = ts[ts.len() - 1] + delta;
            ts.push(next);
        }
    }
    Ok(ts)
}

fn pco_err(e: pco::errors::PcoError) -> StorageError {
    StorageError::corrupt("chunk values", e.to_string())
}

/// Encodes a non-empty series as a chunk with pco values.
pub fn encode(s: &Series) -> Result<Vec<u8>> {
    encode_with(s, ValueCodec::Pco)
}

/// The power of ten `e` (0..=9) that turns every value into an integer exactly, such that
/// `(n as f64) / 10^e` gives back each value bit for bit.
pub(crate) fn decimal_exponent(v: &[f64]) -> Option<u8> {
    'e: for e in 0u8..=9 {
        let scale = 10f64.powi(e as i32);
        for &x in v {
            let n = (x * scale).round();
            // Check through the integer exactly as decoding computes it (this rejects -0.0).
            if !n.is_finite()
                || n.abs() >= 9.007_199_254_740_992e15
                || ((n as i64) as f64 / scale).to_bits() != x.to_bits()
            {
                continue 'e;
            }
        }
        return Some(e);
    }
    None
}

fn put_deltas(out: &mut Vec<u8>, ints: impl Iterator<Item = i64>) {
    let mut prev = 0i64;
    for i in ints {
        put_zvarint(out, i.wrapping_sub(prev));
        prev = i;
    }
}

fn read_deltas(r: &mut Reader<'_>, n: usize) -> Result<Vec<i64>> {
    let mut out = Vec::with_capacity(n);
    let mut prev = 0i64;
    for _ in 0..n {
        prev = prev.wrapping_add(r.zvarint()?);
        out.push(prev);
    }
    Ok(out)
}

/// Encodes a non-empty series as a chunk, numeric values with `codec`.
pub fn encode_with(s: &Series, codec: ValueCodec) -> Result<Vec<u8>> {
    let n = s.len();
    if n == 0 {
        return Err(StorageError::corrupt(
            "chunk",
            "cannot encode an empty series",
        ));
    }
    let mut out = Vec::with_capacity(64 + n * 2);
    out.push(VERSION);
    let exponent = match (&s.values, codec) {
        (Values::Float(v), ValueCodec::Delta) => decimal_exponent(v),
        _ => None,
    };
    out.push(match (&s.values, codec) {
        (Values::Int(_), ValueCodec::Pco) => 0,
        (Values::Float(_), ValueCodec::Pco) => 1,
        (Values::Text(_), _) => 2,
        (Values::Bytes(_), _) => 3,
        (Values::Int(_), ValueCodec::Delta) => 4,
        (Values::Float(_), ValueCodec::Delta) if exponent.is_some() => 5,
        (Values::Float(_), ValueCodec::Delta) => 6,
    });
    put_varint(&mut out, n as u64);
    put_zvarint(&mut out, s.ts[0]);
    put_zvarint(&mut out, s.ts[n - 1] - s.ts[0]);
    let min_server = s.server.iter().map(|r| r.1).min().unwrap_or(0);
    let max_server = s.server.iter().map(|r| r.1).max().unwrap_or(0);
    put_zvarint(&mut out, min_server);
    put_zvarint(&mut out, max_server - min_server);

    let mut tsb = Vec::with_capacity(16);
    encode_timestamps(&s.ts, &mut tsb);
    put_bytes(&mut out, &tsb);

    put_varint(&mut out, s.server.len() as u64);
    let (mut pi, mut ps) = (0u32, 0i64);
    for (i, sv) in &s.server {
        put_varint(&mut out, (i - pi) as u64);
        put_zvarint(&mut out, sv - ps);
        (pi, ps) = (*i, *sv);
    }

    let cfg = pco::ChunkConfig::default().with_compression_level(PCO_LEVEL);
    match (&s.values, codec) {
        (Values::Int(v), ValueCodec::Delta) => {
            let mut b = Vec::with_capacity(v.len() * 2);
            put_deltas(&mut b, v.iter().copied());
            put_bytes(&mut out, &b);
        }
        (Values::Float(v), ValueCodec::Delta) => {
            let mut b = Vec::with_capacity(v.len() * 2 + 1);
            match exponent {
                Some(e) => {
                    b.push(e);
                    let scale = 10f64.powi(e as i32);
                    put_deltas(&mut b, v.iter().map(|x| (x * scale).round() as i64));
                }
                None => {
                    for x in v {
                        b.extend_from_slice(&x.to_bits().to_le_bytes());
                    }
                }
            }
            put_bytes(&mut out, &b);
        }
        (Values::Int(v), ValueCodec::Pco) => {
            let b = pco::standalone::simple_compress(v, &cfg).map_err(pco_err)?;
            put_bytes(&mut out, &b);
        }
        (Values::Float(v), ValueCodec::Pco) => {
            let b = pco::standalone::simple_compress(v, &cfg).map_err(pco_err)?;
            put_bytes(&mut out, &b);
        }
        (Values::Text(v), _) => {
            let mut b = Vec::new();
            for x in v {
                put_bytes(&mut b, x.as_bytes());
            }
            put_bytes(&mut out, &b);
        }
        (Values::Bytes(v), _) => {
            let mut b = Vec::new();
            for x in v {
                put_bytes(&mut b, x);
            }
            put_bytes(&mut out, &b);
        }
    }

    put_varint(&mut out, s.extras.len() as u64);
    for (ts, e) in &s.extras {
        let idx = s.ts.binary_search(ts).unwrap_or(0);
        put_varint(&mut out, idx as u64);
        encode_extras(&mut out, e);
    }
    let crc = crc32fast::hash(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    Ok(out)
}

pub(crate) fn encode_extras(out: &mut Vec<u8>, e: &Extras) {
    let flags = (e.quality.is_some() as u8)
        | ((e.location.is_some() as u8) << 1)
        | ((e.description.is_some() as u8) << 2);
    out.push(flags);
    if let Some(q) = e.quality {
        put_zvarint(out, q as i64);
    }
    if let Some(l) = &e.location {
        put_bytes(out, l.as_bytes());
    }
    if let Some(d) = &e.description {
        put_bytes(out, d.as_bytes());
    }
}

pub(crate) fn decode_extras(r: &mut Reader<'_>) -> Result<Extras> {
    let flags = r.u8()?;
    Ok(Extras {
        quality: if flags & 1 != 0 {
            Some(r.zvarint()? as i32)
        } else {
            None
        },
        location: if flags & 2 != 0 {
            Some(r.string()?)
        } else {
            None
        },
        description: if flags & 4 != 0 {
            Some(r.string()?)
        } else {
            None
        },
    })
}

fn checked_body(buf: &[u8]) -> Result<&[u8]> {
    if buf.len() < 6 {
        return Err(StorageError::corrupt("chunk", "too short"));
    }
    let (body, crc) = buf.split_at(buf.len() - 4);
    let want = u32::from_le_bytes([crc[0], crc[1], crc[2], crc[3]]);
    if crc32fast::hash(body) != want {
        return Err(StorageError::corrupt("chunk", "checksum mismatch"));
    }
    if body[0] != VERSION {
        return Err(StorageError::corrupt(
            "chunk",
            format!("unknown version {}", body[0]),
        ));
    }
    Ok(body)
}

fn read_header(r: &mut Reader<'_>) -> Result<(u8, ChunkHeader)> {
    r.u8()?;
    let kind = r.u8()?;
    let n = r.len(1 << 24)?;
    let first_ts = r.zvarint()?;
    let last_ts = first_ts + r.zvarint()?;
    let min_server = r.zvarint()?;
    let max_server = min_server + r.zvarint()?;
    Ok((
        kind,
        ChunkHeader {
            n,
            first_ts,
            last_ts,
            min_server,
            max_server,
        },
    ))
}

/// Reads only the header of a chunk (no checksum check: cheap, for planning reads).
pub fn decode_header(buf: &[u8]) -> Result<ChunkHeader> {
    read_header(&mut Reader::new(buf, "chunk header")).map(|(_, h)| h)
}

/// Decodes a chunk made by [`encode`].
pub fn decode(buf: &[u8]) -> Result<Series> {
    let body = checked_body(buf)?;
    let mut r = Reader::new(body, "chunk");
    let (kind, h) = read_header(&mut r)?;
    if h.n == 0 {
        return Err(StorageError::corrupt("chunk", "empty chunk"));
    }
    let tsb = r.bytes()?;
    let ts = decode_timestamps(h.first_ts, h.n, &mut Reader::new(tsb, "chunk timestamps"))?;

    let runs = r.len(h.n)?;
    let mut server = Vec::with_capacity(runs);
    let (mut pi, mut ps) = (0u32, 0i64);
    for _ in 0..runs {
        pi += r.varint()? as u32;
        ps += r.zvarint()?;
        server.push((pi, ps));
    }

    let vb = r.bytes()?;
    let values = match kind {
        0 => Values::Int(pco::standalone::simple_decompress(vb).map_err(pco_err)?),
        1 => Values::Float(pco::standalone::simple_decompress(vb).map_err(pco_err)?),
        2 | 3 => {
            let mut vr = Reader::new(vb, "chunk values");
            if kind == 2 {
                let mut v = Vec::with_capacity(h.n);
                for _ in 0..h.n {
                    v.push(vr.string()?);
                }
                Values::Text(v)
            } else {
                let mut v = Vec::with_capacity(h.n);
                for _ in 0..h.n {
                    v.push(vr.bytes()?.to_vec());
                }
                Values::Bytes(v)
            }
        }
        4 => Values::Int(read_deltas(&mut Reader::new(vb, "chunk values"), h.n)?),
        5 => {
            let mut vr = Reader::new(vb, "chunk values");
            let e = vr.u8()?;
            if e > 9 {
                return Err(StorageError::corrupt(
                    "chunk values",
                    "decimal exponent out of range",
                ));
            }
            let scale = 10f64.powi(e as i32);
            let ints = read_deltas(&mut vr, h.n)?;
            Values::Float(ints.into_iter().map(|i| i as f64 / scale).collect())
        }
        6 => {
            let mut vr = Reader::new(vb, "chunk values");
            let mut v = Vec::with_capacity(h.n);
            for _ in 0..h.n {
                v.push(f64::from_bits(u64::from_le_bytes(vr.fixed()?)));
            }
            Values::Float(v)
        }
        k => return Err(StorageError::corrupt("chunk", format!("unknown kind {k}"))),
    };
    if values.len() != h.n {
        return Err(StorageError::corrupt("chunk", "value count mismatch"));
    }
    let ne = r.len(h.n)?;
    let mut extras = Vec::with_capacity(ne);
    for _ in 0..ne {
        let idx = r.len(h.n - 1)?;
        extras.push((ts[idx], Box::new(decode_extras(&mut r)?)));
    }
    Ok(Series {
        ts,
        values,
        server,
        extras,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integer_columns_round_trip_in_every_form() {
        let cases: Vec<Vec<i64>> = vec![
            vec![],
            vec![0],
            vec![60; 34],
            vec![-1, 0, 1, -64, 63],
            (0..100).map(|i| (i * 37 % 301) - 150).collect(),
            vec![i64::MIN, i64::MAX, 0, -1],
            (0..50)
                .map(|i| if i == 7 { 1 << 40 } else { i % 3 })
                .collect(),
        ];
        for col in cases {
            let mut out = Vec::new();
            put_ints(&mut out, &col);
            out.push(0xAB);
            let mut r = Reader::new(&out, "test");
            assert_eq!(r.ints(col.len()).unwrap(), col);
            assert_eq!(r.u8().unwrap(), 0xAB, "{col:?}");
        }
        // The forms: constant, packed (small values), varints (one outlier).
        let mut out = Vec::new();
        put_ints(&mut out, &[60; 34]);
        assert_eq!(out, [0, 120]);
        let mut out = Vec::new();
        put_ints(&mut out, &(0..40).map(|i| i % 8 - 4).collect::<Vec<_>>());
        assert_eq!((out[0], out[1], out.len()), (2, 3, 2 + 15));
        // Frame of reference: values that never go below zero pack without zigzag's extra bit,
        // and values around an offset pack as their distance from the minimum.
        let mut out = Vec::new();
        put_ints(&mut out, &(0..40).map(|i| i % 16).collect::<Vec<_>>());
        assert_eq!((out[0], out[1], out[2], out.len()), (3, 0, 4, 3 + 20));
        let mut out = Vec::new();
        let around: Vec<i64> = (0..40).map(|i| 1_000_000 + i % 16).collect();
        put_ints(&mut out, &around);
        assert_eq!(out[0], 3);
        assert_eq!(Reader::new(&out, "t").ints(40).unwrap(), around);
        // Damage is an error, never a panic.
        assert!(Reader::new(&[3, 0, 65], "t").ints(3).is_err());
        assert!(Reader::new(&[2, 65], "t").ints(3).is_err());
        assert!(Reader::new(&[2, 8, 1], "t").ints(3).is_err());
        assert!(Reader::new(&[9], "t").ints(3).is_err());
    }
    use crate::value::{Value, ValueKind};
    use proptest::prelude::*;

    fn series_from(ts: &[i64], vals: Values, server: &[i64]) -> Series {
        let mut s = Series::new(vals.kind());
        for (i, t) in ts.iter().enumerate() {
            s.upsert(*t, vals.get(i), server[i], None);
        }
        s
    }

    #[test]
    fn regular_timestamps_cost_almost_nothing() {
        let ts: Vec<i64> = (0..1024).map(|i| 1_700_000_000_000 + i * 1000).collect();
        let mut b = Vec::new();
        encode_timestamps(&ts, &mut b);
        assert!(b.len() <= 4, "{} bytes", b.len());
        let back = decode_timestamps(ts[0], ts.len(), &mut Reader::new(&b, "t")).unwrap();
        assert_eq!(back, ts);
    }

    #[test]
    fn delta_codec_finds_the_decimal_resolution() {
        let vals: Vec<f64> = (0..128)
            .map(|i| ((23102 + (i * 7) % 61) as f64) / 100.0)
            .collect();
        let s = series_from(
            &(0..128).collect::<Vec<_>>(),
            Values::Float(vals.clone()),
            &[1; 128],
        );
        let b = encode_with(&s, ValueCodec::Delta).unwrap();
        assert!(b.len() < 128 * 2, "{} bytes", b.len());
        assert_eq!(decode(&b).unwrap(), s);
        assert_eq!(decimal_exponent(&vals), Some(2));
        assert_eq!(decimal_exponent(&[0.1 + 0.2]), None);
        assert_eq!(decimal_exponent(&[-0.0]), None);
        assert_eq!(decimal_exponent(&[5.0, -3.0]), Some(0));
    }

    #[test]
    fn detects_corruption() {
        let s = series_from(&[1, 2, 3], Values::Float(vec![1.0, 2.0, 3.0]), &[9, 9, 9]);
        let mut b = encode(&s).unwrap();
        assert_eq!(decode(&b).unwrap(), s);
        b[5] ^= 0x40;
        assert!(decode(&b).is_err());
        assert!(decode(&b[..3]).is_err());
    }

    #[test]
    fn awkward_floats_round_trip_bit_for_bit() {
        let vals = vec![
            f64::NAN,
            -f64::NAN,
            f64::from_bits(0x7ff8_dead_beef_0001),
            f64::INFINITY,
            f64::NEG_INFINITY,
            -0.0,
            0.0,
            f64::MIN,
            f64::MAX,
            f64::MIN_POSITIVE,
            5e-324,
            0.1 + 0.2,
            231.02,
        ];
        let ts: Vec<i64> = (0..vals.len() as i64).collect();
        let s = series_from(&ts, Values::Float(vals.clone()), &vec![7; vals.len()]);
        let back = decode(&encode(&s).unwrap()).unwrap();
        let Values::Float(got) = back.values else {
            panic!("kind")
        };
        for (a, b) in vals.iter().zip(&got) {
            assert_eq!(a.to_bits(), b.to_bits());
        }
    }

    fn arb_values(n: usize) -> impl Strategy<Value = Values> {
        prop_oneof![
            proptest::collection::vec(any::<i64>(), n).prop_map(Values::Int),
            proptest::collection::vec(any::<f64>(), n).prop_map(Values::Float),
            proptest::collection::vec(
                prop_oneof![Just(String::new()), ".*".prop_map(|s: String| s)],
                n
            )
            .prop_map(Values::Text),
            proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..20), n)
                .prop_map(Values::Bytes),
        ]
    }

    fn arb_series() -> impl Strategy<Value = Series> {
        (1usize..300).prop_flat_map(|n| {
            (
                proptest::collection::btree_set(0i64..crate::time::MAX_TIMESTAMP, n),
                arb_values(n),
                proptest::collection::vec(0i64..1_000_000, n),
                proptest::collection::vec(
                    proptest::option::weighted(
                        0.1,
                        (
                            proptest::option::of(any::<i32>()),
                            proptest::option::of(".*"),
                            proptest::option::of(""),
                        ),
                    ),
                    n,
                ),
            )
                .prop_map(|(ts, vals, server, extras)| {
                    let ts: Vec<i64> = ts.into_iter().collect();
                    let mut s = Series::new(vals.kind());
                    for (i, t) in ts.iter().enumerate() {
                        let e = extras[i].clone().and_then(|(q, l, d)| {
                            Extras {
                                quality: q,
                                location: l,
                                description: d,
                            }
                            .boxed()
                        });
                        s.upsert(*t, vals.get(i), server[i], e);
                    }
                    s
                })
        })
    }

    fn same_bits(a: &Series, b: &Series) -> bool {
        if a.ts != b.ts || a.server != b.server || a.extras != b.extras {
            return false;
        }
        match (&a.values, &b.values) {
            (Values::Float(x), Values::Float(y)) => x
                .iter()
                .map(|f| f.to_bits())
                .eq(y.iter().map(|f| f.to_bits())),
            (x, y) => x == y,
        }
    }

    proptest! {
        #[test]
        fn chunk_round_trip(s in arb_series()) {
            let b = encode(&s).unwrap();
            let back = decode(&b).unwrap();
            prop_assert!(same_bits(&s, &back));
            let fast = decode(&encode_with(&s, ValueCodec::Delta).unwrap()).unwrap();
            prop_assert!(same_bits(&s, &fast));
            let h = decode_header(&b).unwrap();
            prop_assert_eq!(h.n, s.len());
            prop_assert_eq!(h.first_ts, s.ts[0]);
            prop_assert_eq!(h.last_ts, *s.ts.last().unwrap());
        }

        #[test]
        fn integer_columns_round_trip(col in proptest::collection::vec(
            prop_oneof![any::<i64>(), -1000i64..1000, 1_000_000i64..1_000_100, Just(i64::MIN), Just(i64::MAX)],
            0..200,
        )) {
            let mut out = Vec::new();
            put_ints(&mut out, &col);
            out.push(0xAB);
            let mut r = Reader::new(&out, "test");
            prop_assert_eq!(r.ints(col.len()).unwrap(), col);
            prop_assert_eq!(r.u8().unwrap(), 0xAB, "the column's length is exact");
        }

        #[test]
        fn irregular_timestamps_round_trip(ts in proptest::collection::btree_set(0i64..crate::time::MAX_TIMESTAMP, 1..500)) {
            let ts: Vec<i64> = ts.into_iter().collect();
            let mut b = Vec::new();
            encode_timestamps(&ts, &mut b);
            let back = decode_timestamps(ts[0], ts.len(), &mut Reader::new(&b, "t")).unwrap();
            prop_assert_eq!(back, ts);
        }
    }

    #[test]
    fn int_extremes_round_trip() {
        let vals = vec![i64::MIN, i64::MAX, 0, -1, 1];
        let ts: Vec<i64> = (0..5).collect();
        let s = series_from(&ts, Values::Int(vals), &[1, 1, 2, 2, 3]);
        assert_eq!(decode(&encode(&s).unwrap()).unwrap(), s);
        assert_eq!(s.values.get(0), Value::Int(i64::MIN));
        assert_eq!(Series::new(ValueKind::Int).len(), 0);
    }
}
