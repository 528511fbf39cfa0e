//! HTTPS: `--tls-cert` and `--tls-key` with a self-signed certificate made in the test.

use std::fs;
use std::io::Read;
use std::sync::Arc;

use crate::harness::*;

#[test]
fn https_serves_the_api() {
    let f = Fixture::new();
    let cert =
        rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()]).unwrap();
    let (cert_pem, key_pem) = (f.path("cert.pem"), f.path("key.pem"));
    fs::write(&cert_pem, cert.cert.pem()).unwrap();
    fs::write(&key_pem, cert.signing_key.serialize_pem()).unwrap();
    let (c, token) = f.start(&[
        "--tls-cert",
        cert_pem.to_str().unwrap(),
        "--tls-key",
        key_pem.to_str().unwrap(),
    ]);
    assert!(c.url.starts_with("https://127.0.0.1:"), "{}", c.url);

    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert.cert.der().clone()).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let agent = ureq::AgentBuilder::new()
        .tls_config(Arc::new(config))
        .build();
    let res = agent
        .get(&c.api("/groups"))
        .set("Authorization", &format!("Bearer {token}"))
        .call()
        .unwrap();
    assert_eq!(res.status(), 200);
    let mut body = String::new();
    res.into_reader().read_to_string(&mut body).unwrap();
    assert_eq!(body, "[]");

    // Plain HTTP to the TLS port gets no answer.
    let plain = c.url.replace("https://", "http://");
    assert!(ureq::get(&format!("{plain}/api/v1/groups")).call().is_err());
}
