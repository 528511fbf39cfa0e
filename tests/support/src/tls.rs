//! Certificates for the https tests: self-signed ones for loopback, and a private CA with a server certificate it signed.

use std::fs;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, CertifiedKey, DnType, IsCa, KeyPair,
};

/// A self-signed certificate (not a CA) for `localhost` and `127.0.0.1`, with its key.
pub fn self_signed() -> CertifiedKey<KeyPair> {
    rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()])
        .expect("self-signed certificate")
}

/// PEM files of a certificate and its key, and the certificate (for a client's roots).
pub struct PemFiles {
    /// The certificate, PEM.
    pub cert: PathBuf,
    /// Its private key, PEM.
    pub key: PathBuf,
    /// The certificate and key themselves.
    pub certified: CertifiedKey<KeyPair>,
}

/// [`self_signed`], written as `dir/NAME.pem` and its key as `dir/NAME.key`.
pub fn self_signed_files(dir: &Path, name: &str) -> PemFiles {
    let certified = self_signed();
    let (cert, key) = (
        dir.join(format!("{name}.pem")),
        dir.join(format!("{name}.key")),
    );
    fs::write(&cert, certified.cert.pem()).expect("write certificate");
    fs::write(&key, certified.signing_key.serialize_pem()).expect("write key");
    PemFiles {
        cert,
        key,
        certified,
    }
}

/// A private CA and a server certificate for `localhost` it signed.
pub struct PrivateCa {
    /// The CA's certificate, PEM (what a client is configured to trust).
    pub ca_pem: String,
    /// The server's certificate, DER.
    pub leaf_der: Vec<u8>,
    /// The server's private key, PKCS#8 DER.
    pub leaf_key_der: Vec<u8>,
}

/// Makes a [`PrivateCa`].
pub fn private_ca() -> PrivateCa {
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(DnType::CommonName, "molt test CA");
    let ca = CertifiedIssuer::self_signed(params, KeyPair::generate().expect("CA key"))
        .expect("CA certificate");
    let key = KeyPair::generate().expect("server key");
    let leaf = CertificateParams::new(vec!["localhost".to_string()])
        .expect("server params")
        .signed_by(&key, &ca)
        .expect("server certificate");
    PrivateCa {
        ca_pem: ca.pem(),
        leaf_der: leaf.der().to_vec(),
        leaf_key_der: key.serialize_der(),
    }
}

/// A self-signed certificate for `127.0.0.1` marked as a CA, and its key: what
/// `openssl req -x509` makes by default, which TLS refuses as a server's own.
pub fn self_signed_ca() -> (rcgen::Certificate, KeyPair) {
    let mut params = CertificateParams::new(vec!["127.0.0.1".to_owned()]).expect("params");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let key = KeyPair::generate().expect("key");
    let cert = params.self_signed(&key).expect("certificate");
    (cert, key)
}
