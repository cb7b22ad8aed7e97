//! A webhook receiver for the benchmarks: HTTP/1.1 with keep-alive on 127.0.0.1, a thread per
//! connection, answering 200 at once and handing each request's body, with the time it arrived,
//! to a callback. Small on purpose: the receiver must cost less than what it measures.

use anyhow::Result;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::Arc;
use std::time::Instant;

/// A running receiver.
pub struct Receiver {
    /// `http://127.0.0.1:PORT/hook`.
    pub url: String,
}

/// Starts a receiver calling `on_request(arrival, body)` for every request.
pub fn start(on_request: impl Fn(Instant, &[u8]) + Send + Sync + 'static) -> Result<Receiver> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let url = format!("http://{}/hook", listener.local_addr()?);
    let f = Arc::new(on_request);
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(conn) = conn else { continue };
            let f = f.clone();
            std::thread::spawn(move || {
                let _ = conn.set_nodelay(true);
                let Ok(mut w) = conn.try_clone() else { return };
                let mut r = BufReader::with_capacity(1 << 20, conn);
                let mut body = Vec::new();
                loop {
                    let mut len = 0usize;
                    let mut line = String::new();
                    // Request line and headers.
                    let mut first = true;
                    loop {
                        line.clear();
                        match r.read_line(&mut line) {
                            Ok(0) | Err(_) => return,
                            Ok(_) => {}
                        }
                        if line == "\r\n" && !first {
                            break;
                        }
                        first = false;
                        if let Some((k, v)) = line.split_once(':') {
                            if k.eq_ignore_ascii_case("content-length") {
                                len = v.trim().parse().unwrap_or(0);
                            }
                        }
                    }
                    body.resize(len, 0);
                    if r.read_exact(&mut body).is_err() {
                        return;
                    }
                    let arrived = Instant::now();
                    if w.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
                        .is_err()
                    {
                        return;
                    }
                    f(arrived, &body);
                }
            });
        }
    });
    Ok(Receiver { url })
}

/// How many times `needle` occurs in `hay` (counting events in a body without parsing it).
pub fn count(hay: &[u8], needle: &[u8]) -> usize {
    memchr::memmem::find_iter(hay, needle).count()
}
