//! The forward path allocates nothing, proven with a counting global allocator:
//! - the relay core: 10,000 packets from one publisher (audio and video) fanned out to 10
//!   viewers, with the periodic work (receiver reports, keyframe requests, speaker detection) in
//!   between; each packet is also kept in the retransmit cache (a shared reference, not a copy);
//! - a worker's shard end to end: publisher and viewers connected with real ICE and DTLS-SRTP,
//!   each SRTP datagram received into a pooled slot, decrypted in place, forwarded, rewritten and
//!   encrypted for each of 10 viewers into the send buffer, which is then drained (the system
//!   call's part). Only the socket calls themselves are outside the count.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use volna::core::room::{Feedback, RelayConfig, TrackSpec};
use volna::core::rtp::{ExtKind, ExtMap};
use volna::testkit::{
    opus_track, remb, simulcast_track, vp8_track, CountingSink, RtpBuilder, Sim, ViewerTrack,
};

mod common;

struct Counting;

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

thread_local! {
    // Only this test's thread is counted; the harness's other threads may allocate freely.
    static COUNTING: Cell<bool> = const { Cell::new(false) };
}

fn note() {
    if COUNTING.with(Cell::get) {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
    }
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note();
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note();
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note();
        unsafe { System.realloc(ptr, layout, new_size) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Ten viewers (ids 100..110) of the publisher's audio (track 0) and video (track 1), with these
/// extensions, and RED on the audio when `red` gives its payload type.
fn add_viewers(sim: &mut Sim<CountingSink>, ext: &[(u8, ExtKind)], red: Option<u8>) {
    for v in 0..10u64 {
        let tracks = (0..2)
            .map(|track| {
                let ssrc = 1000 + (v as u32) * 2 + track as u32;
                ViewerTrack::new(1, track, ssrc, if track == 0 { 111 } else { 96 })
                    .ext(ext)
                    .red(red.filter(|_| track == 0))
                    .build()
            })
            .collect();
        sim.view(100 + v, tracks);
    }
}

#[test]
fn forwarding_allocates_nothing() {
    let mut sim = Sim::with_sink(RelayConfig::default(), CountingSink::new());
    sim.publish(1, 9, vec![opus_track(1), vp8_track(Some(2))]);
    add_viewers(
        &mut sim,
        &[(2, ExtKind::Mid), (3, ExtKind::AudioLevel)],
        None,
    );
    // Both with a MID and an audio-level extension.
    let audio = RtpBuilder::new(1, 111)
        .ext(4, b"0")
        .ext(1, &[0x20])
        .payload(&[0xfc; 80]);
    let video = RtpBuilder::new(2, 96)
        .ext(4, b"0")
        .ext(1, &[0x20])
        .payload(&[0x10, 0x00, 0x9d, 0x01, 0x2a])
        .pad_to(1200, 0xab);
    // Every packet is made before counting (receiving is not part of this proof), the way the
    // design receives: into one pooled buffer, each datagram split off and frozen, so sharing it
    // with the retransmit cache is a reference count.
    let mut arena = bytes::BytesMut::with_capacity(10_200 * 1200);
    let packets: Vec<bytes::Bytes> = (0..10_200u32)
        .map(|i| {
            let p = if i % 2 == 0 { &audio } else { &video };
            arena.extend_from_slice(&p.clone().seq((i / 2) as u16).ts(i * 480).to_vec());
            arena.split().freeze()
        })
        .collect();
    let forward = |sim: &mut Sim<CountingSink>, i: u32| {
        sim.goto(u64::from(i));
        sim.feed(1, &packets[i as usize]);
        if i.is_multiple_of(100) {
            sim.timeout();
            while sim.relay.poll_event().is_some() {}
        }
    };
    // Warm-up: streams start (the first video packet is a keyframe), timers are armed.
    for i in 0..200 {
        forward(&mut sim, i);
    }
    let before = sim.sink.rtp;
    COUNTING.with(|c| c.set(true));
    for i in 200..10_200 {
        forward(&mut sim, i);
    }
    COUNTING.with(|c| c.set(false));
    let allocations = ALLOCATIONS.load(Ordering::Relaxed);
    assert_eq!(
        sim.sink.rtp - before,
        10_000 * 10,
        "every packet reached every viewer"
    );
    assert!(
        sim.sink.rtcp > 0,
        "periodic RTCP ran inside the counted section"
    );
    assert_eq!(
        allocations, 0,
        "heap allocations while forwarding 10,000 packets to 10 viewers"
    );
}

/// The paths simulcast and weak links add, counted the same way: two layers told apart by their
/// RID, viewers moved between them by their estimates (so each switch shifts VP8 picture ids in a
/// rewritten descriptor), audio as RED to viewers that report loss, and transport-cc feedback to
/// the publisher.
#[test]
fn simulcast_red_and_feedback_allocate_nothing() {
    use volna::core::rtcp::{ReceiverReport, ReportBlock};
    let mut sim = Sim::with_sink(RelayConfig::default(), CountingSink::new());
    let audio = TrackSpec {
        ext: ExtMap::from_pairs(&[(4, ExtKind::Mid), (5, ExtKind::TransportWideCc)]),
        ..opus_track(1)
    };
    let video = TrackSpec {
        ext: ExtMap::from_pairs(&[
            (4, ExtKind::Mid),
            (5, ExtKind::TransportWideCc),
            (10, ExtKind::RtpStreamId),
        ]),
        feedback: Feedback {
            nack: true,
            pli: true,
            fir: false,
            remb: false,
        },
        ..simulcast_track(&["f", "q"])
    };
    sim.publish(1, 9, vec![audio, video]);
    add_viewers(&mut sim, &[(2, ExtKind::Mid)], Some(63));
    // Each viewer's report: its estimate (REMB) and 10% loss (receiver report).
    let report = |v: u64, bps: u64| {
        let mut b = [0u8; 128];
        let ssrc = 1000 + (v as u32) * 2;
        let block = ReportBlock {
            ssrc,
            fraction_lost: 26,
            ..ReportBlock::default()
        };
        let n = ReceiverReport::write(ssrc, &[block], &mut b).unwrap();
        [&b[..n], &remb(ssrc, ssrc + 1, bps)[..]].concat()
    };
    let high: Vec<Vec<u8>> = (0..10).map(|v| report(v, 5_000_000)).collect();
    let low: Vec<Vec<u8>> = (0..10).map(|v| report(v, 400_000)).collect();
    // Audio, layer "f" (1000 B) and layer "q" (300 B) in turn, each with MID, RID and a
    // transport-wide number; VP8 with 15-bit picture ids, a key frame every 60 packets a layer.
    let mut arena = bytes::BytesMut::with_capacity(12_000 * 1100);
    let packets: Vec<bytes::Bytes> = (0..12_000u32)
        .map(|i| {
            let (kind, n) = (i % 3, i / 3);
            let (ssrc, pt, mid, rid, len) = match kind {
                0 => (1u32, 111u8, b'0', None, 100usize),
                1 => (2, 96, b'1', Some(b'f'), 1000),
                _ => (3, 96, b'1', Some(b'q'), 300),
            };
            let mut p = RtpBuilder::new(ssrc, pt)
                .seq(n as u16)
                .ts(n * 960)
                .ext(4, &[mid]);
            let mut payload = Vec::new();
            if let Some(r) = rid {
                p = p.ext(10, &[r]);
                let id = ((n as u16) & 0x7fff | 0x8000).to_be_bytes();
                let key = n % 60 == 0;
                payload.extend_from_slice(&[0x90, 0x80, id[0], id[1], u8::from(!key)]);
            }
            payload.resize(payload.len() + len, 0xab);
            let p = p.ext(5, &(i as u16).to_be_bytes()).payload(&payload);
            arena.extend_from_slice(&p.to_vec());
            arena.split().freeze()
        })
        .collect();
    let forward = |sim: &mut Sim<CountingSink>, i: u32| {
        sim.goto(u64::from(i));
        sim.feed(1, &packets[i as usize]);
        if i.is_multiple_of(10) {
            sim.timeout();
            while sim.relay.poll_event().is_some() {}
        }
    };
    let signal = |sim: &mut Sim<CountingSink>, i: u32, flip: bool| {
        sim.goto(u64::from(i));
        for v in 0..10u64 {
            let r = if (v % 2 == 0) != flip { &high } else { &low };
            sim.viewer_rtcp(100 + v, &r[v as usize]);
        }
    };
    // Warm-up: layers are learned, rates measured, viewers placed on their layers.
    for i in 0..3000 {
        if i % 300 == 0 {
            signal(&mut sim, i, false);
        }
        forward(&mut sim, i);
    }
    let red_before = sim.relay.counters().red_packets;
    let allocations_before = ALLOCATIONS.load(Ordering::Relaxed);
    COUNTING.with(|c| c.set(true));
    for i in 3000..12_000 {
        // Half way the estimates swap: every viewer switches layer.
        if i % 300 == 0 {
            signal(&mut sim, i, i >= 7500);
        }
        forward(&mut sim, i);
    }
    COUNTING.with(|c| c.set(false));
    let allocations = ALLOCATIONS.load(Ordering::Relaxed) - allocations_before;
    assert!(
        sim.relay.counters().red_packets > red_before + 10_000,
        "audio went as RED"
    );
    assert!(
        sim.sink.rtcp > 0,
        "RTCP (transport-cc feedback among it) ran in the counted section"
    );
    assert_eq!(
        allocations, 0,
        "heap allocations with simulcast switches, RED and publisher feedback"
    );
}

mod shard_path {
    use super::*;
    use crate::common::{shard, Client};
    use volna::session::Shard;
    use volna::transport::buffers::RecvPool;

    #[test]
    fn shard_forwarding_with_srtp_allocates_nothing() {
        let t0 = Instant::now();
        let mut shard = shard();
        let mut publisher = Client::new(1000);
        publisher.publish_to(&mut shard, t0, "room");
        let mut viewers: Vec<Client> = (0..10).map(|i| Client::new(2000 + i)).collect();
        for v in &mut viewers {
            v.view_from(&mut shard, t0, "room");
            assert!(v.keys.is_some());
        }
        while shard.poll_transmit().is_some() {}

        let mut pool = RecvPool::new();
        let mut wire: Vec<u8> = Vec::with_capacity(2048);
        let mut plain = [0u8; 2048];
        let mut delivered = vec![0u64; viewers.len()];
        let pkeys = publisher.keys.as_mut().unwrap();
        let mut send = |shard: &mut Shard, i: u32, delivered: &mut [u64]| {
            let now = t0 + Duration::from_millis(u64::from(i));
            // An RTP packet with the MID extension and a VP8 key-frame start every 30th packet.
            wire.clear();
            wire.extend_from_slice(&[0x90, 96]);
            wire.extend_from_slice(&(i as u16).to_be_bytes());
            wire.extend_from_slice(&(i / 4 * 3000).to_be_bytes());
            wire.extend_from_slice(&2222u32.to_be_bytes());
            wire.extend_from_slice(&[0xbe, 0xde, 0, 1, 0x40, b'0', 0, 0]);
            let key = i.is_multiple_of(30);
            wire.extend_from_slice(&[0x10, if key { 0x00 } else { 0x01 }, 0x9d, 0x01, 0x2a]);
            wire.resize(1200, (i % 251) as u8);
            pkeys.rtp_out.protect(&mut wire, 0, 20).unwrap();
            // The kernel's part: the datagram lands in a pooled slot.
            let region = pool.prepare(1);
            region[..wire.len()].copy_from_slice(&wire);
            let pkt = pool.take(0, wire.len());
            pool.finish();
            shard.handle_datagram(now, publisher.addr, pkt);
            // The socket's part: the batch is handed over; viewers check what they got.
            let batch = shard.transmits();
            for k in 0..batch.len() {
                let (to, d) = batch.get(k).unwrap();
                let Some(v) = viewers.iter_mut().position(|c| c.addr == to) else {
                    continue;
                };
                if (128..192).contains(&d[0]) && !(192..=223).contains(&d[1]) {
                    let p = &mut plain[..d.len()];
                    p.copy_from_slice(d);
                    let keys = viewers[v].keys.as_mut().unwrap();
                    let hl = volna::core::rtp::header_len(p).unwrap();
                    let n = keys.rtp_in.unprotect(p, hl).expect("viewer decrypts");
                    assert_eq!(p[n - 1], (i % 251) as u8, "payload intact");
                    delivered[v] += 1;
                }
            }
            batch.consume(batch.len());
            if i.is_multiple_of(100) {
                // Reports and keyframe requests (RTCP) are periodic work, not the forward path.
                shard.handle_timeout(now);
                while shard.poll_transmit().is_some() {}
            }
        };
        // Warm-up: viewers start at a key frame, the pool and the retransmit cache fill up.
        for i in 0..3000 {
            send(&mut shard, i, &mut delivered);
        }
        let before = delivered.clone();
        let mut counted = 0u64;
        for i in 3000..13_000 {
            if i % 100 == 0 {
                // handle_timeout runs inside `send` on these; leave them out of the count.
                send(&mut shard, i, &mut delivered);
                continue;
            }
            COUNTING.with(|c| c.set(true));
            send(&mut shard, i, &mut delivered);
            COUNTING.with(|c| c.set(false));
            counted += 1;
        }
        let allocations = ALLOCATIONS.load(Ordering::Relaxed);
        for (v, (a, b)) in delivered.iter().zip(&before).enumerate() {
            assert_eq!(a - b, 10_000, "viewer {v} got every packet");
        }
        assert_eq!(counted, 9_900);
        assert!(
            pool.allocated_blocks() as usize * volna::transport::buffers::BLOCK_BYTES <= 4 << 20,
            "receive slots were reused: {} blocks",
            pool.allocated_blocks()
        );
        assert_eq!(
            allocations, 0,
            "heap allocations while forwarding {counted} SRTP packets to 10 viewers"
        );
    }
}
