//! The forwarder's decisions, table by table: starts, layer switches, pauses, SVC thinning,
//! sequence and timestamp continuity.

use std::time::{Duration, Instant};

use super::forwarder::*;
use crate::core::rtp::{Codec, RtpView};

fn view(seq: u16, ts: u32) -> RtpView {
    RtpView {
        marker: false,
        payload_type: 96,
        sequence: seq,
        timestamp: ts,
        ssrc: 1,
        csrc_count: 0,
        ext_profile: 0,
        ext_start: 0,
        ext_len: 0,
        payload_start: 12,
        payload_end: 14,
    }
}

fn t0() -> Instant {
    use std::sync::OnceLock;
    static T: OnceLock<Instant> = OnceLock::new();
    *T.get_or_init(Instant::now)
}

const KEY: &[u8] = &[0x10, 0x00];
const DELTA: &[u8] = &[0x10, 0x01];

#[test]
fn video_table() {
    // (input seq, payload, expected: None = drop, Some(out seq))
    let mut f = Forwarder::new(Codec::Vp8, 90_000, 9, 100, 1000, 50);
    let steps: &[(u16, &[u8], Option<u16>)] = &[
        (65530, DELTA, None),     // waits for a keyframe
        (65531, KEY, Some(1000)), // starts here
        (65532, DELTA, Some(1001)),
        (65535, DELTA, Some(1004)), // a gap stays a gap
        (0, DELTA, Some(1005)),     // wraps
        (65533, DELTA, Some(1002)), // late packet (retransmission) keeps its number
        (65530, DELTA, None),       // before the start
        (3, DELTA, Some(1008)),
        (3, DELTA, None),     // a duplicate is not sent again
        (65533, DELTA, None), // nor is a late packet twice
    ];
    for (i, (seq, payload, want)) in steps.iter().enumerate() {
        let got = match f.decide(t0(), 0, &view(*seq, 7), payload) {
            Decision::Forward(rw) => Some(rw.sequence),
            Decision::Drop(_) => None,
        };
        assert_eq!(got, *want, "step {i}");
    }
    assert_eq!(f.counts(), (6, 12));
    // Resending from the cache gives the same numbers, without moving the state.
    assert_eq!(
        f.rewrite_again(&view(65535, 7)).map(|r| r.sequence),
        Some(1004)
    );
    assert_eq!(f.rewrite_again(&view(65530, 7)), None, "before the start");
    assert_eq!(f.rewrite_again(&view(9, 7)), None, "not seen yet");
    assert_eq!(f.counts(), (6, 12));
    assert_eq!(f.source_sequence(1002), Some(65533));
    assert_eq!(f.viewer_timestamp(0, 7), Some(50));
}

/// Paused, nothing goes out; resumed, the next key frame continues the viewer's numbering
/// right after the last packet it got, timestamps keep their offset, and what was skipped
/// can be neither resent nor asked for.
#[test]
fn pause_and_resume_keep_the_numbering_seamless() {
    let mut f = Forwarder::new(Codec::Vp8, 90_000, 9, 100, 1000, 50);
    let out = |f: &mut Forwarder, seq: u16, p: &[u8]| match f.decide(
        t0(),
        0,
        &view(seq, u32::from(seq) * 10),
        p,
    ) {
        Decision::Forward(rw) => Some((rw.sequence, rw.timestamp)),
        Decision::Drop(_) => None,
    };
    assert_eq!(out(&mut f, 10, KEY), Some((1000, 50)));
    assert_eq!(out(&mut f, 11, DELTA), Some((1001, 60)));
    f.pause();
    assert!(f.is_paused());
    assert_eq!(out(&mut f, 12, KEY), None, "paused");
    // A long pause: far more than half the sequence space goes by.
    for seq in 13..40_000u16 {
        assert_eq!(out(&mut f, seq, DELTA), None);
    }
    f.set_target(0);
    assert_eq!(
        out(&mut f, 40_000, DELTA),
        None,
        "resuming waits for a key frame"
    );
    assert_eq!(out(&mut f, 40_001, KEY), Some((1002, 399_960)));
    assert_eq!(out(&mut f, 40_002, DELTA), Some((1003, 399_970)));
    assert!(!f.is_paused());
    assert_eq!(
        f.rewrite_again(&view(20, 200)),
        None,
        "skipped while paused"
    );
    assert_eq!(out(&mut f, 39_999, DELTA), None, "from before the resume");
    assert_eq!(f.source_sequence(1003), Some(40_002));
}

/// A switch between simulcast layers: the old layer flows until the new one's key frame;
/// then numbering goes on right after the last packet sent, timestamps advance by the time
/// that passed, and VP8 picture ids and TL0PICIDX continue; the old layer is dropped.
#[test]
fn layer_switch_is_seamless() {
    let mut f = Forwarder::new(Codec::Vp8, 90_000, 9, 100, 1000, 50);
    // VP8 descriptor with a 15-bit picture id and TL0PICIDX, then the payload header.
    let vp8 = |key: bool, pid: u16, tl0: u8| {
        let id = (pid | 0x8000).to_be_bytes();
        vec![0x90, 0xc0, id[0], id[1], tl0, u8::from(!key)]
    };
    let t = t0();
    let at = |ms: u64| t + Duration::from_millis(ms);
    let out = |f: &mut Forwarder, ms: u64, layer: u8, seq: u16, ts: u32, p: &[u8]| match f.decide(
        at(ms),
        layer,
        &view(seq, ts),
        p,
    ) {
        Decision::Forward(rw) => Some((rw.sequence, rw.timestamp)),
        Decision::Drop(_) => None,
    };
    assert_eq!(
        out(&mut f, 0, 1, 7000, 5, &vp8(true, 900, 1)),
        None,
        "not followed"
    );
    assert_eq!(
        out(&mut f, 0, 0, 100, 10_000, &vp8(true, 10, 200)),
        Some((1000, 50))
    );
    assert_eq!(
        out(&mut f, 33, 0, 101, 13_000, &vp8(false, 11, 200)),
        Some((1001, 3050))
    );
    f.set_target(1);
    assert_eq!(f.target(), Some(1));
    assert_eq!(
        out(&mut f, 40, 1, 7001, 8, &vp8(false, 901, 1)),
        None,
        "waits for a key frame"
    );
    assert_eq!(
        out(&mut f, 66, 0, 102, 16_000, &vp8(false, 12, 201)),
        Some((1002, 6050))
    );
    assert_eq!(f.vp8_shift(), Vp8Shift::default());
    // The key frame of layer 1 arrives 34 ms after the last packet sent.
    assert_eq!(
        out(&mut f, 100, 1, 7002, 400_000, &vp8(true, 902, 7)),
        Some((1003, 6050 + 3060))
    );
    assert_eq!(f.current(), Some(1));
    let shift = f.vp8_shift();
    assert_eq!(902u16.wrapping_add(shift.picture_id) & 0x7fff, 13);
    assert_eq!(7u8.wrapping_add(shift.tl0), 202);
    assert_eq!(
        out(&mut f, 110, 0, 103, 19_000, &vp8(false, 13, 201)),
        None,
        "old layer"
    );
    assert_eq!(
        out(&mut f, 133, 1, 7003, 403_000, &vp8(false, 903, 7)),
        Some((1004, 9110 + 3000))
    );
    assert_eq!(f.viewer_timestamp(0, 19_000), None);
    assert_eq!(f.viewer_timestamp(1, 403_000), Some(12_110));
    assert_eq!(
        f.rewrite_again(&view(7002, 400_000)).map(|r| r.sequence),
        Some(1003)
    );
    assert!(!f.covers(7001), "from before the switch");
    assert_eq!(f.source_sequence(1004), Some(7003));
}

/// A VP9 payload descriptor of a one-packet layer frame: L set, non-flexible (TL0PICIDX).
fn vp9(inter: bool, tid: u8, up: bool, sid: u8) -> [u8; 3] {
    let b0 = 0x20 | 0x08 | 0x04 | if inter { 0x40 } else { 0 };
    let l = (tid << 5) | (u8::from(up) << 4) | (sid << 1) | u8::from(sid > 0);
    [b0, l, 0]
}

/// An SVC stream of three spatial and three temporal layers (one packet per layer frame),
/// thinned per viewer: higher layers are left out, the rest numbered without gaps, the
/// picture's marker moved to the highest layer sent; layers come back only at switching
/// points; NACKs map through the new numbering, and left-out packets are never resent.
#[test]
fn svc_layers_are_thinned_per_viewer() {
    let mut f = Forwarder::new(Codec::Vp9, 90_000, 9, 98, 100, 0);
    let src = std::cell::Cell::new(5000u16);
    // Sends one picture (temporal id, key or not, U bit); returns (sid, out seq, marker)
    // of the packets forwarded.
    let picture = |f: &mut Forwarder, tid: u8, key: bool, up: bool| {
        let mut sent = Vec::new();
        for sid in 0..3u8 {
            let mut v = view(src.get(), u32::from(src.get()) * 10);
            v.marker = sid == 2;
            let p = vp9(!key, tid, up, sid);
            if let Decision::Forward(rw) = f.decide(t0(), 0, &v, &p) {
                sent.push((sid, rw.sequence, rw.marker));
            }
            src.set(src.get().wrapping_add(1));
        }
        sent
    };
    assert_eq!(f.svc_layers(), Some((SvcLayers::ALL, SvcLayers::ALL)));
    assert_eq!(
        picture(&mut f, 0, true, false),
        [(0, 100, false), (1, 101, false), (2, 102, true)]
    );
    f.set_svc_target(SvcLayers {
        spatial: 1,
        temporal: 7,
    });
    assert_eq!(
        picture(&mut f, 2, false, true),
        [(0, 103, false), (1, 104, true)]
    );
    f.set_svc_target(SvcLayers {
        spatial: 0,
        temporal: 0,
    });
    assert_eq!(
        picture(&mut f, 1, false, true),
        [],
        "temporal layer 1 left out"
    );
    assert_eq!(picture(&mut f, 2, false, true), []);
    assert_eq!(picture(&mut f, 0, false, false), [(0, 105, true)]);
    // NACKs map through the gaps left; left-out packets cannot be resent.
    assert_eq!(f.source_sequence(105), Some(5012));
    assert_eq!(f.source_sequence(104), Some(5004));
    assert_eq!(f.source_sequence(106), None, "not sent yet");
    let mut v = view(5004, 50_040);
    assert_eq!(
        f.rewrite_again(&v).map(|r| (r.sequence, r.marker)),
        Some((104, true)),
        "resent as sent: the marker moved"
    );
    v.sequence = 5005;
    assert_eq!(f.rewrite_again(&v), None, "left out");
    // Up again: temporal layers one by one at switching-up points, spatial ones where a
    // frame refers to no earlier picture.
    f.set_svc_target(SvcLayers {
        spatial: 2,
        temporal: 2,
    });
    assert_eq!(picture(&mut f, 2, false, true), [], "two temporal steps");
    assert_eq!(
        picture(&mut f, 1, false, false),
        [],
        "not a switching point"
    );
    assert_eq!(picture(&mut f, 1, false, true), [(0, 106, true)]);
    assert_eq!(picture(&mut f, 2, false, true), [(0, 107, true)]);
    assert_eq!(f.svc_layers().map(|l| l.1.spatial), Some(0));
    assert_eq!(
        picture(&mut f, 0, true, false),
        [(0, 108, false), (1, 109, false), (2, 110, true)],
        "a key picture brings every layer back"
    );
    // A packet lost before the relay leaves a gap the viewer's NACK is passed on for.
    src.set(src.get().wrapping_add(1));
    assert_eq!(
        picture(&mut f, 2, false, true).first(),
        Some(&(0, 112, false))
    );
    assert_eq!(f.source_sequence(111), Some(5030));
    let mut late = view(5030, 0);
    late.marker = false;
    let Decision::Forward(rw) = f.decide(t0(), 0, &late, &vp9(true, 2, true, 0)) else {
        panic!("the late packet is sent")
    };
    assert_eq!(rw.sequence, 111);
}

/// A viewer that starts with smaller layers than the stream has is thinned from its first
/// key picture on; and a late packet sent past the last one numbers what follows a restart,
/// so no sequence number is used twice.
#[test]
fn svc_starts_thinned_and_restarts_after_late_packets() {
    let mut f = Forwarder::new(Codec::Vp9, 90_000, 9, 98, 100, 0);
    f.set_svc_target(SvcLayers {
        spatial: 0,
        temporal: 7,
    });
    let send = |f: &mut Forwarder, seq: u16, key: bool, sid: u8| match f.decide(
        t0(),
        0,
        &view(seq, u32::from(seq) * 10),
        &vp9(!key, 0, false, sid),
    ) {
        Decision::Forward(rw) => Some((rw.sequence, rw.marker)),
        Decision::Drop(_) => None,
    };
    assert_eq!(
        send(&mut f, 10, true, 0),
        Some((100, true)),
        "the key picture, layer 0 only"
    );
    assert_eq!(send(&mut f, 11, true, 1), None);
    assert_eq!(send(&mut f, 12, true, 2), None);
    // 13 (layer 0 of the next picture) is late; 14 and 15 are left out.
    assert_eq!(send(&mut f, 14, false, 1), None);
    assert_eq!(send(&mut f, 15, false, 2), None);
    assert_eq!(send(&mut f, 13, false, 0), Some((101, true)));
    f.pause();
    f.set_target(0);
    assert_eq!(
        send(&mut f, 16, true, 0),
        Some((102, true)),
        "numbered after the late one"
    );
}

/// AV1 frames described by a header extension: a temporal layer comes back only at a frame
/// that is a switching point for the layers wanted.
#[test]
fn described_frames_switch_at_their_switch_points() {
    let mut f = Forwarder::new(Codec::Av1, 90_000, 9, 45, 100, 0);
    let mut seq = 10u16;
    let mut send = |f: &mut Forwarder, temporal: u8, key: bool, switch_points: u64| {
        let frame = LayerFrame {
            start: true,
            end: true,
            spatial: 0,
            temporal,
            key,
            switch_points,
        };
        // AV1 aggregation header: N on a key frame.
        let payload = [if key { 0x18 } else { 0x10 }, 0];
        seq += 1;
        match f.decide_frame(t0(), 0, &view(seq, 0), &payload, Some(&frame)) {
            Decision::Forward(rw) => Some(rw.sequence),
            Decision::Drop(_) => None,
        }
    };
    let to = |temporal| SvcLayers {
        spatial: 0,
        temporal,
    };
    assert_eq!(send(&mut f, 0, true, 0), Some(100));
    assert_eq!(send(&mut f, 1, false, 0), Some(101));
    f.set_svc_target(to(0));
    assert_eq!(send(&mut f, 1, false, 0), None, "down at once");
    assert_eq!(send(&mut f, 0, false, 0), Some(102));
    f.set_svc_target(to(1));
    assert_eq!(send(&mut f, 1, false, 0), None, "not a switching point");
    assert_eq!(send(&mut f, 0, false, 0), Some(103));
    assert_eq!(
        send(&mut f, 1, false, 1 << 1),
        Some(104),
        "a switching point for T1"
    );
    assert_eq!(send(&mut f, 1, false, 0), Some(105));
}

#[test]
fn audio_starts_at_once_and_shifts_timestamps() {
    let mut f = Forwarder::new(Codec::Opus, 48_000, 9, 111, 0, 0);
    assert_eq!(f.source_sequence(0), None);
    let Decision::Forward(a) = f.decide(t0(), 0, &view(10, 4_294_967_000), &[1]) else {
        panic!()
    };
    let Decision::Forward(b) = f.decide(t0(), 0, &view(11, 664), &[1]) else {
        panic!()
    };
    assert_eq!(
        (a.sequence, a.timestamp, a.payload_type, a.ssrc),
        (0, 0, 111, 9)
    );
    assert_eq!((b.sequence, b.timestamp), (1, 960));
}

#[test]
fn long_runs_wrap_many_times() {
    let mut f = Forwarder::new(Codec::Opus, 48_000, 1, 111, 5, 0);
    for i in 0..200_000u32 {
        let Decision::Forward(rw) = f.decide(t0(), 0, &view(i as u16, i * 960), &[0]) else {
            panic!("{i}")
        };
        assert_eq!(rw.sequence, (i as u16).wrapping_add(5));
    }
}
