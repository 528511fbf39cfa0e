//! Idle, slow and too many connections: none of them may starve the devices' polls.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use crate::harness::*;

/// The controller's `host:port`.
fn addr(c: &Controller) -> String {
    c.url.trim_start_matches("http://").to_owned()
}

/// Waits up to `within` for the server to close `s`; returns how long it took.
fn closed_within(s: &mut TcpStream, within: Duration) -> Option<Duration> {
    let t = Instant::now();
    s.set_read_timeout(Some(within)).unwrap();
    let mut b = [0u8; 256];
    loop {
        match s.read(&mut b) {
            Ok(0) => return Some(t.elapsed()),
            // A 408 or 400 answer before the close is fine.
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return Some(t.elapsed()),
            Err(_) => return None,
        }
    }
}

/// The 99th percentile of `n` polls, one new connection each.
fn poll_p99(c: &Controller, d: &Dev, n: usize) -> Duration {
    let mut times: Vec<Duration> = (0..n)
        .map(|_| {
            let t = Instant::now();
            poll(c, d, None);
            t.elapsed()
        })
        .collect();
    times.sort();
    times[(n * 99 / 100).min(n - 1)]
}

#[test]
fn idle_sockets_under_ulimit_1024_neither_starve_polls_nor_stay_open() {
    let f = Fixture::new();
    let (c, token) = f.started(Controller::start_with_nofile(&f.data(), &[], 1024));
    let t = group(&c, &token, "test");
    let dev = enroll(&c, &t, "gw-1", "acme-gw");
    let quiet = poll_p99(&c, &dev, 100);

    // 2,000 unauthenticated sockets that never send a byte: more than the soft
    // limit the controller was started with, which it raises.
    let idle: Vec<TcpStream> = (0..2000)
        .map(|i| TcpStream::connect(addr(&c)).unwrap_or_else(|e| panic!("socket {i}: {e}")))
        .collect();
    let busy = poll_p99(&c, &dev, 200);
    let log = std::fs::read_to_string(&c.log).unwrap();
    assert!(
        busy <= Duration::from_millis(10).max(quiet * 3),
        "poll p99 {busy:?} beside 2,000 idle sockets (alone: {quiet:?})"
    );
    println!("poll p99: {quiet:?} alone, {busy:?} beside 2,000 idle sockets");
    let limit: u64 = log
        .split("open-file limit ")
        .nth(1)
        .and_then(|s| s.split(')').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no open-file limit in the log:\n{log}"));
    assert!(limit > 1024, "the soft limit was not raised: {limit}");

    // An idle socket is closed after the first-request timeout (10 s), and so is
    // one that stops halfway through its headers.
    let mut slow = TcpStream::connect(addr(&c)).unwrap();
    slow.write_all(b"POST /api/v1/device/poll HTTP/1.1\r\nHost: x\r\n")
        .unwrap();
    let mut first = idle.into_iter().next().unwrap();
    for (what, s) in [("idle", &mut first), ("slow headers", &mut slow)] {
        let took = closed_within(s, Duration::from_secs(40))
            .unwrap_or_else(|| panic!("{what}: still open after 40 s"));
        assert!(
            took <= Duration::from_secs(30),
            "{what}: closed after {took:?}"
        );
    }
}

#[test]
fn past_the_connection_cap_new_sockets_are_closed_and_logged() {
    let f = Fixture::new();
    let (c, token) = f.start(&["--max-connections", "40"]);
    let t = group(&c, &token, "test");
    let _dev = enroll(&c, &t, "gw-1", "acme-gw");
    let held: Vec<TcpStream> = (0..40)
        .map(|_| TcpStream::connect(addr(&c)).unwrap())
        .collect();
    // Accepted by the kernel, then closed at once by the controller.
    let mut extra = TcpStream::connect(addr(&c)).unwrap();
    let took = closed_within(&mut extra, Duration::from_secs(5))
        .expect("a connection past the cap stayed open");
    assert!(took < Duration::from_secs(5));
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let log = std::fs::read_to_string(&c.log).unwrap();
        if log.contains("40 connections open, the most allowed") {
            break;
        }
        assert!(Instant::now() < deadline, "the cap was not logged:\n{log}");
        std::thread::sleep(Duration::from_millis(50));
    }
    // Once some close, new ones are served again.
    drop(held);
    let deadline = Instant::now() + Duration::from_secs(10);
    let served = || {
        let mut s = TcpStream::connect(addr(&c)).ok()?;
        let req = format!(
            "GET /api/v1/groups HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n"
        );
        s.write_all(req.as_bytes()).ok()?;
        let mut head = [0u8; 12];
        s.read_exact(&mut head).ok()?;
        Some(head.starts_with(b"HTTP/1.1 200"))
    };
    while served() != Some(true) {
        assert!(
            Instant::now() < deadline,
            "no connection served after the held ones closed"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}
