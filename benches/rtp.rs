//! The per-packet path in-process: parse, rewrite, and fan-out through the relay core to N viewers
//! (time per packet per viewer), without and with SRTP protection of each copy.

use std::hint::black_box;
use std::time::Instant;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use volna::core::room::{
    Feedback, MediaKind, Relay, RelayConfig, SessionId, Sink, TrackRef, TrackSpec, ViewerTrackSpec,
};
use volna::core::rtp::{write_header, Codec, ExtKind, ExtMap, ExtTranslation, Rewrite, RtpView};

fn packet(len: usize) -> Vec<u8> {
    let mut p = vec![0x90, 96, 0, 1, 0, 0, 0, 1, 0, 0, 0, 7];
    p.extend_from_slice(&[0xbe, 0xde, 0, 1, 0x40, b'1', 0, 0]);
    p.push(0x10); // VP8 descriptor, start of a key frame
    p.push(0x00);
    p.resize(len, 0xab);
    p
}

fn ext(pairs: &[(u8, ExtKind)]) -> ExtMap {
    ExtMap::from_pairs(pairs)
}

fn parse_and_rewrite(c: &mut Criterion) {
    let mut g = c.benchmark_group("rtp");
    for size in [160usize, 1200] {
        let p = packet(size);
        g.throughput(Throughput::Elements(1));
        g.bench_with_input(BenchmarkId::new("parse", size), &p, |b, p| {
            b.iter(|| RtpView::parse(black_box(p)).unwrap())
        });
        let from = ext(&[(4, ExtKind::Mid)]);
        let to = ext(&[(2, ExtKind::Mid)]);
        let view = RtpView::parse(&p).unwrap();
        let rw = Rewrite {
            ssrc: 9,
            sequence: 1,
            timestamp: 2,
            payload_type: 98,
            marker: false,
        };
        let mut out = [0u8; 256];
        g.bench_with_input(BenchmarkId::new("rewrite_header", size), &p, |b, p| {
            b.iter(|| {
                write_header(
                    &mut out,
                    black_box(p),
                    &view,
                    &rw,
                    ExtTranslation {
                        from: &from,
                        to: &to,
                        mid: b"0",
                    },
                )
                .unwrap()
            })
        });
    }
    g.finish();
}

/// Copies header + payload into one reusable buffer per packet, as the worker does before SRTP.
struct CopySink {
    buf: Vec<u8>,
    bytes: usize,
}

impl Sink for CopySink {
    fn rtp(&mut self, _to: SessionId, header: &[u8], payload: &[u8]) {
        self.buf.clear();
        self.buf.extend_from_slice(header);
        self.buf.extend_from_slice(payload);
        self.bytes += self.buf.len();
    }
    fn rtcp(&mut self, _to: SessionId, _packet: &[u8]) {}
}

/// Also protects each copy with SRTP (AES-128-GCM), keys from `rtc-srtp`.
struct SrtpSink {
    inner: CopySink,
    ctx: rtc_srtp::context::Context,
}

impl Sink for SrtpSink {
    fn rtp(&mut self, to: SessionId, header: &[u8], payload: &[u8]) {
        self.inner.rtp(to, header, payload);
        let out = self.ctx.encrypt_rtp(&self.inner.buf).unwrap();
        self.inner.bytes += out.len();
    }
    fn rtcp(&mut self, _to: SessionId, _packet: &[u8]) {}
}

/// The QUIC path: RoQ framing (flow id + packet) as the shard builds it, then the AES-128-GCM
/// seal that QUIC 1-RTT packet protection applies (quinn adds framing and header protection).
struct RoqSink {
    key: ring::aead::LessSafeKey,
    counter: u64,
    bytes: usize,
}

impl Sink for RoqSink {
    fn rtp(&mut self, _to: SessionId, header: &[u8], payload: &[u8]) {
        let mut d = volna::transport::quic::roq::datagram(1, &[header, payload]);
        self.counter += 1;
        let mut nonce = [0u8; 12];
        nonce[4..].copy_from_slice(&self.counter.to_be_bytes());
        self.key
            .seal_in_place_append_tag(
                ring::aead::Nonce::assume_unique_for_key(nonce),
                ring::aead::Aad::empty(),
                &mut d,
            )
            .unwrap();
        self.bytes += d.len();
    }
    fn rtcp(&mut self, _to: SessionId, _packet: &[u8]) {}
}

/// `n` copies of `p` with sequence numbers 1..=n, received the way the worker receives: into one
/// buffer, each split off and frozen (so the retransmit cache shares them by reference count).
fn shared_ring(p: &[u8], n: usize) -> Vec<bytes::Bytes> {
    let mut arena = bytes::BytesMut::with_capacity(n * p.len());
    (1..=n)
        .map(|seq| {
            arena.extend_from_slice(p);
            arena[2..4].copy_from_slice(&(seq as u16).to_be_bytes());
            arena.split().freeze()
        })
        .collect()
}

fn relay_with(viewers: u64) -> Relay {
    let mut relay = Relay::new(RelayConfig::default());
    let track = TrackSpec {
        kind: MediaKind::Video,
        mid: "1".into(),
        codec: Codec::Vp8,
        payload_type: 96,
        clock_rate: 90000,
        ssrc: Some(7),
        ext: ext(&[(4, ExtKind::Mid)]),
        feedback: Feedback::default(),
    };
    relay.add_publisher(1, "bench", 1, vec![track]).unwrap();
    let mut sink = CopySink {
        buf: Vec::new(),
        bytes: 0,
    };
    for v in 0..viewers {
        let spec = ViewerTrackSpec {
            source: TrackRef {
                publisher: 1,
                track: 0,
            },
            mid: "0".into(),
            ssrc: 100 + v as u32,
            payload_type: 96,
            ext: ext(&[(2, ExtKind::Mid)]),
            initial_seq: 0,
            initial_ts: 0,
        };
        relay.add_viewer(10 + v, "bench").unwrap();
        relay
            .add_viewer_track(Instant::now(), 10 + v, spec, &mut sink)
            .unwrap();
    }
    relay
}

fn fan_out(c: &mut Criterion) {
    let mut g = c.benchmark_group("fan_out_1200B");
    let p = packet(1200);
    let now = Instant::now();
    for n in [1u64, 10, 100] {
        g.throughput(Throughput::Elements(n));
        let mut relay = relay_with(n);
        let mut sink = CopySink {
            buf: Vec::with_capacity(2048),
            bytes: 0,
        };
        let ring = shared_ring(&p, 4096);
        let mut i = 0usize;
        g.bench_function(BenchmarkId::new("rewrite", n), |b| {
            b.iter(|| {
                i = (i + 1) % ring.len();
                let pkt = &ring[i];
                let view = RtpView::parse(pkt).unwrap();
                relay.handle_rtp(now, 1, pkt, &view, &mut sink);
            })
        });
        let key = [7u8; 16];
        let salt = [9u8; 12];
        let provider = rtc_crypto::default_provider().unwrap();
        let ctx = rtc_srtp::context::Context::new(
            &key,
            &salt,
            rtc_srtp::protection_profile::ProtectionProfile::AeadAes128Gcm,
            None,
            None,
            provider.crypto(),
        )
        .unwrap();
        let mut sink = SrtpSink {
            inner: CopySink {
                buf: Vec::with_capacity(2048),
                bytes: 0,
            },
            ctx,
        };
        let mut relay = relay_with(n);
        g.bench_function(BenchmarkId::new("rewrite+srtp_gcm", n), |b| {
            b.iter(|| {
                i = (i + 1) % ring.len();
                let pkt = &ring[i];
                let view = RtpView::parse(pkt).unwrap();
                relay.handle_rtp(now, 1, pkt, &view, &mut sink);
            })
        });
        let key = ring::aead::UnboundKey::new(&ring::aead::AES_128_GCM, &[3u8; 16]).unwrap();
        let mut sink = RoqSink {
            key: ring::aead::LessSafeKey::new(key),
            counter: 0,
            bytes: 0,
        };
        let mut relay = relay_with(n);
        g.bench_function(BenchmarkId::new("rewrite+roq+quic_aead", n), |b| {
            b.iter(|| {
                i = (i + 1) % ring.len();
                let pkt = &ring[i];
                let view = RtpView::parse(pkt).unwrap();
                relay.handle_rtp(now, 1, pkt, &view, &mut sink);
            })
        });
    }
    g.finish();
}

criterion_group!(benches, parse_and_rewrite, fan_out);
criterion_main!(benches);
