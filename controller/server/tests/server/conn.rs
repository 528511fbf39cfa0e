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
    let dev = one_test_device(&c, &token, "gw-1");
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
    let _dev = one_test_device(&c, &token, "gw-1");
    let mut held: Vec<TcpStream> = (0..40)
        .map(|_| TcpStream::connect(addr(&c)).unwrap())
        .collect();
    // Accepted by the kernel, then closed at once by the controller. The keep-alive
    // connections the set-up above left in its HTTP client's pool count against the
    // cap until the server sees them end, which under load can be just after the 40
    // were opened: a socket that then gets the freed place is rightly served (it
    // stays open). Hold it and try again; only a few such connections exist, so a
    // cap that does not close anything still fails here.
    let mut took = None;
    for _ in 0..4 {
        let mut extra = TcpStream::connect(addr(&c)).unwrap();
        match closed_within(&mut extra, Duration::from_secs(3)) {
            Some(t) => {
                took = Some(t);
                break;
            }
            None => held.push(extra),
        }
    }
    let took = took.expect("every connection past the cap stayed open");
    assert!(took < Duration::from_secs(3));
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

/// One answer read off a raw socket: status, headers (names lower-cased), body.
struct Raw {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Raw {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The `error` of a JSON error answer with `status`, checking all of it:
    /// status, `Content-Type`, a body that is `{"error": "…"}` with a sentence in it.
    fn error(&self, what: &str, status: u16) -> String {
        let body = String::from_utf8_lossy(&self.body);
        assert_eq!(self.status, status, "{what}: {body}");
        assert!(
            self.header("content-type")
                .is_some_and(|t| t.starts_with("application/json")),
            "{what}: HTTP {} answered with Content-Type {:?} and body {body:?}",
            self.status,
            self.header("content-type")
        );
        let v: serde_json::Value = serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("{what}: the body is not JSON ({e}): {body:?}"));
        let error = v["error"]
            .as_str()
            .unwrap_or_else(|| panic!("{what}: no string `error` in {v}"));
        assert!(error.len() > 10, "{what}: {error:?} says too little");
        error.to_owned()
    }
}

/// Reads one answer from `r`; `bodyless` for the answer to a HEAD request.
fn read_answer(r: &mut impl std::io::BufRead, bodyless: bool) -> std::io::Result<Raw> {
    let mut line = String::new();
    let bad = |m: String| std::io::Error::new(std::io::ErrorKind::InvalidData, m);
    if r.read_line(&mut line)? == 0 {
        return Err(std::io::ErrorKind::UnexpectedEof.into());
    }
    let status = line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| bad(format!("status line {line:?}")))?;
    let mut headers = Vec::new();
    loop {
        line.clear();
        r.read_line(&mut line)?;
        let l = line.trim_end_matches(['\r', '\n']);
        if l.is_empty() {
            break;
        }
        let (n, v) = l
            .split_once(':')
            .ok_or_else(|| bad(format!("header line {l:?}")))?;
        headers.push((n.to_ascii_lowercase(), v.trim().to_owned()));
    }
    let len = headers
        .iter()
        .find(|(n, _)| n == "content-length")
        .map(|(_, v)| v.parse::<usize>().map_err(|e| bad(e.to_string())))
        .transpose()?;
    let mut body = Vec::new();
    match len {
        _ if bodyless => {}
        Some(n) => {
            body.resize(n, 0);
            r.read_exact(&mut body)?;
        }
        None => {
            r.read_to_end(&mut body)?;
        }
    }
    Ok(Raw {
        status,
        headers,
        body,
    })
}

/// Sends `req` as it is on a new connection and reads one answer per entry of
/// `bodyless` (true: the answer to a HEAD). The request is written from a second
/// thread, so an answer the server gives before reading all of it is read
/// meanwhile; a connection reset before every answer is read (the server closed
/// with some of the request unread) is tried again, up to 5 times.
fn exchange(c: &Controller, req: &[u8], bodyless: &[bool]) -> Vec<Raw> {
    let mut last = None;
    for _ in 0..5 {
        let s = TcpStream::connect(addr(c)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let mut w = s.try_clone().unwrap();
        let req = req.to_vec();
        let writer = std::thread::spawn(move || {
            let _ = w.write_all(&req);
        });
        let mut r = std::io::BufReader::new(s);
        let answers: std::io::Result<Vec<Raw>> =
            bodyless.iter().map(|&b| read_answer(&mut r, b)).collect();
        let _ = writer.join();
        match answers {
            Ok(a) => return a,
            Err(e) if e.kind() == std::io::ErrorKind::InvalidData => panic!("{e}"),
            Err(e) => last = Some(e),
        }
    }
    panic!("5 tries, no complete answer: {last:?}")
}

fn one(c: &Controller, req: &[u8]) -> Raw {
    exchange(c, req, &[false]).pop().unwrap()
}

#[test]
fn hypers_own_answers_to_unparseable_requests_are_json_errors_too() {
    let f = Fixture::new();
    let (c, token) = f.start(&[]);
    let auth = format!("Authorization: Bearer {token}\r\n");

    let long = format!(
        "GET /api/v1/groups?q={} HTTP/1.1\r\nHost: x\r\n\r\n",
        "a".repeat(70_000)
    );
    let e = one(&c, long.as_bytes()).error("a 70,000-byte URI", 414);
    assert!(e.contains("URI") && e.contains("65534 bytes"), "{e}");

    let nul = b"GET /api/v1/groups HTTP/1.1\r\nHost: x\r\nX-Note: a\0b\r\n\r\n";
    let e = one(&c, nul).error("a NUL in a header", 400);
    assert!(e.contains("header"), "{e}");
    for (what, req) in [
        (
            "an invalid Content-Length",
            &b"POST /api/v1/groups HTTP/1.1\r\nHost: x\r\nContent-Length: 12abc\r\n\r\n"[..],
        ),
        (
            "an unknown HTTP version",
            b"GET /api/v1/groups HTTP/1.7\r\nHost: x\r\n\r\n",
        ),
        (
            "a control character in the method",
            b"G\x01T / HTTP/1.1\r\n\r\n",
        ),
    ] {
        let e = one(&c, req).error(what, 400);
        assert!(e.starts_with("malformed request"), "{what}: {e}");
    }

    let many: String = (0..101).map(|i| format!("X-H{i}: {i}\r\n")).collect();
    let many = format!("GET /api/v1/groups HTTP/1.1\r\nHost: x\r\n{many}\r\n");
    let e = one(&c, many.as_bytes()).error("101 header fields", 431);
    assert!(e.contains("head"), "{e}");
    let huge = format!(
        "GET /api/v1/groups HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "b".repeat(4 << 20)
    );
    // hyper refuses a head once its read buffer (about 400 KiB) is full and the
    // head still incomplete; one read may take it past that, so 4 MiB for sure.
    let e = one(&c, huge.as_bytes()).error("a 4 MiB header", 431);
    assert!(e.contains("head"), "{e}");

    // On a keep-alive connection, after answers with and without a body (HEAD),
    // and with the malformed request pipelined behind them.
    let pipelined = format!(
        "GET /api/v1/groups HTTP/1.1\r\nHost: x\r\n{auth}\r\n\
         HEAD /api/v1/groups HTTP/1.1\r\nHost: x\r\n{auth}\r\n\
         GET /api/v1/groups HTTP/1.1\r\nHost: x\r\nX-Note: a\0b\r\n\r\n"
    );
    let a = exchange(&c, pipelined.as_bytes(), &[false, true, false]);
    assert_eq!(a[0].status, 200);
    assert_eq!(a[0].body, b"[]");
    assert_eq!(a[1].status, 200);
    assert_eq!(a[1].header("content-length"), Some("2"));
    a[2].error("a NUL in a header after two answers", 400);
    // Answers that only look like hyper's pass untouched: a 400 of ours keeps
    // its own body.
    let bad_json = format!(
        "POST /api/v1/groups HTTP/1.1\r\nHost: x\r\n{auth}Content-Length: 9\r\n\r\n{{\"name\": "
    );
    let e = one(&c, bad_json.as_bytes()).error("invalid JSON", 400);
    assert!(e.starts_with("invalid JSON body"), "{e}");
}

#[test]
fn errors_below_the_handlers_are_json_errors_naming_the_problem() {
    let f = Fixture::new();
    let (c, token) = f.start(&["--max-bundle-bytes", "4096"]);
    let auth = format!("Authorization: Bearer {token}\r\n");
    let req = |head: &str, body: &[u8]| {
        let mut r = format!(
            "{head}\r\nHost: x\r\n{auth}Content-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        )
        .into_bytes();
        r.extend_from_slice(body);
        r
    };

    let e = one(&c, &req("GET /api/v1/nowhere HTTP/1.1", b"")).error("an unknown route", 404);
    assert_eq!(e, "no route GET /api/v1/nowhere");
    let a = one(&c, &req("DELETE /api/v1/groups HTTP/1.1", b""));
    let e = a.error("a wrong method", 405);
    assert!(
        e.contains("DELETE") && e.contains("/api/v1/groups") && e.contains("GET, HEAD, POST"),
        "{e}"
    );
    assert!(a.header("allow").is_some_and(|v| v.contains("POST")));
    let e = one(&c, &req("PUT /login HTTP/1.1", b"")).error("a wrong method on a page", 405);
    assert!(e.contains("PUT"), "{e}");
    let e = one(&c, &req("POST /api/v1/groups HTTP/1.1", b"[1, 2")).error("malformed JSON", 400);
    assert!(e.starts_with("invalid JSON body"), "{e}");
    let e = one(&c, &req("GET /api/v1/deployments/seven HTTP/1.1", b""))
        .error("a bad path parameter", 400);
    assert!(e.contains("seven"), "{e}");
    let e = one(&c, &req("GET /api/v1/deployments?limit=many HTTP/1.1", b""))
        .error("a bad query parameter", 400);
    assert!(e.contains("limit"), "{e}");

    // Over the limits: a JSON body, an upload, a build's sources.
    let big = format!("{{\"name\": \"{}\"}}", "x".repeat(1100 * 1024));
    let e = one(&c, &req("POST /api/v1/groups HTTP/1.1", big.as_bytes()))
        .error("a JSON body over 1 MiB", 413);
    assert!(e.contains("1024 KiB"), "{e}");
    let e = one(&c, &req("POST /api/v1/updates HTTP/1.1", &[7u8; 64 * 1024]))
        .error("an upload over --max-bundle-bytes", 413);
    assert!(e.contains("4096 bytes"), "{e}");

    // The build takes multipart/form-data only.
    for (what, ct) in [
        ("no Content-Type", ""),
        ("a JSON Content-Type", "Content-Type: application/json\r\n"),
    ] {
        let r = format!(
            "POST /api/v1/updates/build HTTP/1.1\r\nHost: x\r\n{auth}{ct}Content-Length: 2\r\nConnection: close\r\n\r\n{{}}"
        );
        let e = one(&c, r.as_bytes()).error(what, 400);
        assert!(e.contains("multipart/form-data"), "{what}: {e}");
    }
    let boundary = "XyZ";
    let form = format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"recipe\"\r\n\r\n{}\r\n--{boundary}--\r\n",
        "#".repeat(64 * 1024)
    );
    let r = format!(
        "POST /api/v1/updates/build HTTP/1.1\r\nHost: x\r\n{auth}Content-Type: multipart/form-data; boundary={boundary}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{form}",
        form.len()
    );
    one(&c, r.as_bytes()).error("a build's sources over the limit", 413);

    // No credential.
    let e = one(
        &c,
        b"GET /api/v1/groups HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .error("no credential", 401);
    assert!(
        e.contains("credential") || e.contains("Authorization"),
        "{e}"
    );
}
