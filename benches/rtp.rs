//! The per-packet path in-process: parse, rewrite, and fan-out through the relay core to N viewers
//! (time per packet per viewer), without and with SRTP protection of each copy into the send
//! buffer; SRTP alone; and batched sending.

use std::hint::black_box;
use std::time::Instant;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use volna::core::room::{Feedback, Relay, RelayConfig, SessionId, Sink, TrackSpec};
use volna::core::rtp::{write_header, ExtKind, ExtMap, ExtTranslation, Rewrite, RtpView};
use volna::testkit::{vp8_track, CountingSink, RtpBuilder, Sim, ViewerTrack};
use volna::transport::buffers::SendBatch;
use volna::transport::webrtc::srtp::{Profile, SrtpRtp};

/// A VP8 packet of `len` bytes with the MID extension: the start of a key frame.
fn packet(len: usize) -> Vec<u8> {
    RtpBuilder::new(7, 96)
        .seq(1)
        .ts(1)
        .ext(4, b"1")
        .payload(&[0x10, 0x00])
        .pad_to(len, 0xab)
        .to_vec()
}

fn parse_and_rewrite(c: &mut Criterion) {
    let mut g = c.benchmark_group("rtp");
    for size in [160usize, 1200] {
        let p = packet(size);
        g.throughput(Throughput::Elements(1));
        g.bench_with_input(BenchmarkId::new("parse", size), &p, |b, p| {
            b.iter(|| RtpView::parse(black_box(p)).unwrap())
        });
        let from = ExtMap::from_pairs(&[(4, ExtKind::Mid)]);
        let to = ExtMap::from_pairs(&[(2, ExtKind::Mid)]);
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
                        transport_seq: None,
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

/// What a worker's shard does per receiver: the copy into the send buffer, SRTP protection in
/// place with that receiver's context, queued for one `sendmmsg`.
struct SrtpSink {
    send: SendBatch,
    /// One context per viewer session (ids 10..).
    ctx: Vec<SrtpRtp>,
    to: std::net::SocketAddr,
}

impl Sink for SrtpSink {
    fn rtp(&mut self, to: SessionId, header: &[u8], prefix: &[u8], payload: &[u8]) {
        let (buf, start) = self.send.begin();
        buf.extend_from_slice(header);
        buf.extend_from_slice(prefix);
        buf.extend_from_slice(payload);
        self.ctx[(to - 10) as usize]
            .protect(buf, start, header.len())
            .unwrap();
        self.send.commit(self.to, start);
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
    fn rtp(&mut self, _to: SessionId, header: &[u8], prefix: &[u8], payload: &[u8]) {
        let mut d = volna::transport::quic::roq::datagram(1, &[header, prefix, payload]);
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

/// `n` copies of `p`, each in a buffer of its own, as the worker receives them (frozen, so the
/// retransmit cache shares them by reference count).
fn shared_ring(p: &[u8], n: usize) -> Vec<bytes::Bytes> {
    (0..n).map(|_| bytes::Bytes::from(p.to_vec())).collect()
}

/// The ring's next packet under the next sequence number, written in place (the retransmit cache
/// has let go of it by the time it comes round again): the relay sees one long stream, not the
/// same packets again, which it would drop as duplicates.
fn next_packet(ring: &mut [bytes::Bytes], i: &mut usize, seq: &mut u16) -> bytes::Bytes {
    *i = (*i + 1) % ring.len();
    *seq = seq.wrapping_add(1);
    let mut m = match std::mem::take(&mut ring[*i]).try_into_mut() {
        Ok(m) => m,
        Err(shared) => bytes::BytesMut::from(&shared[..]),
    };
    m[2..4].copy_from_slice(&seq.to_be_bytes());
    ring[*i] = m.freeze();
    ring[*i].clone()
}

/// A relay with one publisher of VP8 and `viewers` viewers of it.
fn relay_with(viewers: u64) -> Relay {
    let mut sim = Sim::with_sink(RelayConfig::default(), CountingSink::new());
    sim.room = "bench";
    let track = TrackSpec {
        feedback: Feedback::default(),
        ..vp8_track(Some(7))
    };
    sim.publish(1, 1, vec![track]);
    for v in 0..viewers {
        let spec = ViewerTrack::new(1, 0, 100 + v as u32, 96)
            .ext(&[(2, ExtKind::Mid)])
            .build();
        sim.view(10 + v, vec![spec]);
    }
    sim.relay
}

fn fan_out(c: &mut Criterion) {
    let mut g = c.benchmark_group("fan_out_1200B");
    let p = packet(1200);
    let now = Instant::now();
    for n in [1u64, 10, 100] {
        g.throughput(Throughput::Elements(n));
        let mut relay = relay_with(n);
        // Copies header + payload into one reusable buffer per packet, as the worker does
        // before SRTP.
        let mut sink = CountingSink::new();
        let mut ring = shared_ring(&p, 4096);
        let mut seq = 0u16;
        let mut i = 0usize;
        g.bench_function(BenchmarkId::new("rewrite", n), |b| {
            b.iter(|| {
                let pkt = &next_packet(&mut ring, &mut i, &mut seq);
                let view = RtpView::parse(pkt).unwrap();
                relay.handle_rtp(now, 1, pkt, &view, &mut sink);
            })
        });
        for (name, profile) in [
            ("rewrite+srtp_gcm", Profile::AeadAes128Gcm),
            ("rewrite+srtp_cm_sha1", Profile::Aes128CmHmacSha1_80),
        ] {
            let salt = vec![9u8; profile.master_salt_len()];
            let mut sink = SrtpSink {
                send: SendBatch::new(),
                ctx: (0..n)
                    .map(|_| SrtpRtp::new(profile, &[7u8; 16], &salt).unwrap())
                    .collect(),
                to: "127.0.0.1:9".parse().unwrap(),
            };
            let mut relay = relay_with(n);
            g.bench_function(BenchmarkId::new(name, n), |b| {
                b.iter(|| {
                    let pkt = &next_packet(&mut ring, &mut i, &mut seq);
                    let view = RtpView::parse(pkt).unwrap();
                    relay.handle_rtp(now, 1, pkt, &view, &mut sink);
                    // The system call's part is measured in `batch_send`.
                    let sent = sink.send.len();
                    sink.send.consume(sent);
                })
            });
        }
        let key = ring::aead::UnboundKey::new(&ring::aead::AES_128_GCM, &[3u8; 16]).unwrap();
        let mut sink = RoqSink {
            key: ring::aead::LessSafeKey::new(key),
            counter: 0,
            bytes: 0,
        };
        let mut relay = relay_with(n);
        g.bench_function(BenchmarkId::new("rewrite+roq+quic_aead", n), |b| {
            b.iter(|| {
                let pkt = &next_packet(&mut ring, &mut i, &mut seq);
                let view = RtpView::parse(pkt).unwrap();
                relay.handle_rtp(now, 1, pkt, &view, &mut sink);
            })
        });
    }
    g.finish();
}

/// SRTP protection of one packet in place (what each receiver costs), both profiles, both sizes;
/// and unprotection in place (what each publisher packet costs).
fn srtp(c: &mut Criterion) {
    let mut g = c.benchmark_group("srtp");
    for profile in [Profile::AeadAes128Gcm, Profile::Aes128CmHmacSha1_80] {
        let tag = match profile {
            Profile::AeadAes128Gcm => "gcm",
            Profile::Aes128CmHmacSha1_80 => "cm_sha1_80",
        };
        let salt = vec![5u8; profile.master_salt_len()];
        for size in [160usize, 1200] {
            g.throughput(Throughput::Bytes(size as u64));
            let p = packet(size);
            let mut tx = SrtpRtp::new(profile, &[1u8; 16], &salt).unwrap();
            let mut buf = Vec::with_capacity(2048);
            let mut seq = 0u16;
            g.bench_function(BenchmarkId::new(format!("protect_{tag}"), size), |b| {
                b.iter(|| {
                    buf.clear();
                    buf.extend_from_slice(&p);
                    seq = seq.wrapping_add(1);
                    buf[2..4].copy_from_slice(&seq.to_be_bytes());
                    tx.protect(&mut buf, 0, 20).unwrap();
                })
            });
            // A window of protected packets, unprotected in turn by a fresh context each pass
            // (the replay window refuses a packet seen twice).
            let mut tx = SrtpRtp::new(profile, &[1u8; 16], &salt).unwrap();
            let protected: Vec<Vec<u8>> = (0..1024u16)
                .map(|s| {
                    let mut b = p.clone();
                    b[2..4].copy_from_slice(&s.to_be_bytes());
                    tx.protect(&mut b, 0, 20).unwrap();
                    b
                })
                .collect();
            let mut rx = SrtpRtp::new(profile, &[1u8; 16], &salt).unwrap();
            let mut k = 0usize;
            let mut work = vec![0u8; 2048];
            g.bench_function(BenchmarkId::new(format!("unprotect_{tag}"), size), |b| {
                b.iter(|| {
                    if k == protected.len() {
                        k = 0;
                        rx = SrtpRtp::new(profile, &[1u8; 16], &salt).unwrap();
                    }
                    let src = &protected[k];
                    work[..src.len()].copy_from_slice(src);
                    rx.unprotect(&mut work[..src.len()], 20).unwrap();
                    k += 1;
                })
            });
        }
    }
    g.finish();
}

/// 64 datagrams of 1200 B to 8 receivers over loopback: one `sendmmsg` per batch against one
/// `sendto` each. Receivers are not read; the kernel drops what overflows them, after the send.
fn batch_send(c: &mut Criterion) {
    let mut g = c.benchmark_group("batch_send_64x1200B");
    g.throughput(Throughput::Elements(64));
    let tx = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let rx: Vec<std::net::UdpSocket> = (0..8)
        .map(|_| std::net::UdpSocket::bind("127.0.0.1:0").unwrap())
        .collect();
    let to: Vec<std::net::SocketAddr> = rx.iter().map(|s| s.local_addr().unwrap()).collect();
    let data = vec![0x80u8; 1200];
    let mut batch = SendBatch::new();
    #[cfg(target_os = "linux")]
    g.bench_function("sendmmsg", |b| {
        b.iter(|| {
            for i in 0..64 {
                batch.push(to[i % to.len()], &data);
            }
            while !batch.is_empty() {
                let n = volna::transport::udp::send_some(&tx, &batch).unwrap_or(1);
                batch.consume(n);
            }
        })
    });
    g.bench_function("sendto", |b| {
        b.iter(|| {
            for i in 0..64 {
                let _ = tx.send_to(&data, to[i % to.len()]);
            }
        })
    });
    g.finish();
}

criterion_group!(benches, parse_and_rewrite, fan_out, srtp, batch_send);
criterion_main!(benches);
