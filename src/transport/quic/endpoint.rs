//! The QUIC listener's transport side: its TLS identity (certificate and its SHA-256 for
//! pinning), the quinn server configuration, and sending a datagram without waiting.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tracing::debug;

/// ALPN of volna's RTP-over-QUIC connections.
pub const ALPN: &[u8] = b"volna-roq/1";
/// ALPN of relay links between the nodes of a cluster (docs/cluster.md).
pub const RELAY_ALPN: &[u8] = b"volna-relay/1";

#[derive(Debug, thiserror::Error)]
pub enum QuicError {
    #[error("certificate: {0}")]
    Certificate(String),
    #[error("TLS: {0}")]
    Tls(String),
}

/// The listener's certificate and key (DER), and the certificate's SHA-256 for pinning.
#[derive(Clone)]
pub struct QuicIdentity {
    pub cert_der: Vec<u8>,
    /// The certificates sent after it (intermediates), in order.
    pub chain: Vec<Vec<u8>>,
    pub key_der: Vec<u8>,
    /// Lower-case hex SHA-256 of `cert_der`.
    pub cert_sha256: String,
}

pub fn sha256_hex(data: &[u8]) -> String {
    hex(ring::digest::digest(&ring::digest::SHA256, data).as_ref())
}

/// Lower-case hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl QuicIdentity {
    /// A self-signed certificate for development (clients pin its hash).
    pub fn self_signed() -> Result<Self, QuicError> {
        let ck = rcgen::generate_simple_self_signed(vec!["volna".into(), "localhost".into()])
            .map_err(|e| QuicError::Certificate(e.to_string()))?;
        let cert_der = ck.cert.der().to_vec();
        Ok(Self {
            cert_sha256: sha256_hex(&cert_der),
            key_der: ck.signing_key.serialize_der(),
            cert_der,
            chain: Vec::new(),
        })
    }

    /// A certificate chain (the server's first, then intermediates) and PKCS#8 key from PEM
    /// files.
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Self, QuicError> {
        use rustls::pki_types::pem::{self, PemObject};
        use rustls::pki_types::{CertificateDer, PrivatePkcs8KeyDer};
        let mut chain = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
            .map(|c| c.map(|c| c.to_vec()))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| QuicError::Certificate(e.to_string()))?;
        if chain.is_empty() {
            return Err(QuicError::Certificate("no CERTIFICATE PEM block".into()));
        }
        let cert_der = chain.remove(0);
        let key_der = match PrivatePkcs8KeyDer::from_pem_slice(key_pem.as_bytes()) {
            Ok(k) => k.secret_pkcs8_der().to_vec(),
            Err(pem::Error::NoItemsFound) => {
                return Err(QuicError::Certificate("no PRIVATE KEY PEM block".into()))
            }
            Err(e) => return Err(QuicError::Certificate(e.to_string())),
        };
        Ok(Self {
            cert_sha256: sha256_hex(&cert_der),
            cert_der,
            chain,
            key_der,
        })
    }

    pub fn server_config(&self) -> Result<quinn::ServerConfig, QuicError> {
        self.server_config_for(ALPN)
    }

    /// The server configuration for connections of protocol `alpn`.
    pub fn server_config_for(&self, alpn: &[u8]) -> Result<quinn::ServerConfig, QuicError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let cert = rustls::pki_types::CertificateDer::from(self.cert_der.clone());
        let key = rustls::pki_types::PrivateKeyDer::Pkcs8(self.key_der.clone().into());
        let mut tls = rustls::ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| QuicError::Tls(e.to_string()))?
            .with_no_client_auth()
            .with_single_cert(
                std::iter::once(cert)
                    .chain(self.chain.iter().map(|c| c.clone().into()))
                    .collect(),
                key,
            )
            .map_err(|e| QuicError::Tls(e.to_string()))?;
        tls.alpn_protocols = vec![alpn.to_vec()];
        let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls)
            .map_err(|e| QuicError::Tls(e.to_string()))?;
        let mut config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
        let mut transport = quinn::TransportConfig::default();
        // One control stream per connection; media goes in datagrams. More streams than that are
        // refused by QUIC flow control itself, so a stream flood costs nothing.
        transport.max_concurrent_bidi_streams(1u32.into());
        transport.max_concurrent_uni_streams(0u32.into());
        transport.datagram_receive_buffer_size(Some(1 << 20));
        transport.max_idle_timeout(Some(Duration::from_secs(30).try_into().expect("30 s fits")));
        config.transport_config(Arc::new(transport));
        Ok(config)
    }
}

/// Why a control stream's message could not be read.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("{0}")]
    Stream(String),
    #[error("control messages are limited to {0} bytes")]
    TooLarge(usize),
}

/// Reads one varint-framed control message of at most `max` bytes; `Ok(None)` at the end of
/// the stream.
pub async fn read_frame(
    recv: &mut quinn::RecvStream,
    max: usize,
) -> Result<Option<Vec<u8>>, FrameError> {
    let mut first = [0u8; 1];
    match recv.read_exact(&mut first).await {
        Ok(()) => {}
        Err(quinn::ReadExactError::FinishedEarly(0)) => return Ok(None),
        Err(e) => return Err(FrameError::Stream(e.to_string())),
    }
    let len_bytes = 1usize << (first[0] >> 6);
    let mut buf = vec![first[0]; len_bytes];
    if len_bytes > 1 {
        recv.read_exact(&mut buf[1..])
            .await
            .map_err(|e| FrameError::Stream(e.to_string()))?;
    }
    let (len, _) = super::roq::read_varint(&buf).map_err(|e| FrameError::Stream(e.to_string()))?;
    if len as usize > max {
        return Err(FrameError::TooLarge(max));
    }
    let mut body = vec![0u8; len as usize];
    recv.read_exact(&mut body)
        .await
        .map_err(|e| FrameError::Stream(e.to_string()))?;
    Ok(Some(body))
}

/// Sends a datagram, dropping it when the connection cannot take it now (datagrams are lossy
/// by design; NACK repairs what matters).
pub fn send_datagram(conn: &quinn::Connection, data: Bytes) {
    if let Err(e) = conn.send_datagram(data) {
        debug!(peer = %conn.remote_address(), error = %e, "datagram not sent");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A PEM file's certificates are all sent, the first as the server's (hashed for pinning);
    /// one without any certificate is refused.
    #[test]
    fn pem_chain_is_kept_in_order() {
        let make = || rcgen::generate_simple_self_signed(vec!["volna".into()]).unwrap();
        let (leaf, other) = (make(), make());
        let key = leaf.signing_key.serialize_pem();
        let both = format!("{}{}", leaf.cert.pem(), other.cert.pem());
        let id = QuicIdentity::from_pem(&both, &key).unwrap();
        assert_eq!(id.cert_der, leaf.cert.der().to_vec());
        assert_eq!(id.cert_sha256, sha256_hex(leaf.cert.der()));
        assert_eq!(id.chain, vec![other.cert.der().to_vec()]);
        assert!(id.server_config().is_ok());
        let one = QuicIdentity::from_pem(&leaf.cert.pem(), &key).unwrap();
        assert!(one.chain.is_empty());
        assert!(QuicIdentity::from_pem(&key, &key).is_err());
        // A key file without a PKCS#8 key.
        assert!(QuicIdentity::from_pem(&both, &both).is_err());
    }
}
