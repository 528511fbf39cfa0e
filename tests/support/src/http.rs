//! A one-file HTTP/1.1 server on loopback that answers `Range` requests, records where each request started, and can drop a response part-way: the bundle source of the agent's download and resume tests.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::thread;

/// A running [`RangeServer`]: its URL and the `Range` start of every request so far.
pub struct RangeServer {
    /// `http://127.0.0.1:PORT/bundle.molt`.
    pub url: String,
    /// The `Range` start of each request, in order (0 without one).
    pub starts: Arc<Mutex<Vec<u64>>>,
}

impl RangeServer {
    /// Serves `body` on a free port for `requests` connections (then stops listening).
    /// `honour_range` false answers every request with the whole file (a server that
    /// ignores `Range`); `drop_first_after` cuts the first response after that many
    /// body bytes (a network drop).
    pub fn start(
        body: Vec<u8>,
        honour_range: bool,
        requests: usize,
        drop_first_after: Option<usize>,
    ) -> RangeServer {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let url = format!(
            "http://{}/bundle.molt",
            listener.local_addr().expect("local address")
        );
        let starts = Arc::new(Mutex::new(Vec::new()));
        let log = starts.clone();
        thread::spawn(move || {
            for (i, conn) in listener.incoming().take(requests).enumerate() {
                let Ok(mut conn) = conn else { return };
                let Ok(read_half) = conn.try_clone() else {
                    return;
                };
                let mut reader = BufReader::new(read_half);
                let mut start = 0usize;
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                        break;
                    }
                    if let Some(v) = line.to_ascii_lowercase().strip_prefix("range: bytes=") {
                        start = v.trim().trim_end_matches('-').parse().unwrap_or(0);
                    }
                }
                if let Ok(mut log) = log.lock() {
                    log.push(start as u64);
                }
                let start = if honour_range { start } else { 0 };
                let part = &body[start..];
                let head = if start > 0 {
                    format!(
                        "HTTP/1.1 206 Partial Content\r\nContent-Length: {}\r\n\
                         Content-Range: bytes {}-{}/{}\r\nETag: \"v1\"\r\nConnection: close\r\n\r\n",
                        part.len(),
                        start,
                        body.len() - 1,
                        body.len()
                    )
                } else {
                    format!(
                        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nETag: \"v1\"\r\n\
                         Connection: close\r\n\r\n",
                        part.len()
                    )
                };
                let _ = conn.write_all(head.as_bytes());
                let n = match (i, drop_first_after) {
                    (0, Some(k)) => k.min(part.len()),
                    _ => part.len(),
                };
                // Dropping the connection after a cut-short body is the network drop.
                let _ = conn.write_all(&part[..n]);
            }
        });
        RangeServer { url, starts }
    }
}
