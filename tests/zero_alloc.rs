//! The relay core's forward path allocates nothing: with a counting global allocator, 10,000
//! packets from one publisher (audio and video) fanned out to 10 viewers, with the periodic work
//! (receiver reports, keyframe requests, speaker detection) in between, make zero heap allocations;
//! each packet is also kept in the retransmit cache (a shared reference, not a copy).
//! The transport's SRTP step is outside this proof (see docs/architecture.md).

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use volna::core::room::{
    Feedback, MediaKind, Relay, RelayConfig, SessionId, Sink, TrackRef, TrackSpec, ViewerTrackSpec,
};
use volna::core::rtp::{Codec, ExtKind, ExtMap, RtpView};

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

/// Writes each packet into one fixed buffer, as the worker's send buffer would take it.
struct FixedSink {
    buf: [u8; 2048],
    rtp: u64,
    rtcp: u64,
}

impl Sink for FixedSink {
    fn rtp(&mut self, _to: SessionId, header: &[u8], payload: &[u8]) {
        self.buf[..header.len()].copy_from_slice(header);
        self.buf[header.len()..header.len() + payload.len()].copy_from_slice(payload);
        self.rtp += 1;
    }
    fn rtcp(&mut self, _to: SessionId, packet: &[u8]) {
        self.buf[..packet.len()].copy_from_slice(packet);
        self.rtcp += 1;
    }
}

fn ext(pairs: &[(u8, ExtKind)]) -> ExtMap {
    ExtMap::from_pairs(pairs)
}

/// An RTP packet with a MID and an audio-level extension.
fn packet(ssrc: u32, pt: u8, payload: &[u8]) -> Vec<u8> {
    let mut p = vec![0x90, pt, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
    p[8..12].copy_from_slice(&ssrc.to_be_bytes());
    p.extend_from_slice(&[0xbe, 0xde, 0, 1, 0x40, b'0', 0x10, 0x20]);
    p.extend_from_slice(payload);
    p
}

#[test]
fn forwarding_allocates_nothing() {
    let t0 = Instant::now();
    let mut relay = Relay::new(RelayConfig::default());
    let fb = Feedback {
        nack: true,
        pli: true,
        fir: true,
        remb: true,
    };
    let tracks = vec![
        TrackSpec {
            kind: MediaKind::Audio,
            mid: "0".into(),
            codec: Codec::Opus,
            payload_type: 111,
            clock_rate: 48000,
            ssrc: Some(1),
            ext: ext(&[(4, ExtKind::Mid), (1, ExtKind::AudioLevel)]),
            feedback: Feedback::default(),
        },
        TrackSpec {
            kind: MediaKind::Video,
            mid: "1".into(),
            codec: Codec::Vp8,
            payload_type: 96,
            clock_rate: 90000,
            ssrc: Some(2),
            ext: ext(&[(4, ExtKind::Mid)]),
            feedback: fb,
        },
    ];
    relay.add_publisher(1, "room", 9, tracks).unwrap();
    let mut sink = FixedSink {
        buf: [0; 2048],
        rtp: 0,
        rtcp: 0,
    };
    for v in 0..10u64 {
        relay.add_viewer(100 + v, "room").unwrap();
        for track in 0..2 {
            let spec = ViewerTrackSpec {
                source: TrackRef {
                    publisher: 1,
                    track,
                },
                mid: track.to_string(),
                ssrc: 1000 + (v as u32) * 2 + track as u32,
                payload_type: if track == 0 { 111 } else { 96 },
                ext: ext(&[(2, ExtKind::Mid), (3, ExtKind::AudioLevel)]),
                initial_seq: 0,
                initial_ts: 0,
            };
            relay
                .add_viewer_track(t0, 100 + v, spec, &mut sink)
                .unwrap();
        }
    }
    let audio = packet(1, 111, &[0xfc; 80]);
    let mut video = packet(2, 96, &[0x10, 0x00, 0x9d, 0x01, 0x2a]);
    video.resize(1200, 0xab);
    // Every packet is made before counting (receiving is not part of this proof), the way the
    // design receives: into one pooled buffer, each datagram split off and frozen, so sharing it
    // with the retransmit cache is a reference count.
    let mut arena = bytes::BytesMut::with_capacity(10_200 * 1200);
    let packets: Vec<bytes::Bytes> = (0..10_200u32)
        .map(|i| {
            let p = if i % 2 == 0 { &audio } else { &video };
            arena.extend_from_slice(p);
            arena[2..4].copy_from_slice(&((i / 2) as u16).to_be_bytes());
            arena[4..8].copy_from_slice(&(i * 480).to_be_bytes());
            arena.split().freeze()
        })
        .collect();
    let forward = |relay: &mut Relay, sink: &mut FixedSink, i: u32| {
        let pkt = &packets[i as usize];
        let now = t0 + Duration::from_millis(u64::from(i));
        let view = RtpView::parse(pkt).unwrap();
        relay.handle_rtp(now, 1, pkt, &view, sink);
        if i.is_multiple_of(100) {
            relay.handle_timeout(now, sink);
            while relay.poll_event().is_some() {}
        }
    };
    // Warm-up: streams start (the first video packet is a keyframe), timers are armed.
    for i in 0..200 {
        forward(&mut relay, &mut sink, i);
    }
    let before = sink.rtp;
    COUNTING.with(|c| c.set(true));
    for i in 200..10_200 {
        forward(&mut relay, &mut sink, i);
    }
    COUNTING.with(|c| c.set(false));
    let allocations = ALLOCATIONS.load(Ordering::Relaxed);
    assert_eq!(
        sink.rtp - before,
        10_000 * 10,
        "every packet reached every viewer"
    );
    assert!(
        sink.rtcp > 0,
        "periodic RTCP ran inside the counted section"
    );
    assert_eq!(
        allocations, 0,
        "heap allocations while forwarding 10,000 packets to 10 viewers"
    );
}
