//! What several scenario tests share: an in-memory WebRTC client of a worker's shard (an offer,
//! an ICE check, a DTLS handshake through the shard, its SRTP keys), and in [`call`] the call the
//! relay-core tests run.

#![allow(dead_code)]

pub mod call;
pub mod ws;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use volna::core::room::RelayConfig;
use volna::session::{Limits, Shard, ShardConfig};
use volna::transport::webrtc::dtls::{Dtls, DtlsIdentity, DtlsOutput, SrtpKeys};

/// A worker's shard with the default relay and a media address nobody reaches: tests carry
/// its datagrams by hand.
pub fn shard() -> Shard {
    shard_with(Limits::default())
}

/// The same with other limits.
pub fn shard_with(limits: Limits) -> Shard {
    Shard::new(config(limits), identity())
}

/// A shard whose random choices all come from `seed`.
pub fn shard_seeded(seed: u64) -> Shard {
    Shard::with_seed(config(Limits::default()), identity(), seed)
}

fn config(limits: Limits) -> ShardConfig {
    ShardConfig {
        worker: 0,
        media_addr: "127.0.0.1:5000".parse().unwrap(),
        tcp_addr: None,
        advertise: Vec::new(),
        consent_timeout: Duration::from_secs(30),
        reconnect_grace: Duration::from_secs(10),
        relay: RelayConfig::default(),
        limits,
        room_events: false,
    }
}

fn identity() -> DtlsIdentity {
    DtlsIdentity::generate(rtc_crypto::default_provider().unwrap()).unwrap()
}

/// Every client's ICE password (in its offer).
pub const CLIENT_PWD: &str = "0123456789012345678901";

pub fn offer(fingerprint: &str, ufrag: &str, direction: &str, ssrc: Option<u32>) -> String {
    let mut s = format!(
        "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\na=group:BUNDLE 0\r\n\
         m=video 9 UDP/TLS/RTP/SAVPF 96\r\nc=IN IP4 0.0.0.0\r\na=ice-ufrag:{ufrag}\r\n\
         a=ice-pwd:{CLIENT_PWD}\r\na=fingerprint:sha-256 {fingerprint}\r\n\
         a=setup:actpass\r\na=mid:0\r\na=extmap:4 urn:ietf:params:rtp-hdrext:sdes:mid\r\n\
         a={direction}\r\na=rtcp-mux\r\na=rtpmap:96 VP8/90000\r\na=rtcp-fb:96 nack pli\r\n"
    );
    if let Some(ssrc) = ssrc {
        s.push_str(&format!("a=ssrc:{ssrc} cname:load\r\n"));
    }
    s
}

pub fn attr<'a>(sdp: &'a str, name: &str) -> &'a str {
    sdp.lines()
        .find_map(|l| l.strip_prefix(name))
        .unwrap_or_else(|| panic!("{name} in {sdp}"))
        .trim()
}

pub fn binding_request(username: &str, pwd: &str) -> Vec<u8> {
    use rtc_stun::attributes::{RawAttribute, ATTR_USERNAME, ATTR_USE_CANDIDATE};
    use rtc_stun::fingerprint::FINGERPRINT;
    use rtc_stun::integrity::MessageIntegrity;
    use rtc_stun::message::{Message, Setter, TransactionId, BINDING_REQUEST};
    use rtc_stun::textattrs::TextAttribute;
    let provider = rtc_crypto::default_provider().unwrap();
    let mut m = Message::new();
    m.write_header();
    let user = TextAttribute::new(ATTR_USERNAME, username.to_owned());
    let nominate = RawAttribute {
        typ: ATTR_USE_CANDIDATE,
        length: 0,
        value: vec![],
    };
    let integrity =
        MessageIntegrity::new_short_term_integrity_with_provider(pwd.to_owned(), provider.crypto());
    let tid = TransactionId::new();
    let setters: [&dyn Setter; 6] = [
        &BINDING_REQUEST,
        &tid,
        &user,
        &nominate,
        &integrity,
        &FINGERPRINT,
    ];
    for s in setters {
        s.add_to(&mut m).unwrap();
    }
    m.raw
}

/// One client: ICE check, then a DTLS handshake through the shard, in memory.
pub struct Client {
    /// Where its datagrams come from (a test may move it: a NAT rebinding).
    pub addr: SocketAddr,
    pub ufrag: String,
    pub identity: DtlsIdentity,
    pub keys: Option<Box<SrtpKeys>>,
    /// What the shard sent it besides DTLS while the handshake ran (media that starts the moment
    /// SRTP is up, such as a replayed key frame).
    pub early: Vec<bytes::Bytes>,
}

impl Client {
    pub fn new(port: u16) -> Self {
        let provider = rtc_crypto::default_provider().unwrap();
        Client {
            addr: SocketAddr::from(([10, 0, 0, 1], port)),
            ufrag: format!("client{port}"),
            identity: DtlsIdentity::generate(provider).unwrap(),
            keys: None,
            early: Vec::new(),
        }
    }

    /// Publishes over WHIP in `room` (one VP8 track, SSRC 2222) and connects; volna's answer.
    pub fn publish_to(&mut self, shard: &mut Shard, now: Instant, room: &str) -> String {
        let o = offer(
            &self.identity.fingerprint,
            &self.ufrag,
            "sendonly",
            Some(2222),
        );
        let answer = shard
            .publish(now, room, &volna::session::sdp::Offer::parse(&o).unwrap())
            .expect("WHIP publish")
            .answer;
        self.handshake(shard, now, &answer);
        answer
    }

    /// Watches `room` over WHEP and connects; volna's answer.
    pub fn view_from(&mut self, shard: &mut Shard, now: Instant, room: &str) -> String {
        let o = offer(&self.identity.fingerprint, &self.ufrag, "recvonly", None);
        let answer = shard
            .view(
                now,
                room,
                None,
                &volna::session::sdp::Offer::parse(&o).unwrap(),
            )
            .expect("WHEP view")
            .answer;
        self.handshake(shard, now, &answer);
        answer
    }

    pub fn handshake(&mut self, shard: &mut Shard, now: Instant, answer: &str) {
        let user = format!("{}:{}", attr(answer, "a=ice-ufrag:"), self.ufrag);
        let req = binding_request(&user, attr(answer, "a=ice-pwd:"));
        shard.handle_datagram(now, self.addr, BytesMut::from(&req[..]));
        let mut dtls = Dtls::new(
            now,
            &self.identity,
            attr(answer, "a=fingerprint:sha-256"),
            true,
        )
        .expect("client DTLS");
        for _ in 0..50 {
            while let Some(d) = dtls.poll_transmit() {
                shard.handle_datagram(now, self.addr, d);
            }
            while let Some((to, d)) = shard.poll_transmit() {
                if to == self.addr && (20..64).contains(&d[0]) {
                    if let Some(DtlsOutput::Connected(k)) =
                        dtls.handle_datagram(now, &d).expect("DTLS from the shard")
                    {
                        self.keys = Some(k);
                    }
                } else if to == self.addr {
                    self.early.push(d);
                }
            }
            if self.keys.is_some() {
                // The shard's last flight (if any) was read above; let it see ours.
                while let Some(d) = dtls.poll_transmit() {
                    shard.handle_datagram(now, self.addr, d);
                }
                return;
            }
        }
        panic!("DTLS handshake with the shard did not finish");
    }
}

/// A TLS client that trusts only `cert_der` (a self-signed certificate made by the test) and
/// offers `alpn`.
pub fn tls_client(cert_der: &[u8], alpn: &[u8]) -> tokio_rustls::TlsConnector {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert_der.to_vec().into()).unwrap();
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    tls.alpn_protocols = vec![alpn.to_vec()];
    tokio_rustls::TlsConnector::from(std::sync::Arc::new(tls))
}
