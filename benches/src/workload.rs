//! The standard smart-meter workload of `shared/workload.md`, generated deterministically.
//!
//! 1,000 three-phase meters behind 100 gateways (10 meters each), 12 channels per meter, one
//! sample per channel per second. Values move like real ones: voltage swings daily around 230 V
//! with per-phase offsets, a drop under load and ±0.3 V noise; currents follow a mean-reverting
//! random walk with occasional appliance switching; power is V × I × power factor summed over
//! the phases; frequency is a shared random walk around 50 Hz; energy counters only grow.
//! Every value is rounded to the resolution a meter reports, so a value is the `f64` nearest to a
//! short decimal, exactly as a meter's JSON would carry it.

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

/// Channel names in the order [`Fleet::second`] emits them, with their decimal resolution.
pub const CHANNELS: [(&str, u32); 12] = [
    ("voltage_l1", 2),
    ("voltage_l2", 2),
    ("voltage_l3", 2),
    ("current_l1", 3),
    ("current_l2", 3),
    ("current_l3", 3),
    ("active_power", 1),
    ("reactive_power", 1),
    ("power_factor", 3),
    ("frequency", 3),
    ("active_energy", 3),
    ("reactive_energy", 3),
];

/// Units of [`CHANNELS`], in the same order.
pub const UNITS: [&str; 12] = [
    "V", "V", "V", "A", "A", "A", "W", "var", "", "Hz", "kWh", "kvarh",
];

/// State of one meter's random walks.
#[derive(Debug, Clone)]
struct Meter {
    current: [f64; 3],
    mean: [f64; 3],
    pf: f64,
    energy_wh: f64,
    reactive_wh: f64,
    phase_offset: [f64; 3],
}

/// A fleet of meters that produces one second of readings at a time.
#[derive(Debug)]
pub struct Fleet {
    meters: Vec<Meter>,
    meters_per_gateway: usize,
    frequency: f64,
    rng: SmallRng,
}

fn round_to(x: f64, decimals: u32) -> f64 {
    let scale = 10f64.powi(decimals as i32);
    (x * scale).round() / scale
}

impl Fleet {
    /// A fleet of `meters` meters, `meters_per_gateway` behind each gateway, seeded so that two
    /// fleets with the same arguments produce the same values.
    pub fn new(meters: usize, meters_per_gateway: usize, seed: u64) -> Self {
        let mut rng = SmallRng::seed_from_u64(seed);
        let meters = (0..meters)
            .map(|_| {
                let base = rng.gen_range(2.0..15.0);
                Meter {
                    current: [base, base * 0.9, base * 1.1],
                    mean: [base, base * 0.9, base * 1.1],
                    pf: rng.gen_range(0.85..0.99),
                    energy_wh: rng.gen_range(1_000_000.0..5_000_000.0f64).round(),
                    reactive_wh: rng.gen_range(100_000.0..2_000_000.0f64).round(),
                    phase_offset: [
                        rng.gen_range(-1.0..1.0),
                        rng.gen_range(-1.0..1.0),
                        rng.gen_range(-1.0..1.0),
                    ],
                }
            })
            .collect();
        Fleet {
            meters,
            meters_per_gateway: meters_per_gateway.max(1),
            frequency: 50.0,
            rng,
        }
    }

    /// The standard fleet: 1,000 meters, 10 per gateway.
    pub fn standard(seed: u64) -> Self {
        Self::new(1000, 10, seed)
    }

    /// Number of meters.
    pub fn meters(&self) -> usize {
        self.meters.len()
    }

    /// Gateway id of meter `m`, e.g. `gw-00409DFF-FF410003`.
    pub fn gateway_id(&self, m: usize) -> String {
        format!("gw-00409DFF-FF41{:04X}", m / self.meters_per_gateway)
    }

    /// Meter name of meter `m` within its gateway, e.g. `pst07`.
    pub fn meter_name(&self, m: usize) -> String {
        format!("pst{:02}", m % self.meters_per_gateway)
    }

    /// Stream path of channel `c` of meter `m`.
    pub fn stream_path(&self, m: usize, c: usize) -> String {
        format!(
            "{}/{}/{}",
            self.gateway_id(m),
            self.meter_name(m),
            CHANNELS[c].0
        )
    }

    /// Every stream's points over `seconds` from `start_ms`, one `Vec` per stream in the order
    /// meter by meter, channel by channel (stream `m * 12 + c`).
    pub fn series(&mut self, start_ms: i64, seconds: usize) -> Vec<Vec<(i64, f64)>> {
        let mut out = vec![Vec::with_capacity(seconds); self.meters() * 12];
        for s in 0..seconds {
            let t = start_ms + s as i64 * 1000;
            self.second(t, |m, v| {
                for (c, x) in v.iter().enumerate() {
                    out[m * 12 + c].push((t, *x));
                }
            });
        }
        out
    }

    /// Advances every meter by one second at `t_ms` and calls `emit(meter, values)` with its 12
    /// channel values, in [`CHANNELS`] order.
    pub fn second(&mut self, t_ms: i64, mut emit: impl FnMut(usize, &[f64; 12])) {
        let rng = &mut self.rng;
        self.frequency += 0.1 * (50.0 - self.frequency) + rng.gen_range(-0.005..0.005);
        let freq = round_to(self.frequency, 3);
        let day = (t_ms as f64 / 1000.0) / 86_400.0 * std::f64::consts::TAU;
        let swing = 2.0 * day.sin();
        for (i, m) in self.meters.iter_mut().enumerate() {
            let mut v = [0.0; 12];
            let mut p = 0.0;
            let mut q = 0.0;
            if rng.gen_bool(0.001) {
                let ph = rng.gen_range(0..3);
                let step = rng.gen_range(-5.0..5.0);
                m.mean[ph] = (m.mean[ph] + step).clamp(0.5, 40.0);
            }
            m.pf = (m.pf + rng.gen_range(-0.002..0.002)).clamp(0.8, 0.999);
            let pf = round_to(m.pf, 3);
            for ph in 0..3 {
                m.current[ph] += 0.05 * (m.mean[ph] - m.current[ph]) + rng.gen_range(-0.1..0.1);
                m.current[ph] = m.current[ph].max(0.0);
                let i_a = round_to(m.current[ph], 3);
                let u = round_to(
                    230.0 + swing + m.phase_offset[ph] - 0.05 * i_a + rng.gen_range(-0.3..0.3),
                    2,
                );
                v[ph] = u;
                v[3 + ph] = i_a;
                p += u * i_a * pf;
                q += u * i_a * (1.0 - pf * pf).sqrt();
            }
            m.energy_wh += p / 3600.0;
            m.reactive_wh += q / 3600.0;
            v[6] = round_to(p, 1);
            v[7] = round_to(q, 1);
            v[8] = pf;
            v[9] = freq;
            v[10] = m.energy_wh.floor() / 1000.0;
            v[11] = m.reactive_wh.floor() / 1000.0;
            emit(i, &v);
        }
    }
}
