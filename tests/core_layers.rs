//! The relay core choosing video layers: simulcast layers by each viewer's estimate, which layers
//! a publisher is told to send, SVC layers of VP9 and AV1, pinned tracks and presentations first.

use volna::core::room::{RelayConfig, RelayEvent, SessionId, TrackSpec};
use volna::core::rtcp::{Compound, RtcpPacket};
use volna::core::rtp::{Codec, ExtKind, ExtMap, RtpView};
use volna::testkit::{plis_in, remb, simulcast_track, vp8_payload, RtpBuilder, Sim, ViewerTrack};

mod common;
use common::call::*;

/// A simulcast publisher (layers "q" 320×180 and "f" 640×360, told apart by the RID extension)
/// and two viewers: the one with room gets the top layer, the one on a 300 kbps estimate the low
/// one; when its estimate grows it switches up at a key frame of the top layer (asked for with a
/// PLI on that layer's SSRC), and its stream stays one: sequence numbers without a gap,
/// timestamps rising, VP8 picture ids going on by one per frame. The publisher's transport-wide
/// numbers are answered with transport-cc feedback.
#[test]
fn simulcast_layers_follow_each_viewers_estimate() {
    const Q: u32 = 0x51;
    const F: u32 = 0x52;
    let mut sim = Sim::new(RelayConfig::default());
    let mut tracks = publisher_tracks();
    tracks[1] = simulcast_track(&["q", "f"]);
    for t in &mut tracks {
        t.ext.insert(5, ExtKind::TransportWideCc);
    }
    sim.publish(PUB, 77, tracks);
    sim.view(V1, viewer_tracks(0x100));
    sim.view(V2, viewer_tracks(0x200));
    sim.viewer_rtcp(V1, &remb(0x100, 0x101, 5_000_000));
    sim.viewer_rtcp(V2, &remb(0x200, 0x201, 300_000));

    // Per layer: (ssrc, rid, packets per frame, bytes per packet, size, seq, picture id, ts base)
    let mut layers = [
        (
            Q,
            b'q',
            1usize,
            300usize,
            (320u16, 180u16),
            1000u16,
            10u16,
            7u32,
        ),
        (F, b'f', 4, 1000, (640, 360), 50_000, 3000, 900_000),
    ];
    let mut key_due = [true, true];
    let mut tseq = 0u16;
    // Per viewer: (sequence, timestamp, picture id, payload length) of each video packet.
    type Got = Vec<(u16, u32, u16, usize)>;
    let mut run = |sim: &mut Sim, from_ms: u64, to_ms: u64| {
        let (mut v1, mut v2, mut feedback): (Got, Got, usize) = (Vec::new(), Vec::new(), 0);
        for ms in from_ms..to_ms {
            sim.goto(ms);
            if ms % 20 == 0 {
                let p = audio_at(ms).ext(4, b"0").ext(5, &tseq.to_be_bytes());
                tseq = tseq.wrapping_add(1);
                sim.feed(PUB, &p.build());
            }
            if ms % 33 == 0 {
                for (i, l) in layers.iter_mut().enumerate() {
                    let key = std::mem::take(&mut key_due[i]) || ms % 3000 == 0;
                    for k in 0..l.2 {
                        let t = tseq.to_be_bytes();
                        tseq = tseq.wrapping_add(1);
                        let payload = vp8_payload(k == 0, key, l.6, l.4, l.3, 0xab);
                        let ts = l.7.wrapping_add(ms as u32 * 90);
                        let p = RtpBuilder::new(l.0, 96)
                            .seq(l.5)
                            .ts(ts)
                            .ext(4, b"1")
                            .ext(10, &[l.1])
                            .ext(5, &t)
                            .payload(&payload);
                        sim.feed(PUB, &p.build());
                        l.5 = l.5.wrapping_add(1);
                    }
                    l.6 = (l.6 + 1) & 0x7fff;
                }
            }
            if ms % 10 == 0 {
                sim.timeout();
            }
            let (rtp_out, rtcp_out) = sim.sink.take();
            for (_, p) in rtcp_out.iter().filter(|(to, _)| *to == PUB) {
                for c in Compound::new(p) {
                    match c {
                        Ok(RtcpPacket::Pli(pli)) if pli.media_ssrc == Q => key_due[0] = true,
                        Ok(RtcpPacket::Pli(pli)) if pli.media_ssrc == F => key_due[1] = true,
                        Ok(RtcpPacket::TransportCc(_)) => feedback += 1,
                        _ => {}
                    }
                }
            }
            for (to, p) in &rtp_out {
                let v = RtpView::parse(p).unwrap();
                if v.payload_type != 98 {
                    continue;
                }
                let pl = v.payload(p);
                let pid = u16::from_be_bytes([pl[2], pl[3]]) & 0x7fff;
                let got = (v.sequence, v.timestamp, pid, pl.len());
                match *to {
                    V1 => v1.push(got),
                    V2 => v2.push(got),
                    _ => {}
                }
            }
        }
        (v1, v2, feedback)
    };
    let (v1, v2, feedback) = run(&mut sim, 0, 3000);
    assert!(
        feedback >= 30,
        "transport-cc feedback to the publisher: {feedback}"
    );
    // Layer rates become known within the first second; by then each viewer is on its layer.
    let late = |v: &Got| v[v.len() / 2..].iter().map(|p| p.3).collect::<Vec<_>>();
    assert!(
        v1.len() >= 200 && v2.len() >= 60,
        "both viewers get video: {} {}",
        v1.len(),
        v2.len()
    );
    assert!(late(&v1).iter().all(|&l| l == 1000), "V1 on the top layer");
    assert!(late(&v2).iter().all(|&l| l == 300), "V2 on the low layer");
    sim.goto(3000);
    sim.viewer_rtcp(V2, &remb(0x200, 0x201, 5_000_000));
    let (_, v2b, _) = run(&mut sim, 3000, 5000);
    assert!(
        v2b[v2b.len() / 2..].iter().all(|p| p.3 == 1000),
        "V2 switched up within a second"
    );
    let all: Got = v2.iter().chain(&v2b).copied().collect();
    for w in all.windows(2) {
        let ((s0, t0, p0, _), (s1, t1, p1, _)) = (w[0], w[1]);
        assert_eq!(s1, s0.wrapping_add(1), "one numbering for V2");
        assert!(
            t1.wrapping_sub(t0) < 90_000,
            "timestamps rise: {t0} -> {t1}"
        );
        let dp = p1.wrapping_sub(p0) & 0x7fff;
        assert!(dp <= 1, "picture ids go on by one per frame: {p0} -> {p1}");
    }
    assert!(
        all.windows(2).any(|w| w[0].3 == 300 && w[1].3 == 1000),
        "the switch is in the stream"
    );
}

/// A simulcast publisher is told which layers viewers need: with no one watching, after five
/// seconds only its lowest layer; it stops the other, and when a viewer with room comes, the top
/// layer is asked for again at once (its rate while it was sent is remembered).
#[test]
fn publishers_hear_which_layers_are_needed() {
    let mut sim = Sim::new(RelayConfig::default());
    let mut tracks = publisher_tracks();
    tracks[1] = simulcast_track(&["f", "q"]);
    sim.publish(PUB, 77, tracks);
    // Layer slots in RID order: 0 = "f" (1000 B packets), 1 = "q" (200 B).
    let layers: [(u32, u8, usize); 2] = [(0x61, b'f', 1000), (0x62, b'q', 200)];
    let mut seq = [0u16; 2];
    let mut events = Vec::new();
    let mut run = |sim: &mut Sim,
                   from_ms: u64,
                   to_ms: u64,
                   send: [bool; 2],
                   events: &mut Vec<(u64, usize, u8)>| {
        for ms in from_ms..to_ms {
            sim.goto(ms);
            if ms % 33 == 0 {
                for (i, &(ssrc, rid, len)) in layers.iter().enumerate().filter(|(i, _)| send[*i]) {
                    let p = RtpBuilder::new(ssrc, 96)
                        .seq(seq[i])
                        .ts(ms as u32 * 90)
                        .ext(4, b"1")
                        .ext(10, &[rid])
                        .payload(KEY)
                        .pad_to(len, 0);
                    seq[i] = seq[i].wrapping_add(1);
                    sim.feed(PUB, &p.build());
                }
            }
            if ms % 10 == 0 {
                sim.timeout();
                while let Some(ev) = sim.relay.poll_event() {
                    if let RelayEvent::Layers { track, active, .. } = ev {
                        events.push((ms, track, active));
                    }
                }
            }
            sim.sink.take();
        }
    };
    run(&mut sim, 0, 8000, [true, true], &mut events);
    assert_eq!(events.len(), 1, "{events:?}");
    let (at, track, active) = events[0];
    assert_eq!((track, active), (1, 0b10), "only the lowest layer, \"q\"");
    // Rates are known after a second of packets; five seconds later "f" is let go.
    assert!(
        (6_000..7_000).contains(&at),
        "after five seconds unneeded: {at}"
    );
    // The publisher stops "f"; a viewer of the video with room arrives.
    run(&mut sim, 8_000, 17_000, [false, true], &mut events);
    assert_eq!(
        events.len(),
        1,
        "nothing more while no one watches: {events:?}"
    );
    sim.goto(17_000);
    sim.view(V2, vec![viewer_tracks(0x200).remove(0)]);
    sim.viewer_rtcp(V2, &remb(0x200, 0x201, 5_000_000));
    run(&mut sim, 17_000, 17_500, [false, true], &mut events);
    assert_eq!(events.len(), 2, "{events:?}");
    assert_eq!((events[1].1, events[1].2), (1, 0b11), "both layers again");
}

/// One packet of an SVC test stream: its payload, header extension elements (id, data) and
/// marker bit.
struct SvcPacket {
    payload: Vec<u8>,
    ext: Vec<(u8, Vec<u8>)>,
    marker: bool,
}

/// An SVC publisher (`picture(n, key)` makes picture n's packets, 30 a second) and two viewers:
/// V1 with room gets every one of the `layers` spatial layers, its pictures ending on the top one;
/// V2 at `narrow_bps` only layer 0, each of its packets ending a picture. Given room, V2 gets every
/// layer from the key picture the relay asks for, in one gap-free numbering throughout.
/// `layer_of` reads a forwarded payload's spatial layer.
fn svc_layers_follow_estimates(
    video: TrackSpec,
    narrow_bps: u64,
    layers: u8,
    layer_of: fn(&[u8]) -> u8,
    mut picture: impl FnMut(u32, bool) -> Vec<SvcPacket>,
) {
    let mut sim = Sim::new(RelayConfig::default());
    let mut tracks = publisher_tracks();
    tracks[1] = video;
    sim.publish(PUB, 77, tracks);
    sim.view(V1, viewer_tracks(0x100));
    sim.view(V2, viewer_tracks(0x200));
    sim.viewer_rtcp(V1, &remb(0x100, 0x101, 5_000_000));
    sim.viewer_rtcp(V2, &remb(0x200, 0x201, narrow_bps));
    let (mut seq, mut n, mut key_due) = (100u16, 0u32, true);
    // Per viewer: (sequence, spatial layer, marker) of each video packet.
    type Got = Vec<(u16, u8, bool)>;
    let mut run = |sim: &mut Sim, from_ms: u64, to_ms: u64| {
        let (mut v1, mut v2, mut plis): (Got, Got, usize) = (Vec::new(), Vec::new(), 0);
        for ms in from_ms..to_ms {
            sim.goto(ms);
            if ms % 20 == 0 {
                sim.feed(PUB, &audio_at(ms).build());
            }
            if ms % 33 == 0 {
                for pkt in picture(n, std::mem::take(&mut key_due)) {
                    let mut p = video_rtp(seq, n * 3000)
                        .marker(pkt.marker)
                        .payload(&pkt.payload);
                    for (id, data) in &pkt.ext {
                        p = p.ext(*id, data);
                    }
                    sim.feed(PUB, &p.build());
                    seq = seq.wrapping_add(1);
                }
                n += 1;
            }
            if ms % 10 == 0 {
                sim.timeout();
            }
            let (rtp_out, rtcp_out) = sim.sink.take();
            for (_, pli) in plis_in(&rtcp_out).filter(|(to, _)| *to == PUB) {
                assert_eq!(pli.media_ssrc, VIDEO_SSRC);
                key_due = true;
                plis += 1;
            }
            for (to, p) in &rtp_out {
                let v = RtpView::parse(p).unwrap();
                if v.payload_type != 98 {
                    continue;
                }
                let got = (v.sequence, layer_of(v.payload(p)), v.marker);
                match *to {
                    V1 => v1.push(got),
                    V2 => v2.push(got),
                    _ => {}
                }
            }
        }
        (v1, v2, plis)
    };
    let (v1, v2, _) = run(&mut sim, 0, 3000);
    // The last 40 packets: well after the first second, when the rates are known.
    let late = |v: &Got| v[v.len().saturating_sub(40)..].to_vec();
    assert!(v1.len() >= 300, "V1 gets video: {}", v1.len());
    assert!(
        (0..layers).all(|s| late(&v1).iter().any(|p| p.1 == s)),
        "V1 gets every spatial layer"
    );
    let marked: Vec<u8> = late(&v1).iter().filter(|p| p.2).map(|p| p.1).collect();
    assert!(
        marked.len() >= 4 && marked.iter().all(|&s| s == layers - 1),
        "V1's pictures end on the top layer: {marked:?}"
    );
    let v2_late = late(&v2);
    assert!(v2.len() >= 60, "V2 gets video: {}", v2.len());
    assert!(
        v2_late.iter().all(|p| p.1 == 0 && p.2),
        "V2 gets layer 0 only, each packet ending its picture: {v2_late:?}"
    );
    sim.goto(3000);
    sim.viewer_rtcp(V2, &remb(0x200, 0x201, 5_000_000));
    let (_, v2b, plis) = run(&mut sim, 3000, 5000);
    assert!(plis >= 1, "a key picture is asked for");
    assert!(
        (0..layers).all(|s| late(&v2b).iter().any(|p| p.1 == s)),
        "V2 gets every layer once it has room"
    );
    let all: Got = v2.iter().chain(&v2b).copied().collect();
    for w in all.windows(2) {
        assert_eq!(
            w[1].0,
            w[0].0.wrapping_add(1),
            "one numbering for V2: {w:?}"
        );
    }
}

/// VP9 with three spatial and three temporal layers in one SSRC, named in its payload
/// descriptors.
#[test]
fn svc_layers_follow_each_viewers_estimate() {
    let mut video = publisher_tracks().remove(1);
    video.codec = Codec::Vp9;
    // Packets per layer frame and their size, by spatial id: about 50, 250 and 1000 kbps.
    const PACKETS: [(usize, usize); 3] = [(1, 200), (2, 500), (4, 1000)];
    let picture = |n: u32, key: bool| {
        let tid = if key {
            0
        } else {
            [0u8, 2, 1, 2][n as usize % 4]
        };
        let mut out = Vec::new();
        for (sid, &(count, len)) in PACKETS.iter().enumerate() {
            for k in 0..count {
                // L, B on the first packet, E on the last, P unless key; then the layer byte
                // (U on every frame, D above layer 0) and TL0PICIDX.
                let mut b0 = 0x20;
                b0 |= if k == 0 { 0x08 } else { 0 };
                b0 |= if k + 1 == count { 0x04 } else { 0 };
                b0 |= if key { 0 } else { 0x40 };
                let l = (tid << 5) | 0x10 | ((sid as u8) << 1) | u8::from(sid > 0);
                let mut payload = vec![b0, l, n as u8];
                payload.resize(len, 0xab);
                let marker = sid == 2 && k + 1 == count;
                out.push(SvcPacket {
                    payload,
                    ext: Vec::new(),
                    marker,
                });
            }
        }
        out
    };
    svc_layers_follow_estimates(video, 200_000, 3, |p| (p[1] >> 1) & 7, picture);
}

/// Bits written MSB first, for building dependency descriptors.
fn bits(fields: &[(u32, u32)]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut n = 0u32;
    for &(width, value) in fields {
        for i in (0..width).rev() {
            if n.is_multiple_of(8) {
                out.push(0);
            }
            *out.last_mut().unwrap() |= (((value >> i) & 1) as u8) << (7 - n % 8);
            n += 1;
        }
    }
    out
}

/// AV1 with two spatial layers in one SSRC, described by the dependency descriptor (its
/// structure sent with key frames).
#[test]
fn av1_layers_follow_the_dependency_descriptor() {
    let mut video = publisher_tracks().remove(1);
    video.codec = Codec::Av1;
    video.ext = ExtMap::from_pairs(&[(4, ExtKind::Mid), (12, ExtKind::DependencyDescriptor)]);
    // L2T1: decode targets S0 and S1; templates S0 key (S S), S0 (R R), S1 on a key picture
    // (- S), S1 (- R); no chains, no resolutions.
    #[rustfmt::skip]
    let structure: Vec<(u32, u32)> = vec![
        (1, 1), (1, 0), (1, 0), (1, 0), (1, 0), // structure present, nothing custom
        (6, 0), (5, 1),                         // template id offset 0, two decode targets
        (2, 0), (2, 2), (2, 0), (2, 3),         // layers: S0, S0, S1, S1
        (2, 2), (2, 2), (2, 3), (2, 3), (2, 0), (2, 2), (2, 0), (2, 3), // dtis
        (1, 0), (1, 1), (4, 1), (1, 0), (1, 1), (4, 0), (1, 0), (1, 1), (4, 0), (1, 1), (4, 1), (1, 0), // fdiffs
        (1, 0), (1, 0), // no chains, no resolutions
    ];
    // Packets per frame and their size, by spatial id: about 50 and 500 kbps.
    const PACKETS: [(usize, usize); 2] = [(1, 200), (4, 500)];
    let picture = |n: u32, key: bool| {
        let mut out = Vec::new();
        for (sid, &(count, len)) in PACKETS.iter().enumerate() {
            let template = match (sid, key) {
                (0, true) => 0,
                (0, false) => 1,
                (_, true) => 2,
                _ => 3,
            };
            for k in 0..count {
                let first = key && sid == 0 && k == 0;
                let mut f = vec![
                    (1, u32::from(k == 0)),
                    (1, u32::from(k + 1 == count)),
                    (6, template),
                    (16, n * 2 + sid as u32),
                ];
                if first {
                    f.extend_from_slice(&structure);
                }
                // Aggregation header: N on a key frame's first packet; then the spatial id, for
                // the test to read back.
                let mut payload = vec![0x10 | if first { 0x08 } else { 0 }, sid as u8];
                payload.resize(len, 0xab);
                let marker = sid == 1 && k + 1 == count;
                out.push(SvcPacket {
                    payload,
                    ext: vec![(12, bits(&f))],
                    marker,
                });
            }
        }
        out
    };
    svc_layers_follow_estimates(video, 250_000, 2, |p| p[1], picture);
}

/// Which video a short link carries at its best: with room for one top layer of two, the pinned
/// track gets it; without a pin, a presentation (RFC 4796 slides) goes before a camera.
#[test]
fn pinned_tracks_and_presentations_go_first() {
    const P2: SessionId = 5;
    const V: SessionId = 6;
    let mut sim = Sim::new(RelayConfig::default());
    // Each publisher: simulcast q (about 80 kbps) and f (about 1 Mbps), SSRCs base+1 and base+2.
    for (id, _) in [(PUB, 0x50u32), (P2, 0x60)] {
        let mut tracks = publisher_tracks();
        tracks[1] = simulcast_track(&["q", "f"]);
        sim.publish(id, 77, tracks);
    }
    let tracks = [PUB, P2]
        .into_iter()
        .enumerate()
        .map(|(i, publisher)| {
            ViewerTrack::new(publisher, 1, 0x700 + i as u32, 98)
                .mid(&i.to_string())
                .ext(&[(2, ExtKind::Mid)])
                .build()
        })
        .collect();
    sim.view(V, tracks);
    sim.viewer_rtcp(V, &remb(0x700, 0x701, 1_500_000));
    // (publisher, base SSRC, next sequence numbers per layer, key frame due per layer)
    let mut pubs = [
        (PUB, 0x50u32, [0u16, 5000], [true; 2]),
        (P2, 0x60, [0, 5000], [true; 2]),
    ];
    let mut ms = 0u64;
    // Runs `secs` seconds; returns, per publisher, the largest payload V got in the last one.
    let mut run = |sim: &mut Sim, secs: u64| {
        let mut top = [0usize; 2];
        let end = ms + secs * 1000;
        while ms < end {
            sim.goto(ms);
            if ms.is_multiple_of(33) {
                for (id, base, seqs, keys) in pubs.iter_mut() {
                    for (l, (rid, count, len)) in
                        [(b'q', 1, 300), (b'f', 4, 1000)].into_iter().enumerate()
                    {
                        let key = std::mem::take(&mut keys[l]);
                        for k in 0..count {
                            let mut payload =
                                vec![if k == 0 { 0x10 } else { 0x00 }, u8::from(!key)];
                            if k == 0 && key {
                                payload.extend_from_slice(&[0, 0, 0x9d, 0x01, 0x2a]);
                                payload.extend_from_slice(&[(l as u8 + 1) * 100, 0, 100, 0]);
                            }
                            payload.resize(len, 0xab);
                            let p = RtpBuilder::new(*base + 1 + l as u32, 96)
                                .seq(seqs[l])
                                .ts(ms as u32 * 90)
                                .ext(4, b"1")
                                .ext(10, &[rid])
                                .payload(&payload);
                            sim.feed(*id, &p.build());
                            seqs[l] = seqs[l].wrapping_add(1);
                        }
                    }
                }
            }
            if ms.is_multiple_of(10) {
                sim.timeout();
            }
            let (rtp_out, rtcp_out) = sim.sink.take();
            for (_, pli) in plis_in(&rtcp_out) {
                for (_, base, _, keys) in pubs.iter_mut() {
                    if let Some(l) = pli.media_ssrc.checked_sub(*base + 1).filter(|&l| l < 2) {
                        keys[l as usize] = true;
                    }
                }
            }
            for (to, p) in &rtp_out {
                let v = RtpView::parse(p).unwrap();
                if *to == V && ms + 1000 >= end {
                    let i = (v.ssrc - 0x700) as usize;
                    top[i] = top[i].max(v.payload(p).len());
                }
            }
            ms += 1;
        }
        top
    };
    assert!(sim.relay.set_pinned(V, 1, true));
    assert_eq!(
        run(&mut sim, 4),
        [300, 1000],
        "the pinned track gets the top layer"
    );
    sim.relay.set_pinned(V, 1, false);
    sim.relay.set_pinned(V, 0, true);
    assert_eq!(run(&mut sim, 3), [1000, 300], "the pin moved");
    sim.relay.set_pinned(V, 0, false);
    sim.relay.set_slides(P2, 1, true);
    assert!(sim.relay.track_is_slides(P2, 1));
    assert_eq!(run(&mut sim, 3), [300, 1000], "the presentation goes first");
}
