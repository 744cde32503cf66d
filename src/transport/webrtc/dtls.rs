//! DTLS-SRTP (RFC 5763, RFC 5764) for one session, on `rtc-dtls`: the handshake checks the peer's
//! certificate against the fingerprint from its SDP, then SRTP keys are exported from it.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::Arc;
use std::time::Instant;

use bytes::BytesMut;
use rtc_crypto::{HashAlgorithm, RTCCryptoProvider};
use rtc_dtls::config::{ClientAuthType, ConfigBuilder, ExtendedMasterSecretType, HandshakeConfig};
use rtc_dtls::crypto::Certificate;
use rtc_dtls::endpoint::{Endpoint, EndpointEvent};
use rtc_dtls::extension::extension_use_srtp::SrtpProtectionProfile;
use rtc_shared::TransportProtocol;
use rtc_srtp::context::Context;
use rtc_srtp::protection_profile::ProtectionProfile;

use super::srtcp::SrtcpIn;
use super::srtp::{Profile, SrtpRtp};

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

/// The SRTP profile a finished handshake negotiated and the session keys exported from it
/// (RFC 5764 §4.2), local and remote as seen from this end (either role). Only the two profiles
/// WebRTC uses are accepted.
pub fn export_srtp_keys(
    state: &rtc_dtls::state::State,
) -> Result<(ProtectionProfile, rtc_srtp::config::SessionKeys), DtlsError> {
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
    Ok((profile, config.keys))
}

/// SRTP contexts for both directions, keyed from the finished handshake: in-place RTP
/// protection for the forward path, `rtc-srtp` for the (rare) RTCP.
pub struct SrtpKeys {
    pub local: Context,
    pub remote: SrtcpIn,
    pub rtp_out: SrtpRtp,
    pub rtp_in: SrtpRtp,
    pub profile: ProtectionProfile,
}

impl SrtpKeys {
    /// A peer's SRTCP packet, authenticated and decrypted (`None`: refused; see `srtcp`).
    pub fn decrypt_rtcp(&mut self, packet: &[u8]) -> Option<bytes::BytesMut> {
        self.remote.decrypt(packet)
    }
}

pub enum DtlsOutput {
    Connected(Box<SrtpKeys>),
    PeerClosed,
}

pub struct Dtls {
    endpoint: Endpoint,
    provider: Arc<dyn RTCCryptoProvider>,
    connected: bool,
    /// Server role: the configuration is chosen when the ClientHello arrives (see
    /// [`client_offers_gcm`]); `None` once chosen, and always for the client role.
    pending_server: Option<(Arc<HandshakeConfig>, Arc<HandshakeConfig>)>,
}

/// Whether a datagram holds a DTLS ClientHello whose use_srtp extension (RFC 5764 §4.1.1) lists
/// SRTP_AEAD_AES_128_GCM. The DTLS library takes the client's order, and browsers list
/// AES_CM_128_HMAC_SHA1_80 first; volna prefers GCM (half the cost), so when the client can do
/// GCM the server offers only GCM.
pub fn client_offers_gcm(d: &[u8]) -> bool {
    fn inner(d: &[u8]) -> Option<bool> {
        // Record header (13) then handshake header (12); content type 22, handshake type 1.
        if *d.first()? != 22 || *d.get(13)? != 1 {
            return None;
        }
        let mut b = d.get(25..)?;
        b = b.get(2 + 32..)?; // client_version, random
        b = b.get(1 + *b.first()? as usize..)?; // session_id
        b = b.get(1 + *b.first()? as usize..)?; // cookie
        let suites = u16::from_be_bytes([*b.first()?, *b.get(1)?]) as usize;
        b = b.get(2 + suites..)?; // cipher_suites
        b = b.get(1 + *b.first()? as usize..)?; // compression_methods
        let ext_len = u16::from_be_bytes([*b.first()?, *b.get(1)?]) as usize;
        // A large ClientHello (post-quantum key shares) arrives in fragments: read the extensions
        // this fragment holds.
        let mut e = b.get(2..(2 + ext_len).min(b.len()))?;
        while e.len() >= 4 {
            let typ = u16::from_be_bytes([e[0], e[1]]);
            let len = u16::from_be_bytes([e[2], e[3]]) as usize;
            let data = e.get(4..4 + len)?;
            if typ == 14 {
                let n = u16::from_be_bytes([*data.first()?, *data.get(1)?]) as usize;
                let list = data.get(2..2 + n)?;
                return Some(list.chunks_exact(2).any(|p| p == [0x00, 0x07]));
            }
            e = &e[4 + len..];
        }
        Some(false)
    }
    inner(d).unwrap_or(false)
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
        let verify: rtc_dtls::config::VerifyPeerCertificateFn = verify;
        let build =
            |profiles: Vec<SrtpProtectionProfile>| -> Result<Arc<HandshakeConfig>, DtlsError> {
                ConfigBuilder::default()
                    .with_crypto_provider(provider.clone())
                    .with_certificates(vec![identity.certificate.clone()])
                    .with_srtp_protection_profiles(profiles)
                    .with_client_auth(ClientAuthType::RequireAnyClientCert)
                    .with_insecure_skip_verify(true)
                    .with_verify_peer_certificate(Some(verify.clone()))
                    .with_extended_master_secret(ExtendedMasterSecretType::Request)
                    .build(client, None)
                    .map(Arc::new)
                    .map_err(|e| DtlsError::Handshake(e.to_string()))
            };
        let both = build(vec![
            SrtpProtectionProfile::Srtp_Aead_Aes_128_Gcm,
            SrtpProtectionProfile::Srtp_Aes128_Cm_Hmac_Sha1_80,
        ])?;
        let local: SocketAddr = "0.0.0.0:0".parse().expect("literal address");
        let mut endpoint = Endpoint::new(local, TransportProtocol::UDP, None);
        let mut pending_server = None;
        if client {
            endpoint
                .connect(now, PEER, both, None)
                .map_err(|e| DtlsError::Handshake(e.to_string()))?;
        } else {
            let gcm_only = build(vec![SrtpProtectionProfile::Srtp_Aead_Aes_128_Gcm])?;
            pending_server = Some((gcm_only, both));
        }
        Ok(Self {
            endpoint,
            provider,
            connected: false,
            pending_server,
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
        if let Some((gcm_only, both)) = self.pending_server.take() {
            let config = if client_offers_gcm(data) {
                gcm_only
            } else {
                both
            };
            self.endpoint.set_server_config(Some(config));
        }
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
        let (profile, k) = export_srtp_keys(state)?;
        let rtp_profile = match profile {
            ProtectionProfile::AeadAes128Gcm => Profile::AeadAes128Gcm,
            _ => Profile::Aes128CmHmacSha1_80,
        };
        let crypto = self.provider.crypto();
        let k = &k;
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
            // volna keeps the SRTCP replay window itself (see `srtcp`); SRTP is its own.
            None,
            None,
            crypto,
        )
        .map_err(|e| DtlsError::Keying(e.to_string()))?;
        let remote = SrtcpIn::new(remote, profile);
        let rtp_out = SrtpRtp::new(rtp_profile, &k.local_master_key, &k.local_master_salt)
            .map_err(|e| DtlsError::Keying(e.to_string()))?;
        let rtp_in = SrtpRtp::new(rtp_profile, &k.remote_master_key, &k.remote_master_salt)
            .map_err(|e| DtlsError::Keying(e.to_string()))?;
        Ok(SrtpKeys {
            local,
            remote,
            rtp_out,
            rtp_in,
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

#[cfg(test)]
mod tests {
    use super::client_offers_gcm;

    /// A minimal ClientHello with the given use_srtp profiles (or none).
    fn hello(profiles: Option<&[u16]>) -> Vec<u8> {
        let mut body = vec![0xfe, 0xfd];
        body.extend_from_slice(&[0; 32]); // random
        body.push(0); // session id
        body.push(0); // cookie
        body.extend_from_slice(&[0, 2, 0xc0, 0x2b]); // one cipher suite
        body.extend_from_slice(&[1, 0]); // null compression
        let mut ext = vec![0, 23, 0, 0]; // extended_master_secret, empty
        if let Some(p) = profiles {
            let mut data = ((p.len() * 2) as u16).to_be_bytes().to_vec();
            for x in p {
                data.extend_from_slice(&x.to_be_bytes());
            }
            data.push(0); // no MKI
            ext.extend_from_slice(&[0, 14]);
            ext.extend_from_slice(&(data.len() as u16).to_be_bytes());
            ext.extend_from_slice(&data);
        }
        body.extend_from_slice(&(ext.len() as u16).to_be_bytes());
        body.extend_from_slice(&ext);
        let mut d = vec![22, 0xfe, 0xff, 0, 0, 0, 0, 0, 0, 0, 0];
        d.extend_from_slice(&((body.len() + 12) as u16).to_be_bytes());
        d.push(1);
        let len = (body.len() as u32).to_be_bytes();
        d.extend_from_slice(&len[1..]);
        d.extend_from_slice(&[0, 0, 0, 0, 0]);
        d.extend_from_slice(&len[1..]);
        d.extend_from_slice(&body);
        d
    }

    /// The same ClientHello as the first fragment of a larger one: its extension block claims more
    /// bytes than the datagram holds.
    fn fragment(mut h: Vec<u8>) -> Vec<u8> {
        let at = 13 + 12 + 2 + 32 + 1 + 1 + 4 + 2;
        let len = u16::from_be_bytes([h[at], h[at + 1]]) + 400;
        h[at..at + 2].copy_from_slice(&len.to_be_bytes());
        h
    }

    #[test]
    fn table() {
        let cases: &[(&str, Vec<u8>, bool)] = &[
            (
                "browser order, GCM listed",
                hello(Some(&[0x0001, 0x0007, 0x0008])),
                true,
            ),
            ("GCM only", hello(Some(&[0x0007])), true),
            ("CM only", hello(Some(&[0x0001])), false),
            ("no use_srtp", hello(None), false),
            ("not a handshake", vec![23, 0xfe, 0xfd], false),
            (
                "truncated before extensions",
                hello(Some(&[0x0007]))[..40].to_vec(),
                false,
            ),
            (
                "first fragment holds use_srtp",
                fragment(hello(Some(&[0x0001, 0x0007]))),
                true,
            ),
            ("empty", vec![], false),
        ];
        for (name, d, want) in cases {
            assert_eq!(client_offers_gcm(d), *want, "{name}");
        }
    }
}
