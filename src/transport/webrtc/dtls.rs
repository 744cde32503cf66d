//! DTLS-SRTP (RFC 5763, RFC 5764) for one session, on `rtc-dtls`: the handshake checks the peer's
//! certificate against the fingerprint from its SDP, then SRTP keys are exported from it.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::Arc;
use std::time::Instant;

use bytes::BytesMut;
use rtc_crypto::{HashAlgorithm, RTCCryptoProvider};
use rtc_dtls::config::{ClientAuthType, ConfigBuilder, ExtendedMasterSecretType};
use rtc_dtls::crypto::Certificate;
use rtc_dtls::endpoint::{Endpoint, EndpointEvent};
use rtc_dtls::extension::extension_use_srtp::SrtpProtectionProfile;
use rtc_shared::TransportProtocol;
use rtc_srtp::context::Context;
use rtc_srtp::protection_profile::ProtectionProfile;

/// The association is keyed by this placeholder: the session knows the peer's real address (it
/// may change with ICE), the DTLS endpoint does not need to.
const PEER: SocketAddr = SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::new(127, 0, 0, 9), 9));

#[derive(Debug, thiserror::Error)]
pub enum DtlsError {
    #[error("certificate: {0}")]
    Certificate(String),
    #[error("handshake: {0}")]
    Handshake(String),
    #[error("SRTP keying: {0}")]
    Keying(String),
}

/// The relay's DTLS certificate and its fingerprint for SDP.
#[derive(Clone)]
pub struct DtlsIdentity {
    pub certificate: Certificate,
    /// `AA:BB:...` sha-256 of the DER certificate.
    pub fingerprint: String,
    pub provider: Arc<dyn RTCCryptoProvider>,
}

impl DtlsIdentity {
    pub fn generate(provider: Arc<dyn RTCCryptoProvider>) -> Result<Self, DtlsError> {
        let certificate =
            Certificate::generate_self_signed(vec!["volna".to_owned()], provider.crypto())
                .map_err(|e| DtlsError::Certificate(e.to_string()))?;
        let der = certificate
            .certificate
            .first()
            .ok_or_else(|| DtlsError::Certificate("empty chain".into()))?;
        let fingerprint = sha256_fingerprint(&provider, der.as_ref())?;
        Ok(Self {
            certificate,
            fingerprint,
            provider,
        })
    }
}

fn sha256_fingerprint(
    provider: &Arc<dyn RTCCryptoProvider>,
    der: &[u8],
) -> Result<String, DtlsError> {
    let digest = provider
        .crypto()
        .hash(HashAlgorithm::Sha256, der)
        .map_err(|e| DtlsError::Certificate(e.to_string()))?;
    Ok(digest
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join(":"))
}

/// SRTP contexts for both directions, keyed from the finished handshake.
pub struct SrtpKeys {
    pub local: Context,
    pub remote: Context,
    pub profile: ProtectionProfile,
}

pub enum DtlsOutput {
    Connected(Box<SrtpKeys>),
    PeerClosed,
}

pub struct Dtls {
    endpoint: Endpoint,
    provider: Arc<dyn RTCCryptoProvider>,
    connected: bool,
}

impl Dtls {
    /// `client` is true when our answer said `a=setup:active`.
    pub fn new(
        now: Instant,
        identity: &DtlsIdentity,
        remote_fingerprint: &str,
        client: bool,
    ) -> Result<Self, DtlsError> {
        let expected = remote_fingerprint.to_ascii_lowercase();
        let provider = identity.provider.clone();
        let verify_provider = provider.clone();
        let verify = Arc::new(
            move |certs: &[Vec<u8>],
                  _: &[rustls_pki_types::CertificateDer<'static>]|
                  -> rtc_shared::error::Result<()> {
                let Some(cert) = certs.first() else {
                    return Err(rtc_shared::error::Error::ErrNonCertificate);
                };
                match sha256_fingerprint(&verify_provider, cert) {
                    Ok(fp) if fp.to_ascii_lowercase() == expected => Ok(()),
                    _ => Err(rtc_shared::error::Error::ErrNoMatchingCertificateFingerprint),
                }
            },
        );
        let config = ConfigBuilder::default()
            .with_crypto_provider(provider.clone())
            .with_certificates(vec![identity.certificate.clone()])
            .with_srtp_protection_profiles(vec![
                SrtpProtectionProfile::Srtp_Aead_Aes_128_Gcm,
                SrtpProtectionProfile::Srtp_Aes128_Cm_Hmac_Sha1_80,
            ])
            .with_client_auth(ClientAuthType::RequireAnyClientCert)
            .with_insecure_skip_verify(true)
            .with_verify_peer_certificate(Some(verify))
            .with_extended_master_secret(ExtendedMasterSecretType::Request)
            .build(client, None)
            .map_err(|e| DtlsError::Handshake(e.to_string()))?;
        let config = Arc::new(config);
        let local: SocketAddr = "0.0.0.0:0".parse().expect("literal address");
        let mut endpoint = Endpoint::new(
            local,
            TransportProtocol::UDP,
            (!client).then(|| config.clone()),
        );
        if client {
            endpoint
                .connect(now, PEER, config, None)
                .map_err(|e| DtlsError::Handshake(e.to_string()))?;
        }
        Ok(Self {
            endpoint,
            provider,
            connected: false,
        })
    }

    pub fn is_connected(&self) -> bool {
        self.connected
    }

    /// One DTLS datagram from the peer.
    pub fn handle_datagram(
        &mut self,
        now: Instant,
        data: &[u8],
    ) -> Result<Option<DtlsOutput>, DtlsError> {
        let events = self
            .endpoint
            .read(now, PEER, None, BytesMut::from(data))
            .map_err(|e| DtlsError::Handshake(e.to_string()))?;
        for ev in events {
            match ev {
                EndpointEvent::HandshakeComplete => {
                    self.connected = true;
                    return self
                        .keys()
                        .map(|k| Some(DtlsOutput::Connected(Box::new(k))));
                }
                EndpointEvent::PeerClosed => return Ok(Some(DtlsOutput::PeerClosed)),
                _ => {}
            }
        }
        Ok(None)
    }

    fn keys(&self) -> Result<SrtpKeys, DtlsError> {
        let state = self
            .endpoint
            .get_connection_state(PEER)
            .ok_or_else(|| DtlsError::Keying("no association".into()))?;
        let profile = match state.srtp_protection_profile() {
            SrtpProtectionProfile::Srtp_Aead_Aes_128_Gcm => ProtectionProfile::AeadAes128Gcm,
            SrtpProtectionProfile::Srtp_Aes128_Cm_Hmac_Sha1_80 => {
                ProtectionProfile::Aes128CmHmacSha1_80
            }
            other => return Err(DtlsError::Keying(format!("unsupported profile {other:?}"))),
        };
        let mut config = rtc_srtp::config::Config {
            profile,
            ..Default::default()
        };
        let material = state
            .export_keying_material(
                rtc_srtp::config::LABEL_EXTRACTOR_DTLS_SRTP,
                &[],
                config.keying_material_len(),
            )
            .map_err(|e| DtlsError::Keying(e.to_string()))?;
        config
            .set_session_keys_from_keying_material(material.as_ref(), state.is_client())
            .map_err(|e| DtlsError::Keying(e.to_string()))?;
        let crypto = self.provider.crypto();
        let k = &config.keys;
        let local = Context::new(
            &k.local_master_key,
            &k.local_master_salt,
            profile,
            None,
            None,
            crypto,
        )
        .map_err(|e| DtlsError::Keying(e.to_string()))?;
        let remote = Context::new(
            &k.remote_master_key,
            &k.remote_master_salt,
            profile,
            Some(rtc_srtp::option::srtp_replay_protection(256)),
            Some(rtc_srtp::option::srtcp_replay_protection(128)),
            crypto,
        )
        .map_err(|e| DtlsError::Keying(e.to_string()))?;
        Ok(SrtpKeys {
            local,
            remote,
            profile,
        })
    }

    /// Handshake retransmissions.
    pub fn handle_timeout(&mut self, now: Instant) -> Result<(), DtlsError> {
        self.endpoint
            .handle_timeout(PEER, now)
            .map_err(|e| DtlsError::Handshake(e.to_string()))
    }

    pub fn poll_timeout(&self) -> Option<Instant> {
        self.endpoint.poll_timeout(&PEER)
    }

    /// Queues close_notify.
    pub fn close(&mut self, now: Instant) {
        self.endpoint.stop(now, PEER);
    }

    /// The next datagram to send to the peer.
    pub fn poll_transmit(&mut self) -> Option<BytesMut> {
        self.endpoint.poll_transmit().map(|t| t.message)
    }
}
