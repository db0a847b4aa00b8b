//! TLS for the PostgreSQL-wire transport, with libpq's meanings of
//! `sslmode`.
//!
//! Owns: reading `sslmode` and `sslrootcert` from the URL's query
//! (tokio-postgres knows neither `verify-ca`, `verify-full` nor
//! `sslrootcert`, so they are taken out before it parses the rest), the
//! default mode, and the rustls configuration of each mode. Must not:
//! connect, or show the URL (it may hold a password).
//!
//! | `sslmode` | TLS | the server's certificate |
//! |---|---|---|
//! | `disable` | never | - |
//! | `prefer` (libpq's default) | when the server offers it | not checked; with an `sslrootcert` file, its chain is |
//! | `require` (the default for a Redshift host) | always | not checked; with an `sslrootcert` file, as `verify-ca` |
//! | `verify-ca` | always | chains to the `sslrootcert` file's CAs (which it needs) |
//! | `verify-full` | always | chains to a trusted root and names the host |
//!
//! The trusted roots are the PEM file `sslrootcert` names (for Redshift,
//! Amazon's CA bundle), or for `verify-full` with `sslrootcert=system` or
//! none given, the public web PKI's (Redshift's certificates chain to
//! Amazon's public roots). As in libpq, `verify-ca` without a file and
//! `sslrootcert=system` with any mode but `verify-full` are refused: against
//! the public roots a certificate for any name would pass. `prefer` and
//! `require` without a file encrypt but do not authenticate the server:
//! [`weakness`] says so, for `validate` and the log.

use std::path::PathBuf;
use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, SignatureScheme};

/// libpq's `sslmode` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslMode {
    /// No TLS.
    Disable,
    /// TLS when the server offers it, unchecked.
    Prefer,
    /// TLS, unchecked (checked as `VerifyCa` with `sslrootcert`).
    Require,
    /// TLS, the chain checked.
    VerifyCa,
    /// TLS, the chain and the host name checked.
    VerifyFull,
}

/// Where trusted roots come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RootCert {
    /// Not given.
    Unset,
    /// `sslrootcert=system`: the public web PKI's roots.
    System,
    /// A PEM file of CA certificates.
    File(PathBuf),
}

/// A URL taken apart: what tokio-postgres parses, and the TLS settings.
#[derive(Debug, Clone)]
pub struct PgUrl {
    /// Host, port, user, database, password and the other parameters.
    pub config: tokio_postgres::Config,
    /// The mode in force (the URL's, or the default).
    pub mode: SslMode,
    /// The trusted roots.
    pub root_cert: RootCert,
}

/// Why a URL or its TLS settings cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TlsError {
    /// The URL does not parse (the reason never holds the URL).
    #[error("{0}")]
    Url(String),
    /// The `sslrootcert` file cannot be read, or holds no certificate.
    #[error("sslrootcert {path}: {why}")]
    RootCert {
        /// The file.
        path: String,
        /// What is wrong.
        why: String,
    },
    /// rustls refused the configuration.
    #[error("TLS: {0}")]
    Tls(String),
}

/// Whether `host` is an Amazon Redshift endpoint (provisioned or
/// serverless).
fn is_redshift_host(host: &str) -> bool {
    let h = host.to_ascii_lowercase();
    [
        ".redshift.amazonaws.com",
        ".redshift-serverless.amazonaws.com",
        ".redshift.amazonaws.com.cn",
        ".redshift-serverless.amazonaws.com.cn",
    ]
    .iter()
    .any(|s| h.ends_with(s))
}

/// `%XX` escapes decoded (a query's key or value), anything else as it is.
pub fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        if bytes[i] == b'%'
            && let (Some(a), Some(b)) = (bytes.get(i + 1).copied().and_then(hex), bytes.get(i + 2).copied().and_then(hex))
        {
            out.push((a * 16 + b) as u8);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Where the query of `url` starts, if it has one: the first `?` after the
/// user info, which, as tokio-postgres reads it, ends at the first `@`
/// (a password may hold `?` or `/`).
fn query_start(url: &str) -> Option<usize> {
    let scheme_end = url.find("://").map_or(0, |i| i + 3);
    let host_start = url[scheme_end..].find('@').map_or(scheme_end, |i| scheme_end + i + 1);
    url[host_start..].find('?').map(|i| host_start + i)
}

/// Takes `url` apart. `sslmode` and `sslrootcert` come out of the query;
/// without `sslmode`, a Redshift host gets `require` and any other host
/// libpq's `prefer`.
pub fn parse(url: &str) -> Result<PgUrl, TlsError> {
    let (base, query) = match query_start(url) {
        Some(q) => (&url[..q], &url[q + 1..]),
        None => (url, ""),
    };
    let (mut mode, mut root_cert) = (None, RootCert::Unset);
    let mut rest = Vec::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        match k {
            "sslmode" => {
                mode = Some(match percent_decode(v).as_str() {
                    "disable" => SslMode::Disable,
                    "prefer" => SslMode::Prefer,
                    "require" => SslMode::Require,
                    "verify-ca" => SslMode::VerifyCa,
                    "verify-full" => SslMode::VerifyFull,
                    other => {
                        return Err(TlsError::Url(format!(
                            "sslmode must be disable, prefer, require, verify-ca or verify-full, got {other:?}"
                        )));
                    }
                });
            }
            "sslrootcert" => {
                let v = percent_decode(v);
                root_cert = if v == "system" { RootCert::System } else { RootCert::File(PathBuf::from(v)) };
            }
            _ => rest.push(pair),
        }
    }
    let stripped = if rest.is_empty() { base.to_owned() } else { format!("{base}?{}", rest.join("&")) };
    let mut config: tokio_postgres::Config =
        stripped.parse().map_err(|e: tokio_postgres::Error| TlsError::Url(format!("not a PostgreSQL URL: {e}")))?;
    let redshift = config.get_hosts().iter().any(|h| matches!(h, tokio_postgres::config::Host::Tcp(h) if is_redshift_host(h)));
    let mode = mode.unwrap_or(if redshift { SslMode::Require } else { SslMode::Prefer });
    config.ssl_mode(match mode {
        SslMode::Disable => tokio_postgres::config::SslMode::Disable,
        SslMode::Prefer => tokio_postgres::config::SslMode::Prefer,
        SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => tokio_postgres::config::SslMode::Require,
    });
    Ok(PgUrl { config, mode, root_cert })
}

/// Whether `config`'s hosts are all this machine (a weak mode harms no one there).
fn loopback_only(config: &tokio_postgres::Config) -> bool {
    config.get_hosts().iter().all(|h| match h {
        tokio_postgres::config::Host::Tcp(h) => {
            h == "localhost" || h.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
        }
        _ => true,
    })
}

/// Why `url`'s TLS does not authenticate the server, when the server is not
/// on this machine: `prefer` or `require` without an `sslrootcert` file.
/// A warning, not a problem: libpq allows it.
pub fn weakness(url: &str) -> Option<String> {
    let u = parse(url).ok()?;
    let unchecked = matches!(u.mode, SslMode::Prefer | SslMode::Require) && u.root_cert == RootCert::Unset;
    (unchecked && !loopback_only(&u.config)).then(|| {
        let mode = if u.mode == SslMode::Prefer { "prefer (the default for a host that is not Redshift's)" } else { "require" };
        format!(
            "sslmode={mode} encrypts but does not check the server's certificate: anyone on the network path can \
             pose as the server and read the password. Use sslmode=verify-full (Redshift's certificates chain to \
             public roots), or give sslrootcert=<Amazon's Redshift CA bundle>"
        )
    })
}

/// What is wrong with `url`'s TLS settings, for `validate`: the mode, and
/// a root certificate file that cannot be read. `None` when it is fine.
pub fn problem(url: &str) -> Option<String> {
    match parse(url).and_then(|u| client_config(u.mode, &u.root_cert).map(|_| ())) {
        Ok(()) => None,
        Err(e) => Some(e.to_string()),
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// The trusted roots of `root_cert`.
fn roots(root_cert: &RootCert) -> Result<rustls::RootCertStore, TlsError> {
    match root_cert {
        RootCert::Unset | RootCert::System => Ok(rustls::RootCertStore { roots: webpki_roots::TLS_SERVER_ROOTS.to_vec() }),
        RootCert::File(path) => {
            let shown = path.display().to_string();
            let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
                .map_err(|e| TlsError::RootCert { path: shown.clone(), why: e.to_string() })?
                .collect::<Result<_, _>>()
                .map_err(|e| TlsError::RootCert { path: shown.clone(), why: e.to_string() })?;
            let mut store = rustls::RootCertStore::empty();
            let (added, _) = store.add_parsable_certificates(certs);
            if added == 0 {
                return Err(TlsError::RootCert { path: shown, why: "holds no CA certificate".into() });
            }
            Ok(store)
        }
    }
}

/// The rustls configuration for `mode` (none for `disable`).
pub fn client_config(mode: SslMode, root_cert: &RootCert) -> Result<Option<rustls::ClientConfig>, TlsError> {
    let provider = provider();
    let verifier: Arc<dyn ServerCertVerifier> = match (mode, root_cert) {
        (SslMode::Disable, _) => return Ok(None),
        (SslMode::Prefer | SslMode::Require, RootCert::Unset) => Arc::new(Unchecked(Arc::clone(&provider))),
        (SslMode::VerifyCa, RootCert::Unset | RootCert::System) => {
            return Err(TlsError::Url(
                "sslmode=verify-ca needs sslrootcert=<a file of CA certificates>: against the public roots a \
                 certificate for any name would pass (use verify-full for those)"
                    .into(),
            ));
        }
        (SslMode::Prefer | SslMode::Require, RootCert::System) => {
            return Err(TlsError::Url("sslrootcert=system needs sslmode=verify-full (as in libpq)".into()));
        }
        (SslMode::Prefer | SslMode::Require | SslMode::VerifyCa, RootCert::File(_)) => {
            Arc::new(ChainOnly(webpki(root_cert, &provider)?))
        }
        (SslMode::VerifyFull, _) => webpki(root_cert, &provider)?,
    };
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Tls(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    Ok(Some(config))
}

fn webpki(root_cert: &RootCert, provider: &Arc<CryptoProvider>) -> Result<Arc<WebPkiServerVerifier>, TlsError> {
    WebPkiServerVerifier::builder_with_provider(Arc::new(roots(root_cert)?), Arc::clone(provider))
        .build()
        .map_err(|e| TlsError::Tls(e.to_string()))
}

/// `prefer` and `require`: encrypted, the certificate not checked (libpq's
/// meaning); the handshake's signatures are still verified.
#[derive(Debug)]
struct Unchecked(Arc<CryptoProvider>);

impl ServerCertVerifier for Unchecked {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// `verify-ca`: the chain to a trusted root, validity and usage checked as
/// for `verify-full`; only a certificate that does not name the host is
/// let through.
#[derive(Debug)]
struct ChainOnly(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self.0.verify_server_cert(end_entity, intermediates, server_name, ocsp, now) {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sslmode_and_sslrootcert_come_out_of_the_url_and_the_rest_stays() {
        let u =
            parse("postgres://cafe:pw@db.example:5439/dev?sslmode=verify-full&application_name=cafe&sslrootcert=%2Fetc%2Fca.pem")
                .expect("parses");
        assert_eq!(u.mode, SslMode::VerifyFull);
        assert_eq!(u.root_cert, RootCert::File(PathBuf::from("/etc/ca.pem")));
        assert_eq!(u.config.get_application_name(), Some("cafe"));
        assert_eq!(u.config.get_dbname(), Some("dev"));
        assert_eq!(u.config.get_ssl_mode(), tokio_postgres::config::SslMode::Require);
        let e = parse("postgres://h/d?sslmode=allow-ish").expect_err("unknown mode");
        assert!(e.to_string().contains("sslmode must be"), "{e}");
        assert!(!e.to_string().contains("postgres://"), "the URL is not shown: {e}");
        assert_eq!(parse("postgres://h/d?sslrootcert=system").expect("parses").root_cert, RootCert::System);
    }

    #[test]
    fn a_password_with_a_question_mark_or_a_slash_keeps_the_mode() {
        let u = parse("postgres://u:p?ss/w@db.internal:5439/d?sslmode=verify-full&sslrootcert=system").expect("parses");
        assert_eq!(u.mode, SslMode::VerifyFull);
        assert_eq!(u.root_cert, RootCert::System);
        assert_eq!(u.config.get_password(), Some(&b"p?ss/w"[..]));
        assert_eq!(u.config.get_dbname(), Some("d"));
    }

    #[test]
    fn modes_that_would_trust_any_public_certificate_are_refused() {
        for url in [
            "postgres://h/d?sslmode=verify-ca",
            "postgres://h/d?sslmode=verify-ca&sslrootcert=system",
            "postgres://h/d?sslmode=require&sslrootcert=system",
            "postgres://h/d?sslmode=prefer&sslrootcert=system",
        ] {
            assert!(problem(url).is_some(), "{url} must be refused");
        }
        assert!(problem("postgres://h/d?sslmode=verify-full").is_none());
        assert!(problem("postgres://h/d?sslmode=verify-full&sslrootcert=system").is_none());
    }

    #[test]
    fn unchecked_tls_to_another_host_is_a_warning() {
        assert!(
            weakness("postgres://u@cafe.abc123.us-east-1.redshift.amazonaws.com:5439/dev").is_some_and(|w| w.contains("require"))
        );
        assert!(weakness("postgres://u@db.internal/dev").is_some_and(|w| w.contains("prefer")));
        assert!(weakness("postgres://u@db.internal/dev?sslmode=verify-full").is_none());
        assert!(weakness("postgres://u@127.0.0.1/dev").is_none(), "loopback");
        assert!(weakness("postgres://u@localhost/dev?sslmode=require").is_none(), "loopback");
    }

    #[test]
    fn a_redshift_host_defaults_to_require_and_any_other_to_prefer() {
        for (url, mode) in [
            ("postgres://u@cafe.abc123.us-east-1.redshift.amazonaws.com:5439/dev", SslMode::Require),
            ("postgres://u@wg.123456789012.us-east-1.redshift-serverless.amazonaws.com:5439/dev", SslMode::Require),
            ("postgres://u@127.0.0.1:5432/cafe", SslMode::Prefer),
            ("postgres://u@cafe.abc123.us-east-1.redshift.amazonaws.com:5439/dev?sslmode=disable", SslMode::Disable),
        ] {
            assert_eq!(parse(url).expect("parses").mode, mode, "{url}");
        }
        assert_eq!(
            parse("postgres://u@127.0.0.1/cafe").expect("parses").config.get_ssl_mode(),
            tokio_postgres::config::SslMode::Prefer
        );
    }

    #[test]
    fn a_root_certificate_file_that_cannot_be_used_is_named() {
        let missing = problem("postgres://h/d?sslmode=verify-full&sslrootcert=/nonexistent/ca.pem").expect("a problem");
        assert!(missing.contains("/nonexistent/ca.pem"), "{missing}");
        let dir = std::env::temp_dir().join(format!("cafe-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let empty = dir.join("empty.pem");
        std::fs::write(&empty, "not a certificate\n").expect("write");
        let p = problem(&format!("postgres://h/d?sslmode=verify-ca&sslrootcert={}", empty.display())).expect("a problem");
        assert!(p.contains("holds no CA certificate"), "{p}");
        assert!(problem("postgres://h/d?sslmode=require").is_none());
        assert!(problem("postgres://h/d").is_none());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
