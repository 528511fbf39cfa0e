//! HTTPS: `--tls-cert` and `--tls-key` with a self-signed certificate made in the test.

use std::io::{Read, Write};

use crate::harness::*;

#[test]
fn https_serves_the_api() {
    let f = Fixture::new();
    let (c, token, config) = f.start_https();
    assert!(c.url.starts_with("https://127.0.0.1:"), "{}", c.url);
    let agent = ureq::AgentBuilder::new().tls_config(config.clone()).build();
    let res = agent
        .get(&c.api("/groups"))
        .set("Authorization", &format!("Bearer {token}"))
        .call()
        .unwrap();
    assert_eq!(res.status(), 200);
    let mut body = String::new();
    res.into_reader().read_to_string(&mut body).unwrap();
    assert_eq!(body, "[]");

    // hyper's own answer to a request it cannot parse has the JSON body over TLS too.
    let tcp = std::net::TcpStream::connect(c.url.trim_start_matches("https://")).unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let conn = rustls::ClientConnection::new(config, name).unwrap();
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    tls.write_all(b"GET /api/v1/groups HTTP/1.1\r\nHost: x\r\nX-Note: a\0b\r\n\r\n")
        .unwrap();
    let mut answer = Vec::new();
    // The server closes without a TLS close_notify; what came before it counts.
    let _ = tls.read_to_end(&mut answer);
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 400 "), "{answer}");
    assert!(
        answer.contains("\r\ncontent-type: application/json\r\n")
            && answer.contains("{\"error\":\"malformed request"),
        "{answer}"
    );

    // Plain HTTP to the TLS port gets no answer.
    let plain = c.url.replace("https://", "http://");
    assert!(ureq::get(&format!("{plain}/api/v1/groups")).call().is_err());
}
