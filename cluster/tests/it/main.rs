//! Integration tests of meterstream-cluster against a real `nats-server` (installed by
//! `scripts/test`), on 127.0.0.1 with a temporary store directory.
#![allow(clippy::unwrap_used)]

mod events;
mod lease;
mod log;
mod registry;
mod snapshot;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A `nats-server -js` on a free port of 127.0.0.1, killed when dropped.
pub struct Nats {
    child: Child,
    /// `nats://127.0.0.1:<port>`.
    pub url: String,
    _dir: tempfile::TempDir,
}

impl Nats {
    /// Starts one JetStream server and waits until it accepts connections. Tests run in
    /// parallel and a free port is only free until someone takes it: a server that could not
    /// bind its port (another test's took it) has exited, and is started again on another.
    pub fn start() -> Nats {
        for _ in 0..10 {
            let dir = tempfile::tempdir().unwrap();
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port();
            let mut child = Command::new("nats-server")
                .args(["-js", "-a", "127.0.0.1", "-p", &port.to_string(), "-sd"])
                .arg(dir.path())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("nats-server (Debian package nats-server; scripts/test installs it)");
            let started = Instant::now();
            let mut up = false;
            while started.elapsed() < Duration::from_secs(10) {
                if child.try_wait().unwrap().is_some() {
                    break;
                }
                if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                    // Ours, not another test's on the same port: still running a moment later.
                    std::thread::sleep(Duration::from_millis(100));
                    up = child.try_wait().unwrap().is_none();
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            if up {
                return Nats {
                    child,
                    url: format!("nats://127.0.0.1:{port}"),
                    _dir: dir,
                };
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        panic!("nats-server did not start");
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
