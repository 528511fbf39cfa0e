//! TLS for `molt`: the public web PKI roots plus the operator's `--ca` file, and telling a refused controller certificate apart from other network trouble.
//!
//! The same set-up as the agent's `controller_ca` (agent-linux/src/client.rs): a
//! private CA or a self-signed controller certificate is trusted *in addition to* the
//! public roots, never instead of them. The two crates share no library crate, and a
//! new one for thirty lines would cost more than it saves.

use std::error::Error as StdError;
use std::fs;
use std::io;
use std::path::Path;
use std::sync::Arc;

use anyhow::{anyhow, bail, Context, Result};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;

/// The TLS client configuration for every https request: the web PKI roots, plus the
/// certificates in the PEM file `ca` when one is given.
///
/// A CA file that is missing, unreadable, not PEM or holds no certificate is an error
/// naming the file, whatever the controller's scheme: a typo in `--ca` shows up at once
/// rather than as a certificate refusal later.
pub fn tls_config(ca: Option<&Path>) -> Result<Arc<rustls::ClientConfig>> {
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(path) = ca {
        for cert in read_ca(path)? {
            roots.add(cert).map_err(|e| {
                anyhow!(
                    "CA file {}: a certificate in it is unusable: {e}",
                    path.display()
                )
            })?;
        }
    }
    // The provider is named, not taken from the process default: the workspace enables
    // more than one, and rustls refuses to guess between them.
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| anyhow!("TLS set-up: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// Every `BEGIN CERTIFICATE` block of the PEM file at `path`; at least one.
fn read_ca(path: &Path) -> Result<Vec<CertificateDer<'static>>> {
    let pem = fs::read(path).with_context(|| format!("cannot read CA file {}", path.display()))?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| anyhow!("CA file {} is not a usable PEM file: {e}", path.display()))?;
    if certs.is_empty() {
        bail!(
            "CA file {} holds no `BEGIN CERTIFICATE` block",
            path.display()
        );
    }
    Ok(certs)
}

/// Why the controller's certificate was refused, sorted by what the operator can do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CertRefusal {
    /// It chains to nothing trusted (`UnknownIssuer`, `BadSignature`): `--ca` is the fix.
    Untrusted(String),
    /// It is itself a CA certificate (basicConstraints `CA:TRUE`, as `openssl req -x509`
    /// makes by default), which TLS clients refuse as a server's own certificate.
    CaAsServer,
    /// Anything else (expired, not for this host name…), as rustls words it.
    Other(String),
}

/// The TLS refusal of the controller's certificate somewhere in `e`'s chain; `None` for
/// any other failure.
///
/// ureq hands the TLS error over inside an `io::Error`, whose `source()` skips the
/// error it wraps, so each link's payload is looked at too.
pub fn certificate_refusal(e: &(dyn StdError + 'static)) -> Option<CertRefusal> {
    use rustls::CertificateError as C;
    let mut link = Some(e);
    while let Some(err) = link {
        let tls = err.downcast_ref::<rustls::Error>().or_else(|| {
            err.downcast_ref::<io::Error>()
                .and_then(io::Error::get_ref)
                .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        });
        match tls {
            Some(t @ rustls::Error::InvalidCertificate(C::UnknownIssuer | C::BadSignature)) => {
                return Some(CertRefusal::Untrusted(t.to_string()));
            }
            // webpki's error behind rustls's `Other`: only its name can be looked at
            // without depending on webpki itself.
            Some(rustls::Error::InvalidCertificate(C::Other(o)))
                if o.0.to_string().contains("CaUsedAsEndEntity") =>
            {
                return Some(CertRefusal::CaAsServer);
            }
            Some(
                t @ (rustls::Error::InvalidCertificate(_) | rustls::Error::NoCertificatesPresented),
            ) => return Some(CertRefusal::Other(t.to_string())),
            _ => {}
        }
        link = err.source();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    use molt_test_support::tls::self_signed;

    #[test]
    fn a_ca_file_adds_to_the_public_roots() {
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca.pem");
        // Two certificates in one file: a CA bundle.
        fs::write(
            &ca,
            format!("{}{}", self_signed().cert.pem(), self_signed().cert.pem()),
        )
        .unwrap();
        assert_eq!(read_ca(&ca).unwrap().len(), 2);
        tls_config(Some(&ca)).unwrap();
        tls_config(None).unwrap();
    }

    #[test]
    fn a_bad_ca_file_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.pem");
        let e = format!("{:#}", tls_config(Some(&missing)).unwrap_err());
        assert!(
            e.starts_with(&format!("cannot read CA file {}: ", missing.display())),
            "{e}"
        );
        let empty = dir.path().join("empty.pem");
        fs::write(&empty, "").unwrap();
        let e = format!("{:#}", tls_config(Some(&empty)).unwrap_err());
        assert_eq!(
            e,
            format!(
                "CA file {} holds no `BEGIN CERTIFICATE` block",
                empty.display()
            )
        );
        let key = dir.path().join("key.pem");
        fs::write(&key, self_signed().signing_key.serialize_pem()).unwrap();
        let e = format!("{:#}", tls_config(Some(&key)).unwrap_err());
        assert!(e.contains(&key.display().to_string()), "{e}");
        let garbage = dir.path().join("garbage.pem");
        fs::write(
            &garbage,
            "-----BEGIN CERTIFICATE-----\nnot base64!\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        let e = format!("{:#}", tls_config(Some(&garbage)).unwrap_err());
        assert!(e.contains(&garbage.display().to_string()), "{e}");
    }

    #[test]
    fn a_certificate_refusal_is_found_inside_io_errors() {
        let wrap = |e: rustls::Error| io::Error::new(io::ErrorKind::InvalidData, e);
        let unknown = wrap(rustls::Error::InvalidCertificate(
            rustls::CertificateError::UnknownIssuer,
        ));
        assert_eq!(
            certificate_refusal(&unknown),
            Some(CertRefusal::Untrusted(
                "invalid peer certificate: UnknownIssuer".into()
            ))
        );
        let expired = wrap(rustls::Error::InvalidCertificate(
            rustls::CertificateError::Expired,
        ));
        assert!(matches!(
            certificate_refusal(&expired),
            Some(CertRefusal::Other(_))
        ));
        let other = wrap(rustls::Error::DecryptError);
        assert_eq!(certificate_refusal(&other), None);
        let refused = io::Error::from(io::ErrorKind::ConnectionRefused);
        assert_eq!(certificate_refusal(&refused), None);
    }
}
