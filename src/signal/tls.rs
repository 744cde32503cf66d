//! HTTPS and WSS on the signalling port: the certificate chain and private key named by
//! `[http] tls_cert` and `tls_key` (PEM), read once at start, and the acceptor every connection
//! passes through before HTTP. TLS 1.2 and 1.3, ALPN `http/1.1` (WebSocket upgrades need it).
//! The TURN server's TLS listener uses the same acceptor, with ALPN `stun.turn` (RFC 7443).

use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::TlsAcceptor;

/// The acceptor for a chain and key in PEM, offering `alpn`; the error says which file is at
/// fault and why.
pub fn acceptor(cert_pem: &[u8], key_pem: &[u8], alpn: &[&[u8]]) -> Result<TlsAcceptor, String> {
    let chain = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("tls_cert: {e}"))?;
    if chain.is_empty() {
        return Err("tls_cert: no CERTIFICATE PEM block".into());
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| format!("tls_key: {e}"))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| format!("tls_cert and tls_key: {e}"))?;
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(TlsAcceptor::from(Arc::new(config)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_name_the_file() {
        let ck = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        let (cert, key) = (ck.cert.pem(), ck.signing_key.serialize_pem());
        assert!(acceptor(cert.as_bytes(), key.as_bytes(), &[]).is_ok());
        let other = rcgen::generate_simple_self_signed(vec!["x".into()]).unwrap();
        // (cert, key, what the error names)
        let cases: [(&str, &str, &str); 4] = [
            ("", &key, "tls_cert: no CERTIFICATE"),
            (&cert, "", "tls_key"),
            (&key, &key, "tls_cert: no CERTIFICATE"),
            (
                &cert,
                &other.signing_key.serialize_pem(),
                "tls_cert and tls_key",
            ),
        ];
        for (c, k, want) in cases {
            let err = acceptor(c.as_bytes(), k.as_bytes(), &[]).err().unwrap();
            assert!(err.contains(want), "{want}: {err}");
        }
    }
}
