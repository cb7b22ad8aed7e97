//! Simulated meters: Modbus RTU slaves on the far end of a serial line (a pseudo-terminal in
//! tests and in `meterstream-agent --simulate`), speaking the same profiles as the agent.
//!
//! Values follow a three-phase model: phase voltages 230 V ± 2 % with a slow swing and noise,
//! currents on a daily load curve (morning and evening peaks) with a random walk, power factor
//! 0.85–0.99, powers consistent with them (P = V·I·cos φ, Q = V·I·sin φ per phase, totals the
//! sums), frequency 50 Hz ± 0.05, energy counters that grow by power × time. What a meter
//! *holds* is what its registers encode, so a reader must decode exactly those values.
//!
//! Faults can be switched on per meter: no answer, a bad CRC, a Modbus exception.
//!
//! # Wire
//! Requests are read as 8-byte frames `slave fn addr(2) count(2) crc(2)` for functions 03 and
//! 04; answers are `slave fn bytes data… crc` or `slave fn|0x80 code crc`. Frames for other
//! slaves on the bus are ignored, as on a real multi-drop line.

use crate::profile::{Area, Profile};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

const CRC: crc::Crc<u16> = crc::Crc::<u16>::new(&crc::CRC_16_MODBUS);

/// A fault a simulated meter can show.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Answers correctly.
    None,
    /// Does not answer at all.
    Silent,
    /// Answers with a corrupted CRC.
    BadCrc,
    /// Answers with this Modbus exception code (e.g. 4, server device failure).
    Exception(u8),
}

/// The electrical state of one simulated meter.
#[derive(Debug, Clone)]
struct Physics {
    rng: SmallRng,
    /// Per-phase voltage offset, V.
    v_offset: [f64; 3],
    /// Per-phase current scale (the size of the installation), A at full load.
    i_scale: [f64; 3],
    /// Random walk on the load, around 1.
    walk: [f64; 3],
    pf: [f64; 3],
    freq: f64,
    active_kwh: f64,
    reactive_kvarh: f64,
    last_ms: Option<i64>,
}

fn hours_since_2020(now_ms: i64) -> f64 {
    ((now_ms - 1_577_836_800_000) as f64 / 3_600_000.0).max(0.0)
}

/// Fraction of full load at a time of day (hours, 0–24): a base load with morning and evening
/// peaks.
pub fn load_curve(hour: f64) -> f64 {
    let peak = |h: f64, width: f64| (-((hour - h) / width).powi(2)).exp();
    0.25 + 0.45 * peak(8.0, 1.5) + 0.75 * peak(19.5, 2.0) + 0.2 * peak(13.0, 2.5)
}

impl Physics {
    /// A meter seeded by `seed`; its energy counters start where ~2.5 kW (and ~0.8 kvar) since
    /// 2020 would have brought them, so that a restarted simulator's counters still only grow.
    fn new(seed: u64, now_ms: i64) -> Physics {
        let mut rng = SmallRng::seed_from_u64(seed);
        let v_offset = [0; 3].map(|_| rng.gen_range(-2.0..2.0));
        let base = rng.gen_range(10.0..60.0);
        let i_scale = [0; 3].map(|_| base * rng.gen_range(0.8..1.2));
        let pf = [0; 3].map(|_| rng.gen_range(0.88..0.98));
        Physics {
            rng,
            v_offset,
            i_scale,
            walk: [1.0; 3],
            pf,
            freq: 50.0,
            active_kwh: (seed % 5000) as f64 + 2.5 * hours_since_2020(now_ms),
            reactive_kvarh: (seed % 900) as f64 + 0.8 * hours_since_2020(now_ms),
            last_ms: None,
        }
    }

    /// Advances to `now_ms` and returns the quantities by channel name.
    fn step(&mut self, now_ms: i64) -> Vec<(&'static str, f64)> {
        let dt = self
            .last_ms
            .map_or(0.0, |l| ((now_ms - l) as f64 / 1000.0).max(0.0));
        self.last_ms = Some(now_ms);
        let hour = (now_ms.rem_euclid(86_400_000)) as f64 / 3_600_000.0;
        let load = load_curve(hour);
        let swing = 1.5 * (std::f64::consts::TAU * hour / 24.0).sin();
        let r = &mut self.rng;
        self.freq = (self.freq + r.gen_range(-0.004..0.004) + (50.0 - self.freq) * 0.05)
            .clamp(49.95, 50.05);
        let mut v = [0.0; 3];
        let mut i = [0.0; 3];
        let mut p = [0.0; 3];
        let mut q = [0.0; 3];
        for k in 0..3 {
            self.walk[k] = (self.walk[k] + r.gen_range(-0.02..0.02) + (1.0 - self.walk[k]) * 0.01)
                .clamp(0.6, 1.4);
            self.pf[k] = (self.pf[k] + r.gen_range(-0.002..0.002)).clamp(0.85, 0.99);
            i[k] = self.i_scale[k] * load * self.walk[k];
            // Voltage drops a little under load.
            v[k] = (230.0 + self.v_offset[k] + swing - 0.03 * i[k] + r.gen_range(-0.3..0.3))
                .clamp(225.4, 234.6);
            p[k] = v[k] * i[k] * self.pf[k];
            q[k] = v[k] * i[k] * (1.0 - self.pf[k] * self.pf[k]).sqrt();
        }
        let (pt, qt) = (p.iter().sum::<f64>(), q.iter().sum::<f64>());
        let st: f64 = (0..3).map(|k| v[k] * i[k]).sum();
        self.active_kwh += pt * dt / 3.6e6;
        self.reactive_kvarh += qt * dt / 3.6e6;
        vec![
            ("voltage_l1", v[0]),
            ("voltage_l2", v[1]),
            ("voltage_l3", v[2]),
            ("current_l1", i[0]),
            ("current_l2", i[1]),
            ("current_l3", i[2]),
            ("active_power_l1", p[0]),
            ("active_power_l2", p[1]),
            ("active_power_l3", p[2]),
            ("reactive_power_l1", q[0]),
            ("reactive_power_l2", q[1]),
            ("reactive_power_l3", q[2]),
            ("power_factor_l1", self.pf[0]),
            ("power_factor_l2", self.pf[1]),
            ("power_factor_l3", self.pf[2]),
            ("active_power", pt),
            ("reactive_power", qt),
            ("power_factor", if st > 0.0 { pt / st } else { 1.0 }),
            ("frequency", self.freq),
            ("active_energy", self.active_kwh),
            ("active_energy_export", 0.0),
            ("reactive_energy", self.reactive_kvarh),
            ("reactive_energy_export", 0.0),
        ]
    }
}

#[derive(Debug)]
struct State {
    physics: Physics,
    /// Register words by (area, address).
    words: std::collections::HashMap<(Area, u16), u16>,
    fault: Fault,
    requests: u64,
}

/// One simulated meter. Shared between the serving task and whoever steers it.
#[derive(Debug, Clone)]
pub struct SimMeter {
    /// Modbus slave id.
    pub slave: u8,
    /// Its model.
    pub profile: Arc<Profile>,
    state: Arc<Mutex<State>>,
}

impl SimMeter {
    /// A meter of `profile` at `slave`, its values seeded by `seed`, set to `now_ms`.
    pub fn new(profile: Profile, slave: u8, seed: u64, now_ms: i64) -> SimMeter {
        let m = SimMeter {
            slave,
            profile: Arc::new(profile),
            state: Arc::new(Mutex::new(State {
                physics: Physics::new(seed, now_ms),
                words: Default::default(),
                fault: Fault::None,
                requests: 0,
            })),
        };
        m.step(now_ms);
        m
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Moves the meter's quantities on to `now_ms` and writes them into its registers.
    pub fn step(&self, now_ms: i64) {
        let mut st = self.lock();
        let values = st.physics.step(now_ms);
        for (i, r) in self.profile.registers.iter().enumerate() {
            let v = values
                .iter()
                .find(|(n, _)| *n == r.channel)
                .map_or(0.0, |(_, v)| *v);
            for (k, w) in self.profile.encode(i, v).into_iter().enumerate() {
                st.words.insert((r.area, r.address + k as u16), w);
            }
        }
    }

    /// Sets every register of `channel` to hold `value` (tests use it to pin a value).
    pub fn set(&self, channel: &str, value: f64) {
        let mut st = self.lock();
        for (i, r) in self.profile.registers.iter().enumerate() {
            if r.channel == channel {
                for (k, w) in self.profile.encode(i, value).into_iter().enumerate() {
                    st.words.insert((r.area, r.address + k as u16), w);
                }
            }
        }
    }

    /// What the meter holds now, by channel, decoded with its profile: what a correct reader
    /// reads.
    pub fn held(&self) -> Vec<(String, f64)> {
        let st = self.lock();
        self.profile
            .plan()
            .iter()
            .flat_map(|req| {
                let words: Vec<u16> = (0..req.count)
                    .map(|k| {
                        st.words
                            .get(&(req.area, req.address + k))
                            .copied()
                            .unwrap_or(0)
                    })
                    .collect();
                self.profile.decode(req, &words).unwrap_or_default()
            })
            .map(|(i, v)| (self.profile.registers[i].channel.clone(), v))
            .collect()
    }

    /// Switches a fault on (or off with [`Fault::None`]).
    pub fn set_fault(&self, fault: Fault) {
        self.lock().fault = fault;
    }

    /// Requests addressed to this meter so far.
    pub fn requests(&self) -> u64 {
        self.lock().requests
    }

    /// The answer frame to a request PDU (function, address, count), or `None` for silence.
    fn answer(&self, function: u8, address: u16, count: u16) -> Option<Vec<u8>> {
        let mut st = self.lock();
        st.requests += 1;
        let mut out = vec![self.slave];
        let area = match function {
            3 => Some(Area::Holding),
            4 => Some(Area::Input),
            _ => None,
        };
        let exception = match (st.fault, area) {
            (Fault::Silent, _) => return None,
            (Fault::Exception(code), _) => Some(code),
            (_, None) => Some(1),
            (_, Some(_)) if count == 0 || count > 125 => Some(3),
            _ => None,
        };
        if let Some(code) = exception {
            out.extend_from_slice(&[function | 0x80, code]);
        } else if let Some(area) = area {
            out.push(function);
            out.push((count * 2) as u8);
            for k in 0..count {
                let w = st
                    .words
                    .get(&(area, address.wrapping_add(k)))
                    .copied()
                    .unwrap_or(0);
                out.extend_from_slice(&w.to_be_bytes());
            }
        }
        let crc = CRC.checksum(&out);
        out.extend_from_slice(&crc.to_le_bytes());
        if st.fault == Fault::BadCrc {
            let n = out.len();
            out[n - 1] ^= 0x5A;
        }
        Some(out)
    }
}

/// Serves `meters` (one bus) on `line` until it closes or fails for good. Read errors (a
/// pseudo-terminal whose other side is closed while the agent reconnects) are waited out.
pub async fn serve<L>(mut line: L, meters: Vec<SimMeter>)
where
    L: AsyncRead + AsyncWrite + Unpin,
{
    let mut buf: Vec<u8> = Vec::with_capacity(256);
    let mut chunk = [0u8; 256];
    loop {
        match line.read(&mut chunk).await {
            Ok(0) | Err(_) => {
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                continue;
            }
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
        while buf.len() >= 8 {
            let frame = &buf[..8];
            if CRC.checksum(&frame[..6]).to_le_bytes() != frame[6..8] {
                buf.remove(0);
                continue;
            }
            let slave = frame[0];
            let function = frame[1];
            let address = u16::from_be_bytes([frame[2], frame[3]]);
            let count = u16::from_be_bytes([frame[4], frame[5]]);
            buf.drain(..8);
            if let Some(m) = meters.iter().find(|m| m.slave == slave) {
                if let Some(answer) = m.answer(function, address, count) {
                    if line.write_all(&answer).await.is_err() {
                        break;
                    }
                    let _ = line.flush().await;
                }
            }
        }
    }
}

/// Steps every meter once per `every`, from now on, for as long as the task runs.
pub async fn tick(meters: Vec<SimMeter>, every: std::time::Duration) {
    let mut t = tokio::time::interval(every);
    t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        t.tick().await;
        let now = crate::now_ms();
        for m in &meters {
            m.step(now);
        }
    }
}

/// Simulated buses standing in for the configured ports: each port's meters are served by
/// simulators on a pseudo-terminal, and the port's path is pointed at its other end. Dropping it
/// closes the terminals.
pub struct SimBuses {
    /// Every simulated meter, by the configured meter name.
    pub meters: Vec<(String, SimMeter)>,
    /// The pseudo-terminals' agent-side ends, held open so the lines stay up while the agent
    /// reconnects.
    _held: Vec<tokio_serial::SerialStream>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for SimBuses {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl SimBuses {
    /// The simulated meter named `name`.
    pub fn meter(&self, name: &str) -> Option<&SimMeter> {
        self.meters.iter().find(|(n, _)| n == name).map(|(_, m)| m)
    }
}

/// Replaces every port of `cfg` by a pseudo-terminal served by simulated meters (same names,
/// profiles and slave ids), stepped every `step` (`None`: values stay as they are until a test
/// sets or steps them). Needs a Tokio runtime.
pub fn attach(
    cfg: &mut crate::config::Config,
    step: Option<std::time::Duration>,
) -> crate::Result<SimBuses> {
    use tokio_serial::SerialPort;
    let mut out = SimBuses {
        meters: Vec::new(),
        _held: Vec::new(),
        tasks: Vec::new(),
    };
    let now = crate::now_ms();
    for (pi, port) in cfg.ports.iter_mut().enumerate() {
        let (master, slave) = tokio_serial::SerialStream::pair().map_err(|e| {
            crate::AgentError::Config(format!("cannot create a pseudo-terminal: {e}"))
        })?;
        let name = slave
            .name()
            .ok_or_else(|| crate::AgentError::Config("the pseudo-terminal has no name".into()))?;
        let mut meters = Vec::new();
        for (mi, m) in port.meters.iter().enumerate() {
            let profile = Profile::load(&m.profile)?;
            let sim = SimMeter::new(profile, m.slave, (pi * 1000 + mi) as u64 + 1, now);
            out.meters.push((m.name.clone(), sim.clone()));
            meters.push(sim);
        }
        port.path = std::path::PathBuf::from(name);
        out.tasks.push(tokio::spawn(serve(master, meters.clone())));
        if let Some(every) = step {
            out.tasks.push(tokio::spawn(tick(meters, every)));
        }
        out._held.push(slave);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn quantities_are_consistent_and_energy_only_grows() {
        let mut ph = Physics::new(7, 1_700_000_000_000);
        let mut last = 0.0;
        for s in 0..7200 {
            let v = ph.step(1_700_000_000_000 + s * 1000);
            let get = |n: &str| v.iter().find(|x| x.0 == n).unwrap().1;
            for k in 1..=3 {
                let (u, i, pf) = (
                    get(&format!("voltage_l{k}")),
                    get(&format!("current_l{k}")),
                    get(&format!("power_factor_l{k}")),
                );
                assert!((225.0..=235.0).contains(&u), "{u}");
                assert!((0.85..=0.99).contains(&pf), "{pf}");
                assert!((get(&format!("active_power_l{k}")) - u * i * pf).abs() < 1e-6);
            }
            let total: f64 = (1..=3).map(|k| get(&format!("active_power_l{k}"))).sum();
            assert!((get("active_power") - total).abs() < 1e-6);
            assert!((49.95..=50.05).contains(&get("frequency")));
            let e = get("active_energy");
            assert!(e >= last);
            last = e;
        }
        assert!(load_curve(19.5) > 2.0 * load_curve(3.0));
    }

    #[test]
    fn answers_with_the_registers_and_a_valid_crc_and_shows_faults() {
        let m = SimMeter::new(Profile::load("sdm630").unwrap(), 3, 1, 1_700_000_000_000);
        m.set("voltage_l1", 231.5);
        let a = m.answer(4, 0, 2).unwrap();
        assert_eq!(&a[..3], &[3, 4, 4]);
        assert_eq!(
            CRC.checksum(&a[..a.len() - 2]).to_le_bytes(),
            a[a.len() - 2..]
        );
        let bits = u32::from_be_bytes([a[3], a[4], a[5], a[6]]);
        assert_eq!(f32::from_bits(bits), 231.5);
        assert_eq!(m.held()[0], ("voltage_l1".to_string(), 231.5));
        m.set_fault(Fault::Exception(4));
        assert_eq!(&m.answer(4, 0, 2).unwrap()[..3], &[3, 0x84, 4]);
        m.set_fault(Fault::BadCrc);
        let a = m.answer(4, 0, 2).unwrap();
        assert_ne!(
            CRC.checksum(&a[..a.len() - 2]).to_le_bytes(),
            a[a.len() - 2..]
        );
        m.set_fault(Fault::Silent);
        assert!(m.answer(4, 0, 2).is_none());
    }
}
