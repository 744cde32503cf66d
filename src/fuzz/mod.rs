//! Entry points for fuzzing: each takes arbitrary bytes as one kind of input from the network or
//! a client and must neither panic nor break its oracle (asserted here). `fuzz/` runs them under
//! cargo-fuzz; `tests/fuzz_corpus.rs` replays every saved input (seeds and past crashes) on stable,
//! so a crash once found stays a test.

mod sessions;
mod turn;
pub use sessions::sessions;
pub use turn::turn;

use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::core::bwe::{BandwidthEstimator, BweConfig};
use crate::core::room::{Relay, RelayConfig, SessionId, Sink, TrackSpec};
use crate::core::rtcp::twcc::{self, PacketResult};
use crate::core::rtcp::{Compound, RtcpPacket};
use crate::core::rtp::codec::{av1, av1_dd, h264, vp8, vp9};
use crate::core::rtp::{write_header, ExtKind, ExtMap, ExtTranslation, Rewrite, RtpView};
use crate::testkit::{opus_track, vp8_track, ViewerTrack};

/// One fuzz entry point.
pub type Target = fn(&[u8]);

/// The targets, by name (the names of `fuzz/fuzz_targets/*.rs` and `fuzz/corpus/*`).
pub const TARGETS: &[(&str, Target)] = &[
    ("rtp", rtp),
    ("rtcp", rtcp),
    ("codecs", codecs),
    ("stun", stun),
    ("dtls_hello", dtls_hello),
    ("sdp", sdp),
    ("control_json", control_json),
    ("roq", roq),
    ("srtp", srtp),
    ("relay", relay),
    ("sessions", sessions),
    ("turn", turn),
];

/// An RTP packet: parsed, its extensions walked, its header rewritten for a viewer with other
/// extension ids; the rewritten packet parses and keeps the payload.
pub fn rtp(data: &[u8]) {
    let Ok(view) = RtpView::parse(data) else {
        return;
    };
    let _ = crate::core::rtp::header_len(data);
    let _ = view.extensions(data).count();
    let from = ExtMap::from_pairs(&[(1, ExtKind::AudioLevel), (4, ExtKind::Mid)]);
    let to = ExtMap::from_pairs(&[
        (2, ExtKind::Mid),
        (3, ExtKind::AudioLevel),
        (5, ExtKind::TransportWideCc),
    ]);
    let rw = Rewrite {
        ssrc: 7,
        sequence: view.sequence.wrapping_add(100),
        timestamp: view.timestamp,
        payload_type: 96,
        marker: view.marker,
    };
    let mut out = [0u8; 1500];
    let ext = ExtTranslation {
        from: &from,
        to: &to,
        mid: b"1",
        transport_seq: Some(9),
    };
    let Ok(n) = write_header(&mut out, data, &view, &rw, ext) else {
        return;
    };
    let payload = view.payload(data);
    let mut pkt = out[..n].to_vec();
    pkt.extend_from_slice(payload);
    let again = RtpView::parse(&pkt).expect("a rewritten header parses");
    assert_eq!(again.payload(&pkt), payload, "the payload is kept");
    assert_eq!((again.ssrc, again.sequence), (rw.ssrc, rw.sequence));
}

/// A compound RTCP packet: every message parsed; transport-cc fed to an estimator.
pub fn rtcp(data: &[u8]) {
    let t0 = Instant::now();
    let mut bwe = BandwidthEstimator::new(BweConfig::default());
    for seq in 0..64u16 {
        bwe.on_sent(t0, seq, 1200, None);
    }
    let mut results: Vec<PacketResult> = Vec::new();
    for pkt in Compound::new(data) {
        match pkt {
            Ok(RtcpPacket::Nack(n)) => {
                let _ = n.pairs().count();
            }
            Ok(RtcpPacket::TransportCc(fb)) if twcc::parse(fb, &mut results).is_ok() => {
                assert!(results.len() <= twcc::MAX_RESULTS);
                bwe.on_feedback(t0 + Duration::from_millis(100), &results);
            }
            Ok(RtcpPacket::ReceiverReport(rr)) => {
                let _ = rr.blocks().count();
            }
            Ok(RtcpPacket::Fir(f)) => {
                let _ = f.entries().count();
            }
            _ => {}
        }
    }
    let _ = bwe.estimate_bps();
}

/// Payload descriptors of every codec, and a sequence of AV1 dependency descriptors (the first
/// byte says how long each is).
pub fn codecs(data: &[u8]) {
    let _ = vp8::starts_keyframe(data);
    let _ = vp8::keyframe_pixels(data);
    let _ = vp8::Descriptor::parse(data);
    let _ = vp9::starts_keyframe(data);
    let _ = vp9::Descriptor::parse(data);
    let _ = h264::starts_keyframe(data);
    let _ = av1::starts_keyframe(data);
    let mut structure = av1_dd::Structure::default();
    let mut has = false;
    let mut rest = data;
    while let Some((&len, tail)) = rest.split_first() {
        let n = usize::from(len).min(tail.len());
        let _ = av1_dd::parse(&tail[..n], &mut structure, &mut has);
        rest = &tail[n..];
    }
}

/// A STUN message as the media port gets it: a Binding request answered with a password, or a
/// Binding response checked with one.
pub fn stun(data: &[u8]) {
    use crate::transport::webrtc::ice::{BindingRequest, BindingResponse};
    let Ok(provider) = rtc_crypto::default_provider() else {
        return;
    };
    let from = "10.0.0.1:5000".parse().expect("literal");
    if let Ok(req) = BindingRequest::parse(data) {
        let _ = req.respond("0123456789012345678901", from, provider.crypto());
    }
    if let Ok(resp) = BindingResponse::parse(data) {
        let _ = resp.verify("0123456789012345678901", provider.crypto());
    }
}

/// The DTLS ClientHello inspection (which SRTP profiles the client offers).
pub fn dtls_hello(data: &[u8]) {
    let _ = crate::transport::webrtc::dtls::client_offers_gcm(data);
}

/// An SDP offer through WHIP and WHEP: what volna answers parses again.
pub fn sdp(data: &[u8]) {
    use crate::session::sdp::Offer;
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(offer) = Offer::parse(text) else {
        return;
    };
    let Some(mut shard) = shard() else {
        return;
    };
    let now = Instant::now();
    if let Ok(c) = shard.publish(now, "fuzz", &offer) {
        Offer::parse(&c.answer).expect("a WHIP answer parses");
    }
    if let Ok(c) = shard.view(now, "fuzz", None, &offer) {
        Offer::parse(&c.answer).expect("a WHEP answer parses");
    }
}

fn shard() -> Option<crate::session::Shard> {
    Some(crate::session::Shard::new(shard_config(), identity()))
}

/// The shard the targets drive: one worker with the default limits, on an address nobody reaches.
fn shard_config() -> crate::session::ShardConfig {
    crate::session::ShardConfig {
        worker: 0,
        media_addr: "127.0.0.1:5000".parse().expect("literal"),
        tcp_addr: None,
        advertise: Vec::new(),
        consent_timeout: Duration::from_secs(30),
        reconnect_grace: Duration::from_secs(10),
        relay: RelayConfig::default(),
        limits: crate::session::Limits::default(),
        room_events: true,
    }
}

/// A DTLS identity, made once per process (making one is slow, and no target needs its own).
fn identity() -> crate::transport::webrtc::DtlsIdentity {
    static IDENTITY: std::sync::OnceLock<crate::transport::webrtc::DtlsIdentity> =
        std::sync::OnceLock::new();
    IDENTITY
        .get_or_init(|| {
            let provider = rtc_crypto::default_provider().expect("a crypto provider");
            crate::transport::webrtc::DtlsIdentity::generate(provider).expect("a DTLS identity")
        })
        .clone()
}

/// A stateful target's script: steps of an op byte, a length byte and that many bytes of body
/// (cut short at the end of the input).
fn ops(data: &[u8]) -> impl Iterator<Item = (u8, u8, &[u8])> {
    let mut rest = data;
    std::iter::from_fn(move || {
        let (&op, tail) = rest.split_first()?;
        let (&len, tail) = tail.split_first().unwrap_or((&0, &[]));
        let (body, tail) = tail.split_at(usize::from(len).min(tail.len()));
        rest = tail;
        Some((op, len, body))
    })
}

/// A room-protocol message and a QUIC control message.
pub fn control_json(data: &[u8]) {
    let _ = serde_json::from_slice::<crate::session::protocol::ClientMessage>(data);
    let _ = serde_json::from_slice::<crate::signal::quic_control::ControlRequest>(data);
}

/// A RoQ datagram: its flow id and packet.
pub fn roq(data: &[u8]) {
    use crate::transport::quic::roq;
    if let Ok((flow, rest)) = roq::split_datagram(data) {
        // Written again (with the shortest varint), it reads the same.
        let again = roq::datagram(flow, &[rest]);
        assert_eq!(
            roq::split_datagram(&again).ok(),
            Some((flow, rest)),
            "a datagram is its flow id and packet"
        );
    }
    let _ = roq::read_varint(data);
}

/// SRTP and SRTCP unprotect, under both profiles. Bytes nobody protected are never accepted (a
/// forgery would need the key). The input made into an RTP packet and protected is accepted once,
/// as what was protected, and refused when it comes again (a replay); the same for the input
/// protected as SRTCP.
pub fn srtp(data: &[u8]) {
    use crate::transport::webrtc::srtcp::SrtcpIn;
    use crate::transport::webrtc::srtp::{Profile, SrtpRtp};
    use rtc_srtp::context::Context;
    use rtc_srtp::protection_profile::ProtectionProfile;
    let provider = rtc_crypto::default_provider().expect("a crypto provider");
    for (profile, srtcp_profile) in [
        (Profile::AeadAes128Gcm, ProtectionProfile::AeadAes128Gcm),
        (
            Profile::Aes128CmHmacSha1_80,
            ProtectionProfile::Aes128CmHmacSha1_80,
        ),
    ] {
        let key = [7u8; 16];
        let salt = vec![9u8; profile.master_salt_len()];
        let (Ok(mut tx), Ok(mut rx)) = (
            SrtpRtp::new(profile, &key, &salt),
            SrtpRtp::new(profile, &key, &salt),
        ) else {
            return;
        };
        if let Ok(h) = crate::core::rtp::header_len(data) {
            let mut buf = data.to_vec();
            assert!(
                rx.unprotect(&mut buf, h).is_err(),
                "an unprotected packet is never accepted"
            );
        }
        // The input as the payload of a packet whose header it also picks, protected.
        let mut plain = vec![0x80, 96];
        plain.extend_from_slice(data.get(..10).unwrap_or(&[0; 10]));
        plain[0] = 0x80;
        plain.extend_from_slice(data.get(10..).unwrap_or(&[]));
        let mut wire = plain.clone();
        if tx.protect(&mut wire, 0, 12).is_ok() {
            let mut once = wire.clone();
            let n = rx
                .unprotect(&mut once, 12)
                .expect("a protected packet is accepted");
            assert_eq!(&once[..n], &plain[..], "as what was protected");
            assert!(
                rx.unprotect(&mut wire.clone(), 12).is_err(),
                "a replayed packet is refused"
            );
        }
        // SRTCP (the webrtc-rs context, with volna's checks around it).
        let crypto = provider.crypto();
        let ctx = || Context::new(&key, &salt, srtcp_profile, None, None, crypto);
        let (Ok(mut tx), Ok(rx)) = (ctx(), ctx()) else {
            return;
        };
        let mut rx = SrtcpIn::new(rx, srtcp_profile);
        assert!(
            rx.decrypt(data).is_none(),
            "an unprotected RTCP packet is never accepted"
        );
        let mut rtcp = vec![0x80, 200, 0, 1];
        rtcp.extend_from_slice(data.get(..4).unwrap_or(&[0; 4]));
        rtcp.extend_from_slice(data.get(4..).unwrap_or(&[]));
        let words = rtcp.len().div_ceil(4);
        rtcp.resize(words * 4, 0);
        rtcp[2..4].copy_from_slice(&((words - 1) as u16).to_be_bytes());
        if let Ok(wire) = tx.encrypt_rtcp(&rtcp) {
            let got = rx
                .decrypt(&wire)
                .expect("a protected RTCP packet is accepted");
            assert_eq!(&got[..], &rtcp[..], "as what was protected");
            assert!(
                rx.decrypt(&wire).is_none(),
                "a replayed RTCP packet is refused"
            );
        }
    }
}

/// Everything the relay sends, with the checks the fuzzer makes on it.
#[derive(Default)]
struct Checked {
    /// (viewer, SSRC, sequence number) -> the bytes sent under it.
    sent: std::collections::HashMap<(SessionId, u32, u16), Vec<u8>>,
}

impl Sink for Checked {
    fn rtp(&mut self, to: SessionId, header: &[u8], prefix: &[u8], payload: &[u8]) {
        let mut p = header.to_vec();
        p.extend_from_slice(prefix);
        p.extend_from_slice(payload);
        let v = RtpView::parse(&p).expect("every RTP packet the relay sends parses");
        // One SRTP index, one set of bytes (header included: it is the AEAD's associated data):
        // a number sent again to a viewer is the same packet.
        let key = (to, v.ssrc, v.sequence);
        if let Some(before) = self.sent.get(&key) {
            assert_eq!(before, &p, "a sequence number sent again with other bytes");
        } else {
            self.sent.insert(key, p);
        }
    }
    fn rtcp(&mut self, _to: SessionId, packet: &[u8]) {
        for p in Compound::new(packet) {
            p.expect("every RTCP packet the relay sends parses");
        }
    }
}

/// The relay core driven by a script: publisher packets, viewers' RTCP, time passing, viewers
/// coming and going, from several peers. Each step is one opcode byte and a length-prefixed body.
pub fn relay(data: &[u8]) {
    const PUB: SessionId = 1;
    let t0 = Instant::now();
    let mut now = t0;
    let mut r = Relay::new(RelayConfig::default());
    let mut sink = Checked::default();
    let video = TrackSpec {
        ext: ExtMap::from_pairs(&[(4, ExtKind::Mid), (5, ExtKind::TransportWideCc)]),
        ..vp8_track(Some(0xb0))
    };
    if r.add_publisher(PUB, "room", 0x5e, vec![opus_track(0xa0), video])
        .is_err()
    {
        return;
    }
    let viewer = |id: SessionId, track: usize| {
        let ssrc = 0x1000 * id as u32 + track as u32;
        ViewerTrack::new(PUB, track, ssrc, if track == 0 { 111 } else { 96 })
            .ext(&[(2, ExtKind::Mid), (3, ExtKind::TransportWideCc)])
            .start(100, 0)
            .build()
    };
    for (op, len, body) in ops(data) {
        let who = SessionId::from(op >> 4) % 3 + 2;
        match op & 0x0f {
            0 => {
                let pkt = Bytes::copy_from_slice(body);
                if let Ok(view) = RtpView::parse(&pkt) {
                    r.handle_rtp(now, PUB, &pkt, &view, &mut sink);
                }
            }
            1 => r.handle_viewer_rtcp(now, who, body, &mut sink),
            2 => r.handle_publisher_rtcp(now, PUB, body, &mut sink),
            3 => {
                now += Duration::from_millis(u64::from(len) * 10);
                r.handle_timeout(now, &mut sink);
            }
            4 if r.add_viewer(who, "room").is_ok() => {
                for t in 0..2 {
                    let _ = r.add_viewer_track(now, who, viewer(who, t), &mut sink);
                }
            }
            5 => {
                // A new session with this id would have new keys.
                r.remove_viewer(who);
                sink.sent.retain(|k, _| k.0 != who);
            }
            6 => r.viewer_moved(now, who, &mut sink),
            _ => {}
        }
    }
}
