//! One serial bus: opens the port, reads every meter on it once per sampling interval with as
//! few Modbus requests as each profile allows, and publishes the readings to the channel layer.
//!
//! Every request has a timeout (tokio-modbus has none of its own). A timed-out request leaves
//! the line in an unknown state, so the port is reopened before the next request. After
//! `reconnect_after` failed requests in a row the port is reopened with a backoff of 1 s doubling
//! up to 60 s, and a port that cannot be opened is retried the same way. A meter that fails never
//! stops the others: its `<meter>/status` stream says `active`, `timeout` (no answer) or `error`
//! (an exception, or bytes that were not a valid answer, such as a bad CRC).

use crate::channel::{Channels, Reading, Sample};
use crate::config::{MeterConfig, Parity, PortConfig};
use crate::profile::{Area, Profile, Request};
use meterstream_storage::StreamType;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_modbus::client::{Context as Modbus, Reader};
use tokio_modbus::slave::{Slave, SlaveContext};

/// A meter's state as its `status` stream reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// Its last round was read completely.
    Active,
    /// It did not answer.
    Timeout,
    /// It answered with an exception or with bytes that were not a valid answer.
    Error,
}

impl Status {
    /// The value of the `status` stream.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Active => "active",
            Status::Timeout => "timeout",
            Status::Error => "error",
        }
    }
}

/// How the rest of the agent steers a bus (commands use it).
#[derive(Clone)]
pub struct BusControl {
    /// The sampling interval; a change takes effect at once.
    pub interval: tokio::sync::watch::Receiver<Duration>,
    /// Read every meter now, outside the schedule.
    pub sample_now: Arc<tokio::sync::Notify>,
    /// Close and reopen the port now.
    pub reconnect: Arc<tokio::sync::Notify>,
    /// Each meter's last status, by name.
    pub statuses: Arc<std::sync::Mutex<std::collections::HashMap<String, Status>>>,
}

/// A meter on the bus with its plan of requests.
struct Meter {
    cfg: MeterConfig,
    profile: Profile,
    plan: Vec<Request>,
    channels: Vec<Arc<str>>,
    units: Vec<Arc<str>>,
    status_channel: Arc<str>,
    status: Option<Status>,
    status_published_ms: i64,
}

/// Counts bytes read through a transport, so that a timed-out request can be told apart:
/// silence (timeout) or bytes that never made a valid answer (error).
struct Counted<T> {
    inner: T,
    read: Arc<AtomicU64>,
}

impl<T: AsyncRead + Unpin> AsyncRead for Counted<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        let n = buf.filled().len() - before;
        self.read.fetch_add(n as u64, Ordering::Relaxed);
        r
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Counted<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Opens a serial port as configured. Exclusive access is turned off so that the port can be
/// reopened after a failure (the lock would otherwise outlive the closed descriptor on a
/// pseudo-terminal).
pub fn open_port(p: &PortConfig) -> std::io::Result<tokio_serial::SerialStream> {
    use tokio_serial::SerialPort;
    let builder = tokio_serial::new(p.path.to_string_lossy(), p.baud_rate)
        .parity(match p.parity {
            Parity::None => tokio_serial::Parity::None,
            Parity::Even => tokio_serial::Parity::Even,
            Parity::Odd => tokio_serial::Parity::Odd,
        })
        .stop_bits(if p.stop_bits == 2 {
            tokio_serial::StopBits::Two
        } else {
            tokio_serial::StopBits::One
        })
        .data_bits(if p.data_bits == 7 {
            tokio_serial::DataBits::Seven
        } else {
            tokio_serial::DataBits::Eight
        });
    let mut s = tokio_serial::SerialStream::open(&builder).map_err(std::io::Error::from)?;
    s.set_exclusive(false).map_err(std::io::Error::from)?;
    // Stale bytes from before the open would be taken for an answer.
    let _ = s.clear(tokio_serial::ClearBuffer::All);
    Ok(s)
}

/// A Modbus RTU client over an open port, with the count of bytes read through it.
fn attach(s: tokio_serial::SerialStream) -> (Modbus, Arc<AtomicU64>) {
    let read = Arc::new(AtomicU64::new(0));
    let t = Counted {
        inner: s,
        read: read.clone(),
    };
    (tokio_modbus::client::rtu::attach(t), read)
}

/// Opens the port and attaches a client, or `None` (the next tick retries with backoff).
fn open_modbus(p: &PortConfig) -> Option<(Modbus, Arc<AtomicU64>)> {
    open_port(p).map(attach).ok()
}

/// What one request came to.
enum Outcome {
    Words(Vec<u16>),
    /// The meter answered with a Modbus exception (the line is in order).
    Exception(String),
    Timeout,
    Error(String),
}

/// Reads the meters of `port` every `every` and publishes their readings and status on
/// `channels`, for as long as the task runs. Status is published when it changes and at least
/// every `status_every`.
pub async fn run(
    port: PortConfig,
    device_channels: Channels,
    mut control: BusControl,
    status_every: Duration,
) {
    let mut meters: Vec<Meter> = Vec::new();
    for m in &port.meters {
        // The configuration was validated, so the profile loads; a failure here is logged.
        match Profile::load(&m.profile) {
            Ok(profile) => {
                let plan = profile.plan();
                meters.push(Meter {
                    channels: profile
                        .registers
                        .iter()
                        .map(|r| Arc::from(format!("{}/{}", m.name, r.channel)))
                        .collect(),
                    units: profile
                        .registers
                        .iter()
                        .map(|r| Arc::from(r.unit.as_str()))
                        .collect(),
                    status_channel: Arc::from(format!("{}/status", m.name)),
                    cfg: m.clone(),
                    profile,
                    plan,
                    status: None,
                    status_published_ms: 0,
                });
            }
            Err(e) => {
                tracing::error!(meter = %m.name, "cannot load the meter's profile, it will not be read: {e}")
            }
        }
    }
    let response_timeout = Duration::from_secs_f64(port.response_timeout);
    let every = *control.interval.borrow_and_update();
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut ctx: Option<(Modbus, Arc<AtomicU64>)> = None;
    let mut failures_in_a_row = 0u32;
    let mut backoff = Duration::from_secs(1);
    let mut reopen_at = tokio::time::Instant::now();
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = control.sample_now.notified() => {}
            () = control.reconnect.notified() => {
                // Asked to reopen the line (a command): now, without waiting for a backoff.
                ctx = None;
                reopen_at = tokio::time::Instant::now();
                failures_in_a_row = 0;
                tracing::info!(port = %port.path.display(), "reopening the port on request");
            }
            changed = control.interval.changed() => {
                if changed.is_err() {
                    return;
                }
                let every = *control.interval.borrow_and_update();
                tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                continue;
            }
        }
        if ctx.is_none() && tokio::time::Instant::now() >= reopen_at {
            match open_port(&port) {
                Ok(s) => {
                    ctx = Some(attach(s));
                    tracing::info!(port = %port.path.display(), "serial port open");
                }
                Err(e) => {
                    tracing::warn!(port = %port.path.display(), retry_in_s = backoff.as_secs(), "cannot open the serial port: {e}");
                    reopen_at = tokio::time::Instant::now() + backoff;
                    backoff = (backoff * 2).min(Duration::from_secs(60));
                }
            }
        }
        for m in &mut meters {
            let started = crate::now_ms();
            let mut readings = Vec::with_capacity(m.profile.registers.len() + 1);
            let mut status = Status::Active;
            for req in &m.plan {
                let outcome = match ctx.as_mut() {
                    None => Outcome::Error("the serial port is not open".into()),
                    Some((c, read)) => request(c, read, m.cfg.slave, req, response_timeout).await,
                };
                match outcome {
                    Outcome::Words(words) => {
                        // The line works: the next trouble starts its backoff afresh.
                        failures_in_a_row = 0;
                        backoff = Duration::from_secs(1);
                        match m.profile.decode(req, &words) {
                            Ok(values) => {
                                readings.extend(values.into_iter().map(|(i, v)| Reading {
                                    channel: m.channels[i].clone(),
                                    timestamp: started,
                                    value: Sample::Number(v),
                                    stream_type: StreamType::Double,
                                    unit: m.units[i].clone(),
                                }))
                            }
                            Err(e) => {
                                tracing::warn!(meter = %m.cfg.name, "{e}");
                                status = Status::Error;
                            }
                        }
                    }
                    Outcome::Exception(e) => {
                        failures_in_a_row = 0;
                        tracing::debug!(meter = %m.cfg.name, "{e}");
                        status = Status::Error;
                        break;
                    }
                    Outcome::Timeout | Outcome::Error(_) => {
                        let timeout = matches!(outcome, Outcome::Timeout);
                        if let Outcome::Error(e) = &outcome {
                            tracing::debug!(meter = %m.cfg.name, "request failed: {e}");
                        }
                        status = if timeout {
                            Status::Timeout
                        } else {
                            Status::Error
                        };
                        // Not open: the top of the tick reopens it, with its backoff.
                        if ctx.is_none() {
                            break;
                        }
                        failures_in_a_row += 1;
                        // The line's state is unknown after a timeout or garbage: reopen it
                        // before the next request, at once unless failures keep coming.
                        ctx = None;
                        if failures_in_a_row >= port.reconnect_after {
                            reopen_at = tokio::time::Instant::now() + backoff;
                            tracing::warn!(port = %port.path.display(), failures = failures_in_a_row, retry_in_s = backoff.as_secs(), "requests keep failing; reopening the port after a pause");
                            backoff = (backoff * 2).min(Duration::from_secs(60));
                            failures_in_a_row = 0;
                        } else {
                            ctx = open_modbus(&port);
                        }
                        break;
                    }
                }
            }
            let due = m.status != Some(status)
                || started - m.status_published_ms >= status_every.as_millis() as i64;
            if due {
                if m.status != Some(status) {
                    tracing::info!(meter = %m.cfg.name, status = status.as_str(), "meter status");
                }
                m.status = Some(status);
                m.status_published_ms = started;
                control
                    .statuses
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(m.cfg.name.clone(), status);
                readings.push(Reading {
                    channel: m.status_channel.clone(),
                    timestamp: started,
                    value: Sample::Text(status.as_str().into()),
                    stream_type: StreamType::String,
                    unit: Arc::from(""),
                });
            }
            device_channels.publish(readings).await;
        }
    }
}

async fn request(
    c: &mut Modbus,
    read: &AtomicU64,
    slave: u8,
    req: &Request,
    t: Duration,
) -> Outcome {
    c.set_slave(Slave(slave));
    let before = read.load(Ordering::Relaxed);
    let fut = async {
        match req.area {
            Area::Input => c.read_input_registers(req.address, req.count).await,
            Area::Holding => c.read_holding_registers(req.address, req.count).await,
        }
    };
    match tokio::time::timeout(t, fut).await {
        Ok(Ok(Ok(words))) => Outcome::Words(words),
        Ok(Ok(Err(exception))) => Outcome::Exception(format!("Modbus exception: {exception}")),
        Ok(Err(e)) => Outcome::Error(e.to_string()),
        Err(_) if read.load(Ordering::Relaxed) > before => {
            Outcome::Error("the answer was not a valid frame (bad CRC or garbage)".into())
        }
        Err(_) => Outcome::Timeout,
    }
}
