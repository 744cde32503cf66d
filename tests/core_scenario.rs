//! The relay core on virtual time: one publisher (Opus + VP8), two viewers joining at different
//! moments. Every output goes through a recording sink, so each step's effect is checked exactly.

use std::time::{Duration, Instant};

use volna::core::room::{
    Feedback, MediaKind, Relay, RelayConfig, RelayEvent, SessionId, Sink, TrackRef, TrackSpec,
    ViewerTrackSpec,
};
use volna::core::rtcp::{Compound, Pli, RtcpPacket, SenderReport};
use volna::core::rtp::{Codec, ExtKind, ExtMap, RtpView};

const PUB: SessionId = 1;
const V1: SessionId = 2;
const V2: SessionId = 3;
const V3: SessionId = 4;
const AUDIO_SSRC: u32 = 0xa0d1;
const VIDEO_SSRC: u32 = 0x7e0;

/// Packets sent, with the session each went to.
type Sent = Vec<(SessionId, Vec<u8>)>;

#[derive(Default)]
struct Recorder {
    rtp: Sent,
    rtcp: Sent,
}

impl Sink for Recorder {
    fn rtp(&mut self, to: SessionId, header: &[u8], prefix: &[u8], payload: &[u8]) {
        let mut p = header.to_vec();
        p.extend_from_slice(prefix);
        p.extend_from_slice(payload);
        self.rtp.push((to, p));
    }
    fn rtcp(&mut self, to: SessionId, packet: &[u8]) {
        self.rtcp.push((to, packet.to_vec()));
    }
}

impl Recorder {
    fn take(&mut self) -> (Sent, Sent) {
        (
            std::mem::take(&mut self.rtp),
            std::mem::take(&mut self.rtcp),
        )
    }
}

fn ext(pairs: &[(u8, ExtKind)]) -> ExtMap {
    ExtMap::from_pairs(pairs)
}

fn publisher_tracks() -> Vec<TrackSpec> {
    let fb = Feedback {
        nack: true,
        pli: true,
        fir: true,
        remb: true,
    };
    vec![
        TrackSpec {
            kind: MediaKind::Audio,
            mid: "0".into(),
            codec: Codec::Opus,
            payload_type: 111,
            clock_rate: 48000,
            ssrc: Some(AUDIO_SSRC),
            ext: ext(&[(1, ExtKind::AudioLevel), (4, ExtKind::Mid)]),
            feedback: Feedback::default(),
            rids: Vec::new(),
        },
        TrackSpec {
            kind: MediaKind::Video,
            mid: "1".into(),
            codec: Codec::Vp8,
            payload_type: 96,
            clock_rate: 90000,
            ssrc: Some(VIDEO_SSRC),
            ext: ext(&[(4, ExtKind::Mid)]),
            feedback: fb,
            rids: Vec::new(),
        },
    ]
}

fn viewer_tracks(base_ssrc: u32) -> Vec<ViewerTrackSpec> {
    vec![
        ViewerTrackSpec {
            source: TrackRef {
                publisher: PUB,
                track: 1,
            },
            mid: "0".into(),
            ssrc: base_ssrc + 1,
            payload_type: 98,
            ext: ext(&[(2, ExtKind::Mid)]),
            initial_seq: 100,
            initial_ts: 5000,
            rtx: None,
            red: None,
        },
        ViewerTrackSpec {
            source: TrackRef {
                publisher: PUB,
                track: 0,
            },
            mid: "1".into(),
            ssrc: base_ssrc + 2,
            payload_type: 109,
            ext: ext(&[(2, ExtKind::Mid), (3, ExtKind::AudioLevel)]),
            initial_seq: 7,
            initial_ts: 0,
            rtx: None,
            red: None,
        },
    ]
}

/// The transport-wide sequence number (extension id 5) of a packet sent to a viewer.
fn transport_seq(p: &[u8]) -> Option<u16> {
    let view = RtpView::parse(p).unwrap();
    view.extensions(p)
        .find(|(id, _)| *id == 5)
        .map(|(_, d)| u16::from_be_bytes([d[0], d[1]]))
}

/// A viewer's NACK for one packet.
fn nack_for(sender_ssrc: u32, media_ssrc: u32, seq: u16) -> Vec<u8> {
    let mut b = [0u8; 64];
    let n = volna::core::rtcp::nack::write_list(sender_ssrc, media_ssrc, &[seq], &mut b).unwrap();
    b[..n].to_vec()
}

/// The viewer tracks with transport-wide sequence numbers (id 5), and an RTX stream (payload type
/// 99, SSRC 0x1a1a) on the video track when `rtx`.
fn transport_cc_tracks(base_ssrc: u32, rtx: bool) -> Vec<ViewerTrackSpec> {
    let mut tracks = viewer_tracks(base_ssrc);
    for t in &mut tracks {
        t.ext.insert(5, ExtKind::TransportWideCc);
    }
    if rtx {
        tracks[0].rtx = Some(volna::core::room::Rtx {
            payload_type: 99,
            ssrc: 0x1a1a,
        });
    }
    tracks
}

fn rtp(ssrc: u32, pt: u8, seq: u16, ts: u32, ext_elems: &[u8], payload: &[u8]) -> Vec<u8> {
    let mut p = vec![0x80, pt, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
    p[2..4].copy_from_slice(&seq.to_be_bytes());
    p[4..8].copy_from_slice(&ts.to_be_bytes());
    p[8..12].copy_from_slice(&ssrc.to_be_bytes());
    if !ext_elems.is_empty() {
        p[0] |= 0x10;
        let words = ext_elems.len().div_ceil(4);
        p.extend_from_slice(&[0xbe, 0xde, 0, words as u8]);
        p.extend_from_slice(ext_elems);
        p.resize(p.len() + words * 4 - ext_elems.len(), 0);
    }
    p.extend_from_slice(payload);
    p
}

/// A viewer of all the given tracks, as WHEP makes one.
fn add_viewer(
    relay: &mut Relay,
    now: Instant,
    id: SessionId,
    tracks: Vec<ViewerTrackSpec>,
    sink: &mut Recorder,
) {
    relay.add_viewer(id, "room").unwrap();
    for t in tracks {
        relay.add_viewer_track(now, id, t, sink).unwrap();
    }
}

fn feed(relay: &mut Relay, now: Instant, pkt: &[u8], sink: &mut Recorder) {
    feed_from(relay, now, PUB, pkt, sink);
}

fn rtcp_of(out: &[(SessionId, Vec<u8>)], to: SessionId) -> Vec<String> {
    out.iter()
        .filter(|(s, _)| *s == to)
        .flat_map(|(_, p)| {
            Compound::new(p)
                .map(|r| format!("{:?}", r.expect("relay writes valid RTCP")))
                .collect::<Vec<_>>()
        })
        .collect()
}

const KEY: &[u8] = &[0x10, 0x00, 0x9d, 0x01, 0x2a];
const DELTA: &[u8] = &[0x10, 0x01, 0x00];

#[test]
fn meeting_on_virtual_time() {
    let t0 = Instant::now();
    let at = |ms: u64| t0 + Duration::from_millis(ms);
    let mut relay = Relay::new(RelayConfig::default());
    let mut sink = Recorder::default();
    relay
        .add_publisher(PUB, "room", 0x5e1f, publisher_tracks())
        .unwrap();
    assert_eq!(relay.room_publishers("room"), Some(&[PUB][..]));

    // Viewer 1 joins: the publisher is asked for a keyframe at once.
    add_viewer(&mut relay, at(0), V1, viewer_tracks(1000), &mut sink);
    let (_, rtcp) = sink.take();
    assert_eq!(
        rtcp_of(&rtcp, PUB),
        vec![format!(
            "{:?}",
            RtcpPacket::Pli(Pli {
                sender_ssrc: 0x5e1f,
                media_ssrc: VIDEO_SSRC
            })
        )]
    );

    // Viewer 2 joins 100 ms later: within the rate limit, so no second request yet.
    add_viewer(&mut relay, at(100), V2, viewer_tracks(2000), &mut sink);
    assert!(
        sink.take().1.is_empty(),
        "keyframe requests are rate-limited per publisher track"
    );
    let due = relay.poll_timeout().expect("deferred request is scheduled");
    assert_eq!(
        due,
        at(0) + RelayConfig::default().keyframe_request_interval
    );

    // Audio reaches both at once, with their SSRC, PT, MID and the level under their id.
    feed(
        &mut relay,
        at(120),
        &rtp(
            AUDIO_SSRC,
            111,
            40,
            96000,
            &[0x10, 0x85, 0x40, b'0'],
            &[0xfc, 1, 2],
        ),
        &mut sink,
    );
    let (out, _) = sink.take();
    assert_eq!(out.len(), 2);
    for (to, pkt) in &out {
        let v = RtpView::parse(pkt).unwrap();
        let base = if *to == V1 { 1000 } else { 2000 };
        assert_eq!(
            (v.ssrc, v.payload_type, v.sequence, v.timestamp),
            (base + 2, 109, 7, 0)
        );
        let exts: Vec<_> = v.extensions(pkt).collect();
        assert_eq!(exts, vec![(2, &b"1"[..]), (3, &[0x85][..])]);
        assert_eq!(v.payload(pkt), &[0xfc, 1, 2]);
    }

    // Video: a delta frame is held back, the keyframe starts the stream, numbering is continuous.
    feed(
        &mut relay,
        at(130),
        &rtp(VIDEO_SSRC, 96, 65535, 1_000, &[], DELTA),
        &mut sink,
    );
    assert!(sink.take().0.is_empty(), "no video before a keyframe");
    feed(
        &mut relay,
        at(140),
        &rtp(VIDEO_SSRC, 96, 0, 4_000, &[], KEY),
        &mut sink,
    );
    feed(
        &mut relay,
        at(150),
        &rtp(VIDEO_SSRC, 96, 1, 4_000, &[], DELTA),
        &mut sink,
    );
    let (out, _) = sink.take();
    let v1: Vec<(u16, u32)> = out
        .iter()
        .filter(|(s, _)| *s == V1)
        .map(|(_, p)| {
            RtpView::parse(p)
                .map(|v| (v.sequence, v.timestamp))
                .unwrap()
        })
        .collect();
    assert_eq!(v1, vec![(100, 5000), (101, 5000)]);

    // The deferred keyframe request goes out when its interval ends.
    relay.handle_timeout(due, &mut sink);
    let (_, rtcp) = sink.take();
    let to_pub = rtcp_of(&rtcp, PUB);
    assert!(
        to_pub.iter().any(|s| s.starts_with("Pli")),
        "deferred PLI sent: {to_pub:?}"
    );
    assert!(
        to_pub.iter().any(|s| s.starts_with("ReceiverReport")),
        "receiver report sent: {to_pub:?}"
    );
    assert!(
        to_pub.iter().any(|s| s.contains("bitrate_bps: 2500000")),
        "REMB cap sent: {to_pub:?}"
    );

    // A sender report is translated into each viewer's SSRC and timestamp space.
    let mut sr = [0u8; 28];
    SenderReport {
        ssrc: VIDEO_SSRC,
        ntp: 0xdead_beef_0000_0000,
        rtp_timestamp: 4_000 + 900,
        packets: 9,
        octets: 99,
    }
    .write(&mut sr)
    .unwrap();
    relay.handle_publisher_rtcp(at(600), PUB, &sr, &mut sink);
    let (_, rtcp) = sink.take();
    let to_v1 = rtcp_of(&rtcp, V1);
    assert_eq!(
        to_v1,
        vec![format!(
            "{:?}",
            RtcpPacket::SenderReport(SenderReport {
                ssrc: 1001,
                ntp: 0xdead_beef_0000_0000,
                rtp_timestamp: 5900,
                packets: 2,
                octets: (KEY.len() + DELTA.len()) as u32
            })
        )]
    );

    // Viewer 1 NACKs its seq 101 (the publisher's 1, in the cache) and 150 (never sent by the
    // publisher, so not cached): the first is resent to viewer 1 alone, unchanged; the second is
    // asked of the publisher in its own numbering (150 - 100 = 50).
    let mut nack_buf = vec![
        0x81, 205, 0, 4, 0, 0, 0, 9, 0, 0, 0x03, 0xe9, 0, 101, 0, 0, 0, 150, 0, 0,
    ];
    nack_buf[8..12].copy_from_slice(&1001u32.to_be_bytes());
    relay.handle_viewer_rtcp(at(700), V1, &nack_buf, &mut sink);
    let (out, rtcp) = sink.take();
    assert_eq!(out.len(), 1, "one resend, to the viewer that lost it");
    let (to, pkt) = &out[0];
    let v = RtpView::parse(pkt).unwrap();
    assert_eq!(
        (*to, v.ssrc, v.sequence, v.timestamp),
        (V1, 1001, 101, 5000)
    );
    assert_eq!(v.payload(pkt), DELTA);
    assert_eq!(relay.counters().retransmitted_packets, 1);
    let (to, pkt) = &rtcp[0];
    assert_eq!(*to, PUB);
    let Some(Ok(RtcpPacket::Nack(n))) = Compound::new(pkt).next() else {
        panic!("expected a NACK")
    };
    assert_eq!(
        (n.media_ssrc, n.pairs().collect::<Vec<_>>()),
        (VIDEO_SSRC, vec![(50, 0)])
    );
    // Past the cache's age limit the publisher is asked instead.
    relay.handle_viewer_rtcp(at(1700), V1, &nack_buf, &mut sink);
    let (out, rtcp) = sink.take();
    assert!(out.is_empty());
    let Some(Ok(RtcpPacket::Nack(n))) = Compound::new(&rtcp[0].1).next() else {
        panic!("expected a NACK")
    };
    assert_eq!(n.pairs().collect::<Vec<_>>(), vec![(1, 0), (50, 0)]);

    // A viewer's PLI is passed upstream (outside the rate-limit window).
    let mut pli = [0u8; 12];
    Pli {
        sender_ssrc: 9,
        media_ssrc: 2001,
    }
    .write(&mut pli)
    .unwrap();
    relay.handle_viewer_rtcp(at(2000), V2, &pli, &mut sink);
    let (_, rtcp) = sink.take();
    assert_eq!(
        rtcp_of(&rtcp, PUB),
        vec![format!(
            "{:?}",
            RtcpPacket::Pli(Pli {
                sender_ssrc: 0x5e1f,
                media_ssrc: VIDEO_SSRC
            })
        )]
    );

    // Viewer 2 leaves: only viewer 1 receives from now on.
    assert!(relay.remove_viewer(V2));
    feed(
        &mut relay,
        at(2100),
        &rtp(VIDEO_SSRC, 96, 2, 7_000, &[], DELTA),
        &mut sink,
    );
    let (out, _) = sink.take();
    assert_eq!(out.iter().map(|(s, _)| *s).collect::<Vec<_>>(), vec![V1]);

    // The publisher leaves: viewer 1 gets a BYE for its streams and is reported as orphaned.
    let ended = relay.remove_publisher(PUB, &mut sink);
    assert_eq!(ended, vec![(V1, vec![0, 1])]);
    assert_eq!(relay.live_viewer_tracks(V1), 0);
    let (_, rtcp) = sink.take();
    let bye = rtcp_of(&rtcp, V1);
    assert_eq!(bye.len(), 1);
    assert!(bye[0].starts_with("Bye"));
    assert!(relay.remove_viewer(V1));
    assert_eq!(
        (
            relay.room_count(),
            relay.publisher_count(),
            relay.viewer_count()
        ),
        (0, 0, 0)
    );
}

#[test]
fn packets_of_unknown_streams_are_dropped_and_counted() {
    let t0 = Instant::now();
    let mut relay = Relay::new(RelayConfig::default());
    let mut sink = Recorder::default();
    relay
        .add_publisher(PUB, "room", 1, publisher_tracks())
        .unwrap();
    add_viewer(&mut relay, t0, V1, viewer_tracks(1000), &mut sink);
    sink.take();
    // Unknown SSRC with an unknown payload type.
    feed(&mut relay, t0, &rtp(0x999, 55, 1, 1, &[], &[1]), &mut sink);
    assert!(sink.take().0.is_empty());
    assert_eq!(relay.counters().dropped_packets, 1);
    // From a session that is not a publisher.
    let pkt = rtp(AUDIO_SSRC, 111, 1, 1, &[], &[1]);
    feed_from(&mut relay, t0, 42, &pkt, &mut sink);
    assert_eq!(relay.counters().dropped_packets, 2);
    // Garbage RTCP from a viewer changes nothing.
    relay.handle_viewer_rtcp(t0, V1, &[0x81, 206, 0, 9, 1, 2], &mut sink);
    assert!(sink.take().1.is_empty());
}

/// One publisher of audio only, with the audio-level extension under id 1.
fn talker(relay: &mut Relay, id: SessionId, ssrc: u32) {
    let track = TrackSpec {
        kind: MediaKind::Audio,
        mid: "0".into(),
        codec: Codec::Opus,
        payload_type: 111,
        clock_rate: 48000,
        ssrc: Some(ssrc),
        ext: ext(&[(1, ExtKind::AudioLevel)]),
        feedback: Feedback::default(),
        rids: Vec::new(),
    };
    relay.add_publisher(id, "room", 1, vec![track]).unwrap();
}

#[test]
fn active_speaker_follows_audio_levels_with_hysteresis() {
    let t0 = Instant::now();
    let mut relay = Relay::new(RelayConfig::default());
    let mut sink = Recorder::default();
    talker(&mut relay, 10, 100);
    talker(&mut relay, 11, 101);
    let mut seq = 0u16;
    // Levels in -dBov: 127 is silence, smaller is louder.
    let mut speak =
        |relay: &mut Relay, sink: &mut Recorder, ms: u64, levels: [(u32, SessionId, u8); 2]| {
            for (ssrc, from, level) in levels {
                seq = seq.wrapping_add(1);
                let pkt = rtp(ssrc, 111, seq, 960 * u32::from(seq), &[0x10, level], &[1]);
                feed_from(relay, t0 + Duration::from_millis(ms), from, &pkt, sink);
            }
        };
    let mut events = Vec::new();
    let mut run =
        |relay: &mut Relay, sink: &mut Recorder, from_ms: u64, to_ms: u64, a: u8, b: u8| {
            for ms in (from_ms..to_ms).step_by(20) {
                speak(relay, sink, ms, [(100, 10, a), (101, 11, b)]);
                relay.handle_timeout(t0 + Duration::from_millis(ms), sink);
                while let Some(e) = relay.poll_event() {
                    events.push((ms, e));
                }
            }
        };
    // Both silent: no speaker.
    run(&mut relay, &mut sink, 0, 1000, 127, 127);
    // 10 talks (-20 dBov), 11 is quiet: 10 becomes the speaker.
    run(&mut relay, &mut sink, 1000, 2000, 20, 110);
    // 11 barely louder than 10: not enough to take over.
    run(&mut relay, &mut sink, 2000, 3000, 21, 20);
    // Both equally loud, each a little louder in turn every 400 ms: the highlight stays.
    for turn in 0..5 {
        let (a, b) = if turn % 2 == 0 { (22, 12) } else { (12, 22) };
        run(
            &mut relay,
            &mut sink,
            3000 + turn * 400,
            3400 + turn * 400,
            a,
            b,
        );
    }
    // 11 clearly louder for good: it takes over after leading for a second.
    run(&mut relay, &mut sink, 5000, 6500, 60, 10);
    let who: Vec<Option<SessionId>> = events
        .iter()
        .map(|(_, e)| match e {
            RelayEvent::ActiveSpeaker { publisher, .. } => *publisher,
            other => panic!("unexpected {other:?}"),
        })
        .collect();
    assert_eq!(who, vec![Some(10), Some(11)], "{events:?}");
    assert!(
        events[0].0 >= 1000 && events[0].0 < 1400,
        "speaker found within 400 ms: {events:?}"
    );
    assert!(
        events[1].0 >= 6000 && events[1].0 < 6500,
        "taken over after leading for a second: {events:?}"
    );
    assert_eq!(relay.active_speaker("room"), Some(11));
    // The speaker leaves: the room has none.
    relay.remove_publisher(11, &mut sink);
    assert_eq!(
        relay.poll_event(),
        Some(RelayEvent::ActiveSpeaker {
            room: "room".into(),
            publisher: None
        })
    );
}

#[test]
fn one_viewer_receives_tracks_of_several_publishers() {
    let t0 = Instant::now();
    let mut relay = Relay::new(RelayConfig::default());
    let mut sink = Recorder::default();
    talker(&mut relay, 10, 100);
    talker(&mut relay, 11, 101);
    relay.add_viewer(20, "room").unwrap();
    let spec = |publisher, ssrc| ViewerTrackSpec {
        source: TrackRef {
            publisher,
            track: 0,
        },
        mid: "0".into(),
        ssrc,
        payload_type: 111,
        ext: ExtMap::default(),
        initial_seq: 0,
        initial_ts: 0,
        rtx: None,
        red: None,
    };
    let a = relay
        .add_viewer_track(t0, 20, spec(10, 500), &mut sink)
        .unwrap();
    let b = relay
        .add_viewer_track(t0, 20, spec(11, 501), &mut sink)
        .unwrap();
    assert_eq!((a, b), (0, 1));
    feed_from(
        &mut relay,
        t0,
        10,
        &rtp(100, 111, 1, 0, &[], &[1]),
        &mut sink,
    );
    feed_from(
        &mut relay,
        t0,
        11,
        &rtp(101, 111, 1, 0, &[], &[2]),
        &mut sink,
    );
    let ssrcs: Vec<u32> = sink
        .take()
        .0
        .iter()
        .map(|(_, p)| RtpView::parse(p).unwrap().ssrc)
        .collect();
    assert_eq!(ssrcs, vec![500, 501]);
    // Unsubscribing one track stops only that one; the other keeps its index.
    assert!(relay.remove_viewer_track(20, a));
    assert!(
        !relay.remove_viewer_track(20, a),
        "removing twice reports nothing to do"
    );
    feed_from(
        &mut relay,
        t0,
        10,
        &rtp(100, 111, 2, 960, &[], &[1]),
        &mut sink,
    );
    feed_from(
        &mut relay,
        t0,
        11,
        &rtp(101, 111, 2, 960, &[], &[2]),
        &mut sink,
    );
    let ssrcs: Vec<u32> = sink
        .take()
        .0
        .iter()
        .map(|(_, p)| RtpView::parse(p).unwrap().ssrc)
        .collect();
    assert_eq!(ssrcs, vec![501]);
    assert_eq!(relay.live_viewer_tracks(20), 1);
    // Publisher 11 leaves: the viewer learns which of its tracks ended.
    assert_eq!(relay.remove_publisher(11, &mut sink), vec![(20, vec![1])]);
    assert_eq!(relay.live_viewer_tracks(20), 0);
}

fn feed_from(relay: &mut Relay, now: Instant, from: SessionId, pkt: &[u8], sink: &mut Recorder) {
    let pkt = bytes::Bytes::copy_from_slice(pkt);
    let view = RtpView::parse(&pkt).expect("test packet parses");
    relay.handle_rtp(now, from, &pkt, &view, sink);
}

/// A viewer that negotiated transport-wide sequence numbers gets them on every packet, numbered
/// across its tracks; its transport-cc feedback drives its bandwidth estimate. A viewer without
/// them gets no such extension.
#[test]
fn transport_cc_numbers_packets_and_feedback_drives_the_estimate() {
    use volna::core::rtcp::twcc::{self, PacketResult};
    let t0 = Instant::now();
    let mut relay = Relay::new(RelayConfig::default());
    let mut sink = Recorder::default();
    relay
        .add_publisher(PUB, "room", 77, publisher_tracks())
        .unwrap();
    add_viewer(
        &mut relay,
        t0,
        V1,
        transport_cc_tracks(0x100, false),
        &mut sink,
    );
    add_viewer(&mut relay, t0, V2, viewer_tracks(0x200), &mut sink);
    let (initial, fed) = relay.viewer_estimate(V1).unwrap();
    assert!(!fed);
    let mut seqs = Vec::new();
    let mut now = t0;
    // 2 s of audio and key-frame video, 20 ms apart; feedback from V1 every 100 ms saying
    // everything arrived 10 ms after it left (an idle path).
    let mut sent_at: Vec<(u16, Instant)> = Vec::new();
    for i in 0..100u16 {
        now = t0 + Duration::from_millis(20 * u64::from(i));
        let audio = rtp(
            AUDIO_SSRC,
            111,
            i,
            u32::from(i) * 960,
            &[0x40, b'0'],
            &[0xfc; 60],
        );
        let mut video = rtp(
            VIDEO_SSRC,
            96,
            i,
            u32::from(i) * 1800,
            &[0x40, b'1'],
            &[0x10, 0x00],
        );
        video.resize(1000, 0xab);
        for p in [audio, video] {
            let b = bytes::Bytes::from(p);
            relay.handle_rtp(now, PUB, &b, &RtpView::parse(&b).unwrap(), &mut sink);
        }
        let (rtp_out, _) = sink.take();
        for (to, p) in rtp_out {
            match to {
                V1 => {
                    let s = transport_seq(&p).expect("V1's packets carry the transport-wide seq");
                    seqs.push(s);
                    sent_at.push((s, now));
                }
                V2 => assert_eq!(transport_seq(&p), None, "V2 did not negotiate it"),
                _ => {}
            }
        }
        if i % 5 == 4 {
            let results: Vec<PacketResult> = sent_at
                .drain(..)
                .map(|(seq, at)| PacketResult {
                    seq,
                    arrival_us: Some(at.duration_since(t0).as_micros() as i64 + 10_000),
                })
                .collect();
            let mut fb = Vec::new();
            twcc::write(0x100, 0x101, (i / 5) as u8, &results, &mut fb);
            relay.handle_viewer_rtcp(now, V1, &fb, &mut sink);
        }
    }
    assert_eq!(seqs.len(), 200, "audio and video of 100 rounds");
    // A NACK for a video packet V1 was sent: the resend is the original, byte for byte, its
    // transport-wide number included (a different header under the same SRTP index would reuse
    // an AES-GCM nonce).
    let originals: Vec<Vec<u8>> = {
        now += Duration::from_millis(20);
        let mut video = rtp(VIDEO_SSRC, 96, 100, 180_000, &[0x40, b'1'], &[0x10, 0x01]);
        video.resize(1000, 0xcd);
        let b = bytes::Bytes::from(video);
        relay.handle_rtp(now, PUB, &b, &RtpView::parse(&b).unwrap(), &mut sink);
        sink.take()
            .0
            .into_iter()
            .filter(|(to, _)| *to == V1)
            .map(|(_, p)| p)
            .collect()
    };
    let original = &originals[0];
    let ov = RtpView::parse(original).unwrap();
    let nack = nack_for(0x100, ov.ssrc, ov.sequence);
    relay.handle_viewer_rtcp(now, V1, &nack, &mut sink);
    let (resent, _) = sink.take();
    assert_eq!(resent.len(), 1, "one resend");
    assert_eq!(
        &resent[0].1, original,
        "the resend is the original, byte for byte"
    );
    assert!(
        seqs.windows(2).all(|w| w[1] == w[0].wrapping_add(1)),
        "one sequence across the viewer's tracks: {seqs:?}"
    );
    let (estimate, fed) = relay.viewer_estimate(V1).unwrap();
    assert!(fed, "feedback was taken");
    assert_ne!(estimate, initial, "the estimate moved with the feedback");
    assert_eq!(relay.viewer_estimate(V2).map(|e| e.1), Some(false));
    let _ = now;
}

/// A viewer whose link (here told by REMB) cannot carry the video gets audio alone, without a
/// gap; when the link can carry it again the video resumes at a key frame, numbered right after
/// the last video packet the viewer got, and the publisher is asked for that key frame.
#[test]
fn video_pauses_when_the_estimate_cannot_carry_it_and_resumes_when_it_can() {
    use volna::core::rtcp::Remb;
    let t0 = Instant::now();
    let mut relay = Relay::new(RelayConfig {
        pause_video: true,
        ..RelayConfig::default()
    });
    let mut sink = Recorder::default();
    relay
        .add_publisher(PUB, "room", 77, publisher_tracks())
        .unwrap();
    // Pausing needs a way back: transport-wide numbers and an RTX stream for probes.
    add_viewer(
        &mut relay,
        t0,
        V1,
        transport_cc_tracks(0x100, true),
        &mut sink,
    );
    let remb = |bps: u64| {
        let mut b = [0u8; 64];
        let n = Remb {
            sender_ssrc: 0x100,
            bitrate_bps: bps,
            ssrc: 0x101,
        }
        .write(&mut b)
        .unwrap();
        b[..n].to_vec()
    };
    // 50 packets/s of audio, 30 frames/s of 4 × 1000 B video (about 1 Mbps), key frames each
    // second; returns what V1 got: (audio count, video sequence numbers).
    let mut vseq = 0u16;
    let mut run = |relay: &mut Relay, sink: &mut Recorder, from_ms: u64, to_ms: u64| {
        let (mut audio, mut video, mut plis) = (0, Vec::new(), 0);
        for ms in from_ms..to_ms {
            let now = t0 + Duration::from_millis(ms);
            if ms % 20 == 0 {
                feed(
                    relay,
                    now,
                    &rtp(
                        AUDIO_SSRC,
                        111,
                        (ms / 20) as u16,
                        ms as u32 * 48,
                        &[0x40, b'0'],
                        &[0xfc; 60],
                    ),
                    sink,
                );
            }
            if ms % 33 == 0 {
                for k in 0..4 {
                    let key = ms % 990 == 0 && k == 0;
                    let mut p = rtp(
                        VIDEO_SSRC,
                        96,
                        vseq,
                        ms as u32 * 90,
                        &[0x40, b'1'],
                        &[0x10, if key { 0 } else { 1 }],
                    );
                    p.resize(1000, 0xab);
                    vseq = vseq.wrapping_add(1);
                    feed(relay, now, &p, sink);
                }
            }
            if ms % 10 == 0 {
                relay.handle_timeout(now, sink);
            }
            let (rtp_out, rtcp_out) = sink.take();
            for (_, p) in rtcp_out.iter().filter(|(to, _)| *to == PUB) {
                plis += Compound::new(p)
                    .filter(|c| matches!(c, Ok(RtcpPacket::Pli(_))))
                    .count();
            }
            for (_, p) in rtp_out.iter().filter(|(to, _)| *to == V1) {
                let v = RtpView::parse(p).unwrap();
                match v.payload_type {
                    98 => video.push(v.sequence),
                    109 => audio += 1,
                    _ => {} // probes on the RTX stream
                }
            }
        }
        (audio, video, plis)
    };
    let (a1, v1, _) = run(&mut relay, &mut sink, 0, 3000);
    assert!(
        a1 >= 140 && v1.len() >= 300,
        "before any estimate all flows: {a1} {}",
        v1.len()
    );
    relay.handle_viewer_rtcp(
        t0 + Duration::from_millis(3000),
        V1,
        &remb(100_000),
        &mut sink,
    );
    // A passing dip does not pause: video goes on for two seconds, then stops.
    let (a2, v2a, _) = run(&mut relay, &mut sink, 3000, 5000);
    assert!(v2a.len() >= 200, "not paused on a dip: {}", v2a.len());
    let (a2b, v2, _) = run(&mut relay, &mut sink, 5000, 6000);
    assert!(a2 + a2b >= 145, "audio goes on: {a2} + {a2b}");
    assert!(
        v2.len() <= 40,
        "video paused within two seconds and an allocation round: {}",
        v2.len()
    );
    assert!(relay.counters().paused_tracks >= 1);
    relay.handle_viewer_rtcp(
        t0 + Duration::from_millis(6000),
        V1,
        &remb(5_000_000),
        &mut sink,
    );
    let (a3, v3, plis) = run(&mut relay, &mut sink, 6000, 9000);
    assert!(a3 >= 145, "audio goes on: {a3}");
    assert!(
        plis >= 1,
        "the publisher was asked for a key frame to resume from"
    );
    assert!(v3.len() >= 200, "video resumed: {}", v3.len());
    let last_before = *v2.last().or(v2a.last()).unwrap();
    assert_eq!(
        v3[0],
        last_before.wrapping_add(1),
        "numbering continues without a gap"
    );
    assert!(v3.windows(2).all(|w| w[1] == w[0].wrapping_add(1)));
}

/// With an RTX stream negotiated, a NACK is answered on it (RFC 4588: its own SSRC, payload type
/// and numbering, the original sequence number first in the payload), and probes go there as
/// padding-only packets carrying transport-wide numbers.
#[test]
fn rtx_carries_resends_and_probes() {
    use volna::core::rtcp::twcc::{self, PacketResult};
    let t0 = Instant::now();
    let mut relay = Relay::new(RelayConfig::default());
    let mut sink = Recorder::default();
    relay
        .add_publisher(PUB, "room", 77, publisher_tracks())
        .unwrap();
    add_viewer(
        &mut relay,
        t0,
        V1,
        transport_cc_tracks(0x100, true),
        &mut sink,
    );
    let mut sent: Vec<(u16, Instant)> = Vec::new();
    let mut video_out: Vec<Vec<u8>> = Vec::new();
    let mut now = t0;
    // 60 packets of 1200 B in 1.2 s: about 480 kbps, more than the initial estimate.
    for i in 0..60u16 {
        now = t0 + Duration::from_millis(20 * u64::from(i));
        let mut video = rtp(
            VIDEO_SSRC,
            96,
            i,
            u32::from(i) * 1800,
            &[0x40, b'1'],
            &[0x10, 0x00],
        );
        video.resize(1200, i as u8);
        feed(&mut relay, now, &video, &mut sink);
        for (to, p) in sink.take().0 {
            if to == V1 {
                sent.push((transport_seq(&p).unwrap(), now));
                video_out.push(p);
            }
        }
    }
    // Feedback: all arrived, 5 ms after they left.
    let results: Vec<PacketResult> = sent
        .iter()
        .map(|(s, at)| PacketResult {
            seq: *s,
            arrival_us: Some(at.duration_since(t0).as_micros() as i64 + 5_000),
        })
        .collect();
    let mut fb = Vec::new();
    twcc::write(0x100, 0x101, 0, &results, &mut fb);
    relay.handle_viewer_rtcp(now, V1, &fb, &mut sink);

    // A NACK for the 10th video packet: answered on the RTX stream.
    let orig = &video_out[10];
    let ov = RtpView::parse(orig).unwrap();
    let nack = nack_for(0x100, ov.ssrc, ov.sequence);
    relay.handle_viewer_rtcp(now, V1, &nack, &mut sink);
    let (resent, _) = sink.take();
    assert_eq!(resent.len(), 1);
    let r = &resent[0].1;
    let rv = RtpView::parse(r).unwrap();
    assert_eq!(
        (rv.ssrc, rv.payload_type),
        (0x1a1a, 99),
        "on the RTX stream"
    );
    let payload = rv.payload(r);
    assert_eq!(
        &payload[..2],
        &ov.sequence.to_be_bytes(),
        "original sequence number first"
    );
    assert_eq!(&payload[2..], ov.payload(orig), "then the original payload");
    assert!(
        transport_seq(r).is_some(),
        "a transport-wide number of its own"
    );

    // The allocator wants more than the estimate (video at ~480 kbps, the estimate near its
    // initial 300 kbps): a probe cluster goes out on the RTX stream.
    let before = relay.counters().probes;
    for k in 1..=10u64 {
        relay.handle_timeout(now + Duration::from_millis(100 * k), &mut sink);
    }
    let (out, _) = sink.take();
    let probes: Vec<&Vec<u8>> = out
        .iter()
        .filter(|(to, p)| *to == V1 && RtpView::parse(p).unwrap().ssrc == 0x1a1a)
        .map(|(_, p)| p)
        .collect();
    assert!(
        relay.counters().probes > before,
        "a probe while the viewer would take more than its estimate"
    );
    assert!(
        probes.len() >= 5,
        "a cluster is at least 5 packets: {}",
        probes.len()
    );
    for p in &probes {
        assert_eq!(p[0] & 0x20, 0x20, "padding bit");
        let v = RtpView::parse(p).unwrap();
        assert_eq!(v.payload(p).len(), 0, "padding only");
        assert!(transport_seq(p).is_some());
    }
    let seqs: Vec<u16> = probes
        .iter()
        .map(|p| RtpView::parse(p).unwrap().sequence)
        .collect();
    assert!(
        seqs.windows(2).all(|w| w[1] == w[0].wrapping_add(1)),
        "{seqs:?}"
    );
    assert_eq!(
        seqs[0],
        rv.sequence.wrapping_add(1),
        "after the resend on the RTX stream"
    );
}

/// A simulcast publisher (layers "q" 320×180 and "f" 640×360, told apart by the RID extension)
/// and two viewers: the one with room gets the top layer, the one on a 300 kbps estimate the low
/// one; when its estimate grows it switches up at a key frame of the top layer (asked for with a
/// PLI on that layer's SSRC), and its stream stays one: sequence numbers without a gap,
/// timestamps rising, VP8 picture ids going on by one per frame. The publisher's transport-wide
/// numbers are answered with transport-cc feedback.
#[test]
fn simulcast_layers_follow_each_viewers_estimate() {
    use volna::core::rtcp::Remb;
    const Q: u32 = 0x51;
    const F: u32 = 0x52;
    let t0 = Instant::now();
    let mut relay = Relay::new(RelayConfig::default());
    let mut sink = Recorder::default();
    let mut tracks = publisher_tracks();
    tracks[1].ssrc = None;
    tracks[1].rids = vec!["q".into(), "f".into()];
    tracks[1].ext = ext(&[(4, ExtKind::Mid), (10, ExtKind::RtpStreamId)]);
    for t in &mut tracks {
        t.ext.insert(5, ExtKind::TransportWideCc);
    }
    relay.add_publisher(PUB, "room", 77, tracks).unwrap();
    add_viewer(&mut relay, t0, V1, viewer_tracks(0x100), &mut sink);
    add_viewer(&mut relay, t0, V2, viewer_tracks(0x200), &mut sink);
    let remb = |viewer_ssrc: u32, bps: u64| {
        let mut b = [0u8; 64];
        let n = Remb {
            sender_ssrc: viewer_ssrc,
            bitrate_bps: bps,
            ssrc: viewer_ssrc + 1,
        }
        .write(&mut b)
        .unwrap();
        b[..n].to_vec()
    };
    relay.handle_viewer_rtcp(t0, V1, &remb(0x100, 5_000_000), &mut sink);
    relay.handle_viewer_rtcp(t0, V2, &remb(0x200, 300_000), &mut sink);

    /// One VP8 packet: descriptor with a 15-bit picture id, then (first packet of a key frame)
    /// the frame tag, start code and size.
    fn vp8(first: bool, key: bool, pid: u16, size: (u16, u16), len: usize) -> Vec<u8> {
        let id = (pid | 0x8000).to_be_bytes();
        let mut p = vec![if first { 0x90 } else { 0x80 }, 0x80, id[0], id[1]];
        p.push(u8::from(!key));
        if first && key {
            p.extend_from_slice(&[0, 0, 0x9d, 0x01, 0x2a]);
            p.extend_from_slice(&size.0.to_le_bytes());
            p.extend_from_slice(&size.1.to_le_bytes());
        }
        p.resize(len, 0xab);
        p
    }
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
    let mut run = |relay: &mut Relay, sink: &mut Recorder, from_ms: u64, to_ms: u64| {
        let (mut v1, mut v2, mut feedback): (Got, Got, usize) = (Vec::new(), Vec::new(), 0);
        for ms in from_ms..to_ms {
            let now = t0 + Duration::from_millis(ms);
            if ms % 20 == 0 {
                let mut e = vec![0x40, b'0', 0x51];
                e.extend_from_slice(&tseq.to_be_bytes());
                tseq = tseq.wrapping_add(1);
                let p = rtp(
                    AUDIO_SSRC,
                    111,
                    (ms / 20) as u16,
                    ms as u32 * 48,
                    &e,
                    &[0xfc; 60],
                );
                feed(relay, now, &p, sink);
            }
            if ms % 33 == 0 {
                for (i, l) in layers.iter_mut().enumerate() {
                    let key = std::mem::take(&mut key_due[i]) || ms % 3000 == 0;
                    for k in 0..l.2 {
                        let mut e = vec![0x40, b'1', 0xa0, l.1, 0x51];
                        e.extend_from_slice(&tseq.to_be_bytes());
                        tseq = tseq.wrapping_add(1);
                        let payload = vp8(k == 0, key, l.6, l.4, l.3);
                        let ts = l.7.wrapping_add(ms as u32 * 90);
                        feed(relay, now, &rtp(l.0, 96, l.5, ts, &e, &payload), sink);
                        l.5 = l.5.wrapping_add(1);
                    }
                    l.6 = (l.6 + 1) & 0x7fff;
                }
            }
            if ms % 10 == 0 {
                relay.handle_timeout(now, sink);
            }
            let (rtp_out, rtcp_out) = sink.take();
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
    let (v1, v2, feedback) = run(&mut relay, &mut sink, 0, 3000);
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
    relay.handle_viewer_rtcp(
        t0 + Duration::from_millis(3000),
        V2,
        &remb(0x200, 5_000_000),
        &mut sink,
    );
    let (_, v2b, _) = run(&mut relay, &mut sink, 3000, 5000);
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

/// A viewer that negotiated audio/red and reports loss gets its audio as RED (RFC 2198): one
/// redundant block, the previous frame, with its timestamp offset and length, then the primary.
/// Before any loss, and for a viewer without RED, audio goes as plain Opus.
#[test]
fn audio_goes_as_red_to_a_viewer_that_loses_packets() {
    use volna::core::rtcp::{ReceiverReport, ReportBlock};
    let t0 = Instant::now();
    let mut relay = Relay::new(RelayConfig::default());
    let mut sink = Recorder::default();
    relay
        .add_publisher(PUB, "room", 77, publisher_tracks())
        .unwrap();
    let mut tracks = viewer_tracks(0x100);
    tracks[1].red = Some(63);
    add_viewer(&mut relay, t0, V1, tracks, &mut sink);
    add_viewer(&mut relay, t0, V2, viewer_tracks(0x200), &mut sink);
    let frame = |seq: u16| vec![seq as u8; 40 + (seq % 7) as usize];
    // Audio at 50 packets/s; returns V1's and V2's audio payloads (payload type, payload).
    type Got = Vec<(u8, Vec<u8>)>;
    let run = |relay: &mut Relay, sink: &mut Recorder, from: u16, to: u16| {
        let (mut v1, mut v2): (Got, Got) = (Vec::new(), Vec::new());
        for seq in from..to {
            let now = t0 + Duration::from_millis(u64::from(seq) * 20);
            let p = rtp(
                AUDIO_SSRC,
                111,
                seq,
                u32::from(seq) * 960,
                &[0x40, b'0'],
                &frame(seq),
            );
            feed(relay, now, &p, sink);
            relay.handle_timeout(now, sink);
            let (out, _) = sink.take();
            for (to, p) in out {
                let v = RtpView::parse(&p).unwrap();
                if v.ssrc != 0x102 && v.ssrc != 0x202 {
                    continue;
                }
                let got = (v.payload_type, v.payload(&p).to_vec());
                if to == V1 {
                    v1.push(got)
                } else {
                    v2.push(got)
                }
            }
        }
        (v1, v2)
    };
    let (v1, _) = run(&mut relay, &mut sink, 0, 50);
    assert!(
        v1.iter().all(|(pt, _)| *pt == 109),
        "no loss yet: plain Opus"
    );
    // V1 reports 10% loss.
    let mut b = [0u8; 64];
    let block = ReportBlock {
        ssrc: 0x102,
        fraction_lost: 26,
        ..ReportBlock::default()
    };
    let n = ReceiverReport::write(0x100, &[block], &mut b).unwrap();
    relay.handle_viewer_rtcp(t0 + Duration::from_secs(1), V1, &b[..n], &mut sink);
    let (v1, v2) = run(&mut relay, &mut sink, 50, 100);
    assert!(v2.iter().all(|(pt, _)| *pt == 109), "V2 has no RED");
    let red: Vec<&Vec<u8>> = v1
        .iter()
        .filter(|(pt, _)| *pt == 63)
        .map(|(_, p)| p)
        .collect();
    assert!(
        red.len() >= 45,
        "V1's audio goes as RED: {} of {}",
        red.len(),
        v1.len()
    );
    let count = relay.counters().red_packets;
    assert_eq!(count as usize, red.len());
    for p in red {
        // The primary is the last block; its seq is in its bytes.
        let seq = u16::from(*p.last().unwrap());
        let prev = frame(seq.wrapping_sub(1));
        assert_eq!(p[0], 0x80 | 109, "a redundant block of Opus follows");
        let offset = (u32::from(p[1]) << 6) | u32::from(p[2] >> 2);
        let len = (usize::from(p[2] & 3) << 8) | usize::from(p[3]);
        assert_eq!((offset, len), (960, prev.len()));
        assert_eq!(p[4], 109, "then the primary's header");
        assert_eq!(&p[5..5 + len], &prev[..], "the previous frame");
        assert_eq!(&p[5 + len..], &frame(seq)[..], "then the primary frame");
    }
}

/// A simulcast publisher is told which layers viewers need: with no one watching, after five
/// seconds only its lowest layer; it stops the other, and when a viewer with room comes, the top
/// layer is asked for again at once (its rate while it was sent is remembered).
#[test]
fn publishers_hear_which_layers_are_needed() {
    use volna::core::rtcp::Remb;
    let t0 = Instant::now();
    let mut relay = Relay::new(RelayConfig::default());
    let mut sink = Recorder::default();
    let mut tracks = publisher_tracks();
    tracks[1].ssrc = None;
    tracks[1].rids = vec!["f".into(), "q".into()];
    tracks[1].ext = ext(&[(4, ExtKind::Mid), (10, ExtKind::RtpStreamId)]);
    relay.add_publisher(PUB, "room", 77, tracks).unwrap();
    // Layer slots in RID order: 0 = "f" (1000 B packets), 1 = "q" (200 B).
    let layers: [(u32, u8, usize); 2] = [(0x61, b'f', 1000), (0x62, b'q', 200)];
    let mut seq = [0u16; 2];
    let mut events = Vec::new();
    let mut run = |relay: &mut Relay,
                   sink: &mut Recorder,
                   from_ms: u64,
                   to_ms: u64,
                   send: [bool; 2],
                   events: &mut Vec<(u64, usize, u8)>| {
        for ms in from_ms..to_ms {
            let now = t0 + Duration::from_millis(ms);
            if ms % 33 == 0 {
                for (i, &(ssrc, rid, len)) in layers.iter().enumerate().filter(|(i, _)| send[*i]) {
                    let mut p = rtp(
                        ssrc,
                        96,
                        seq[i],
                        ms as u32 * 90,
                        &[0x40, b'1', 0xa0, rid],
                        KEY,
                    );
                    p.resize(len, 0);
                    seq[i] = seq[i].wrapping_add(1);
                    feed(relay, now, &p, sink);
                }
            }
            if ms % 10 == 0 {
                relay.handle_timeout(now, sink);
                while let Some(ev) = relay.poll_event() {
                    if let RelayEvent::Layers { track, active, .. } = ev {
                        events.push((ms, track, active));
                    }
                }
            }
            sink.take();
        }
    };
    run(&mut relay, &mut sink, 0, 8000, [true, true], &mut events);
    assert_eq!(events.len(), 1, "{events:?}");
    let (at, track, active) = events[0];
    assert_eq!((track, active), (1, 0b10), "only the lowest layer, \"q\"");
    // Rates are known after a second of packets; five seconds later "f" is let go.
    assert!(
        (6_000..7_000).contains(&at),
        "after five seconds unneeded: {at}"
    );
    // The publisher stops "f"; a viewer of the video with room arrives.
    run(
        &mut relay,
        &mut sink,
        8_000,
        17_000,
        [false, true],
        &mut events,
    );
    assert_eq!(
        events.len(),
        1,
        "nothing more while no one watches: {events:?}"
    );
    relay.add_viewer(V2, "room").unwrap();
    let video = viewer_tracks(0x200).remove(0);
    relay
        .add_viewer_track(t0 + Duration::from_secs(17), V2, video, &mut sink)
        .unwrap();
    let mut b = [0u8; 64];
    let n = Remb {
        sender_ssrc: 0x200,
        bitrate_bps: 5_000_000,
        ssrc: 0x201,
    }
    .write(&mut b)
    .unwrap();
    relay.handle_viewer_rtcp(t0 + Duration::from_secs(17), V2, &b[..n], &mut sink);
    run(
        &mut relay,
        &mut sink,
        17_000,
        17_500,
        [false, true],
        &mut events,
    );
    assert_eq!(events.len(), 2, "{events:?}");
    assert_eq!((events[1].1, events[1].2), (1, 0b11), "both layers again");
}

/// A viewer whose estimate cannot carry the publisher's Opus gets it re-encoded at a low bitrate
/// (same sequence numbers and timestamps, valid Opus, a fraction of the size); a viewer with room
/// gets the publisher's own bytes; with room again, the first viewer gets the original too.
#[test]
fn audio_is_reencoded_for_a_viewer_that_cannot_carry_it() {
    use opus::{Application, Bitrate, Channels, Decoder, Encoder};
    use volna::core::rtcp::Remb;
    let t0 = Instant::now();
    let mut relay = Relay::new(RelayConfig::default());
    let mut sink = Recorder::default();
    relay
        .add_publisher(PUB, "room", 77, publisher_tracks())
        .unwrap();
    let audio = |base: u32| viewer_tracks(base).into_iter().skip(1).collect::<Vec<_>>();
    add_viewer(&mut relay, t0, V1, audio(0x100), &mut sink);
    add_viewer(&mut relay, t0, V2, audio(0x200), &mut sink);
    let remb = |bps: u64| {
        let mut b = [0u8; 64];
        let n = Remb {
            sender_ssrc: 0x100,
            bitrate_bps: bps,
            ssrc: 0x102,
        }
        .write(&mut b)
        .unwrap();
        b[..n].to_vec()
    };
    relay.handle_viewer_rtcp(t0, V1, &remb(30_000), &mut sink);
    let mut enc = Encoder::new(48_000, Channels::Stereo, Application::Audio).unwrap();
    enc.set_bitrate(Bitrate::Bits(64_000)).unwrap();
    let mut pcm = vec![0i16; 1920];
    let mut buf = vec![0u8; 1275];
    let mut seq = 0u16;
    // 50 packets/s; returns, per viewer, (sequence, payload) of what it got.
    type Got = Vec<(u16, Vec<u8>)>;
    let mut run = |relay: &mut Relay, sink: &mut Recorder, frames: u32| {
        let (mut v1, mut v2, mut sent): (Got, Got, Vec<Vec<u8>>) =
            (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..frames {
            let now = t0 + Duration::from_millis(u64::from(seq) * 20);
            for i in 0..960 {
                let x = f64::from(u32::from(seq) * 960 + i as u32) * 440.0 * std::f64::consts::TAU
                    / 48_000.0;
                pcm[2 * i] = (x.sin() * 8000.0) as i16;
                pcm[2 * i + 1] = pcm[2 * i];
            }
            let n = enc.encode(&pcm, &mut buf).unwrap();
            sent.push(buf[..n].to_vec());
            let p = rtp(
                AUDIO_SSRC,
                111,
                seq,
                u32::from(seq) * 960,
                &[0x40, b'0'],
                &buf[..n],
            );
            feed(relay, now, &p, sink);
            relay.handle_timeout(now, sink);
            seq += 1;
            for (to, p) in sink.take().0 {
                let v = RtpView::parse(&p).unwrap();
                let got = (v.sequence, v.payload(&p).to_vec());
                if to == V1 {
                    v1.push(got)
                } else {
                    v2.push(got)
                }
            }
        }
        (v1, v2, sent)
    };
    // The first allocation round decides; from then on V1 gets the low-rate stream.
    let (v1, v2, sent) = run(&mut relay, &mut sink, 150);
    let tail =
        |v: &Got| v[50..].iter().map(|(_, p)| p.len()).sum::<usize>() as f64 * 8.0 / 2.0 / 1000.0;
    assert!(
        tail(&v1) < 16.0,
        "V1 gets about 12 kbps: {} kbps",
        tail(&v1)
    );
    assert!(tail(&v2) > 50.0, "V2 gets the original: {} kbps", tail(&v2));
    assert!(
        v2.iter().zip(&sent).all(|((_, p), s)| p == s),
        "V2's bytes are the publisher's"
    );
    assert!(
        v1.windows(2).all(|w| w[1].0 == w[0].0.wrapping_add(1)),
        "V1's numbering has no gap"
    );
    assert!(relay.counters().transcoded_packets >= 95);
    let mut dec = Decoder::new(48_000, Channels::Mono).unwrap();
    let mut out = vec![0i16; 960];
    let mut energy = 0f64;
    for (_, p) in &v1[100..] {
        assert_eq!(
            dec.decode(p, &mut out, false).unwrap(),
            960,
            "valid 20 ms Opus"
        );
        energy += out.iter().map(|&s| f64::from(s).powi(2)).sum::<f64>();
    }
    assert!(
        (energy / (50.0 * 960.0)).sqrt() > 2000.0,
        "the tone is audible"
    );
    relay.handle_viewer_rtcp(t0 + Duration::from_secs(3), V1, &remb(2_000_000), &mut sink);
    let (v1, _, sent) = run(&mut relay, &mut sink, 50);
    assert!(
        v1[25..].iter().zip(&sent[25..]).all(|((_, p), s)| p == s),
        "the original again"
    );
}

/// One packet of an SVC test stream: its payload, header extension elements and marker bit.
struct SvcPacket {
    payload: Vec<u8>,
    ext: Vec<u8>,
    marker: bool,
}

/// A viewer's REMB for its video SSRC (`viewer_ssrc + 1`).
fn remb_of(viewer_ssrc: u32, bps: u64) -> Vec<u8> {
    let mut b = [0u8; 64];
    let n = volna::core::rtcp::Remb {
        sender_ssrc: viewer_ssrc,
        bitrate_bps: bps,
        ssrc: viewer_ssrc + 1,
    }
    .write(&mut b)
    .unwrap();
    b[..n].to_vec()
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
    let t0 = Instant::now();
    let mut relay = Relay::new(RelayConfig::default());
    let mut sink = Recorder::default();
    let mut tracks = publisher_tracks();
    tracks[1] = video;
    relay.add_publisher(PUB, "room", 77, tracks).unwrap();
    add_viewer(&mut relay, t0, V1, viewer_tracks(0x100), &mut sink);
    add_viewer(&mut relay, t0, V2, viewer_tracks(0x200), &mut sink);
    relay.handle_viewer_rtcp(t0, V1, &remb_of(0x100, 5_000_000), &mut sink);
    relay.handle_viewer_rtcp(t0, V2, &remb_of(0x200, narrow_bps), &mut sink);
    let (mut seq, mut n, mut key_due) = (100u16, 0u32, true);
    // Per viewer: (sequence, spatial layer, marker) of each video packet.
    type Got = Vec<(u16, u8, bool)>;
    let mut run = |relay: &mut Relay, sink: &mut Recorder, from_ms: u64, to_ms: u64| {
        let (mut v1, mut v2, mut plis): (Got, Got, usize) = (Vec::new(), Vec::new(), 0);
        for ms in from_ms..to_ms {
            let now = t0 + Duration::from_millis(ms);
            if ms % 20 == 0 {
                let p = rtp(
                    AUDIO_SSRC,
                    111,
                    (ms / 20) as u16,
                    ms as u32 * 48,
                    &[],
                    &[0xfc; 60],
                );
                feed(relay, now, &p, sink);
            }
            if ms % 33 == 0 {
                for pkt in picture(n, std::mem::take(&mut key_due)) {
                    let mut p = rtp(VIDEO_SSRC, 96, seq, n * 3000, &pkt.ext, &pkt.payload);
                    p[1] |= u8::from(pkt.marker) << 7;
                    feed(relay, now, &p, sink);
                    seq = seq.wrapping_add(1);
                }
                n += 1;
            }
            if ms % 10 == 0 {
                relay.handle_timeout(now, sink);
            }
            let (rtp_out, rtcp_out) = sink.take();
            for (_, p) in rtcp_out.iter().filter(|(to, _)| *to == PUB) {
                for c in Compound::new(p) {
                    if let Ok(RtcpPacket::Pli(pli)) = c {
                        assert_eq!(pli.media_ssrc, VIDEO_SSRC);
                        key_due = true;
                        plis += 1;
                    }
                }
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
    let (v1, v2, _) = run(&mut relay, &mut sink, 0, 3000);
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
    let at = t0 + Duration::from_millis(3000);
    relay.handle_viewer_rtcp(at, V2, &remb_of(0x200, 5_000_000), &mut sink);
    let (_, v2b, plis) = run(&mut relay, &mut sink, 3000, 5000);
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

/// A viewer that joins shortly after a key frame starts from the cache: the key frame and every
/// packet since are sent to it at once, numbered from its first sequence number, and the
/// publisher is not asked for another. One joining after the key frame is too old asks.
#[test]
fn joining_viewers_start_from_the_cached_key_frame() {
    let t0 = Instant::now();
    let mut relay = Relay::new(RelayConfig::default());
    let mut sink = Recorder::default();
    relay
        .add_publisher(PUB, "room", 77, publisher_tracks())
        .unwrap();
    add_viewer(&mut relay, t0, V1, viewer_tracks(0x100), &mut sink);
    let plis = |sink: &mut Recorder| {
        let (_, rtcp) = sink.take();
        rtcp_of(&rtcp, PUB)
            .iter()
            .filter(|r| r.starts_with("Pli"))
            .count()
    };
    assert_eq!(plis(&mut sink), 1, "the first viewer asks for a key frame");
    // The key frame (two packets), then a delta frame every 33 ms.
    let mut seq = 2000u16;
    let mut send = |relay: &mut Relay, sink: &mut Recorder, ms: u64, payload: &[u8]| {
        let p = rtp(VIDEO_SSRC, 96, seq, ms as u32 * 90, &[], payload);
        feed(relay, t0 + Duration::from_millis(ms), &p, sink);
        seq = seq.wrapping_add(1);
    };
    send(&mut relay, &mut sink, 10, KEY);
    send(&mut relay, &mut sink, 10, &[0x00, 0x00, 0xaa]);
    for ms in (43..300).step_by(33) {
        send(&mut relay, &mut sink, ms, DELTA);
    }
    let (to_v1, _) = sink.take();
    assert_eq!(to_v1.len(), 10, "V1 got the key frame and the deltas");

    let at = t0 + Duration::from_millis(300);
    add_viewer(&mut relay, at, V2, viewer_tracks(0x200), &mut sink);
    let (rtp_out, rtcp_out) = sink.take();
    assert!(
        rtcp_of(&rtcp_out, PUB)
            .iter()
            .all(|r| !r.starts_with("Pli")),
        "no key frame asked for"
    );
    let got: Vec<(u16, Vec<u8>)> = rtp_out
        .iter()
        .filter(|(to, _)| *to == V2)
        .map(|(_, p)| {
            let v = RtpView::parse(p).unwrap();
            (v.sequence, v.payload(p).to_vec())
        })
        .collect();
    assert_eq!(
        got.len(),
        10,
        "V2 is sent the key frame and every packet since"
    );
    assert_eq!(got[0].1, KEY);
    let seqs: Vec<u16> = got.iter().map(|g| g.0).collect();
    assert_eq!(seqs, (100..110).collect::<Vec<u16>>());
    assert_eq!(relay.counters().replayed_packets, 10);
    send(&mut relay, &mut sink, 340, DELTA);
    let (rtp_out, _) = sink.take();
    let next: Vec<u16> = rtp_out
        .iter()
        .filter(|(to, _)| *to == V2)
        .map(|(_, p)| RtpView::parse(p).unwrap().sequence)
        .collect();
    assert_eq!(next, [110], "live packets go on from there");

    for ms in (373..1500).step_by(33) {
        send(&mut relay, &mut sink, ms, DELTA);
    }
    sink.take();
    let late = t0 + Duration::from_millis(1500);
    add_viewer(&mut relay, late, V3, viewer_tracks(0x300), &mut sink);
    assert_eq!(
        plis(&mut sink),
        1,
        "a key frame over a second old is not replayed"
    );
    assert_eq!(relay.counters().replayed_packets, 10);
}

/// Video to a viewer whose link is known leaves paced: a key frame's burst of 30 packets is
/// spread at 2.5 times the estimate instead of going out at once, audio is not held behind it,
/// and transport-wide numbers follow the order packets leave in.
#[test]
fn video_is_paced_to_the_viewers_estimate() {
    let t0 = Instant::now();
    let mut relay = Relay::new(RelayConfig::default());
    let mut sink = Recorder::default();
    relay
        .add_publisher(PUB, "room", 77, publisher_tracks())
        .unwrap();
    add_viewer(
        &mut relay,
        t0,
        V1,
        transport_cc_tracks(0x100, false),
        &mut sink,
    );
    relay.handle_viewer_rtcp(t0, V1, &remb_of(0x100, 1_000_000), &mut sink);
    sink.take();
    // The key frame: 30 packets of about 1000 bytes, all at 10 ms.
    let at = t0 + Duration::from_millis(10);
    for k in 0..30u16 {
        let mut payload = if k == 0 {
            KEY.to_vec()
        } else {
            vec![0x00, 0x00]
        };
        payload.resize(1000, 0xab);
        feed(
            &mut relay,
            at,
            &rtp(VIDEO_SSRC, 96, 500 + k, 900, &[], &payload),
            &mut sink,
        );
    }
    // (ms, payload type, transport-wide number) of each packet sent to V1.
    let mut out: Vec<(u64, u8, u16)> = Vec::new();
    let record = |out: &mut Vec<(u64, u8, u16)>, sink: &mut Recorder, ms: u64| {
        for (to, p) in sink.take().0 {
            if to == V1 {
                let v = RtpView::parse(&p).unwrap();
                out.push((ms, v.payload_type, transport_seq(&p).unwrap()));
            }
        }
    };
    record(&mut out, &mut sink, 10);
    assert!(
        out.len() <= 3,
        "only the first packets leave at once: {}",
        out.len()
    );
    for ms in 11..300u64 {
        let now = t0 + Duration::from_millis(ms);
        if ms % 20 == 0 {
            let p = rtp(AUDIO_SSRC, 111, ms as u16, ms as u32 * 48, &[], &[0xfc; 60]);
            feed(&mut relay, now, &p, &mut sink);
        }
        if relay.poll_timeout().is_some_and(|t| t <= now) {
            relay.handle_timeout(now, &mut sink);
        }
        record(&mut out, &mut sink, ms);
    }
    let video: Vec<u64> = out.iter().filter(|o| o.1 == 98).map(|o| o.0).collect();
    assert_eq!(video.len(), 30, "every packet of the key frame leaves");
    let spread = video[29] - video[0];
    // 30 kB at 2.5 Mbps: about 96 ms.
    assert!(
        (70..=130).contains(&spread),
        "spread over {spread} ms: {video:?}"
    );
    let audio_during: Vec<u64> = out
        .iter()
        .filter(|o| o.1 == 109 && o.0 < video[29])
        .map(|o| o.0)
        .collect();
    assert!(
        audio_during.iter().all(|ms| ms % 20 == 0) && !audio_during.is_empty(),
        "audio leaves as it comes, between video packets: {audio_during:?}"
    );
    for w in out.windows(2) {
        assert_eq!(
            w[1].2,
            w[0].2.wrapping_add(1),
            "numbered in the order sent: {out:?}"
        );
    }
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
    video.ext = ext(&[(4, ExtKind::Mid), (12, ExtKind::DependencyDescriptor)]);
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
                let d = bits(&f);
                let mut ext = vec![(12 << 4) | (d.len() as u8 - 1)];
                ext.extend_from_slice(&d);
                // Aggregation header: N on a key frame's first packet; then the spatial id, for
                // the test to read back.
                let mut payload = vec![0x10 | if first { 0x08 } else { 0 }, sid as u8];
                payload.resize(len, 0xab);
                let marker = sid == 1 && k + 1 == count;
                out.push(SvcPacket {
                    payload,
                    ext,
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
    let t0 = Instant::now();
    let mut relay = Relay::new(RelayConfig::default());
    let mut sink = Recorder::default();
    // Each publisher: simulcast q (about 80 kbps) and f (about 1 Mbps), SSRCs base+1 and base+2.
    for (id, _) in [(PUB, 0x50u32), (P2, 0x60)] {
        let mut tracks = publisher_tracks();
        tracks[1].ssrc = None;
        tracks[1].rids = vec!["q".into(), "f".into()];
        tracks[1].ext = ext(&[(4, ExtKind::Mid), (10, ExtKind::RtpStreamId)]);
        relay.add_publisher(id, "room", 77, tracks).unwrap();
    }
    relay.add_viewer(V, "room").unwrap();
    for (i, publisher) in [PUB, P2].into_iter().enumerate() {
        let spec = ViewerTrackSpec {
            source: TrackRef {
                publisher,
                track: 1,
            },
            mid: i.to_string(),
            ssrc: 0x700 + i as u32,
            payload_type: 98,
            ext: ext(&[(2, ExtKind::Mid)]),
            initial_seq: 0,
            initial_ts: 0,
            rtx: None,
            red: None,
        };
        relay.add_viewer_track(t0, V, spec, &mut sink).unwrap();
    }
    relay.handle_viewer_rtcp(t0, V, &remb_of(0x700, 1_500_000), &mut sink);
    // (publisher, base SSRC, next sequence numbers per layer, key frame due per layer)
    let mut pubs = [
        (PUB, 0x50u32, [0u16, 5000], [true; 2]),
        (P2, 0x60, [0, 5000], [true; 2]),
    ];
    let mut ms = 0u64;
    // Runs `secs` seconds; returns, per publisher, the largest payload V got in the last one.
    let mut run = |relay: &mut Relay, sink: &mut Recorder, secs: u64| {
        let mut top = [0usize; 2];
        let end = ms + secs * 1000;
        while ms < end {
            let now = t0 + Duration::from_millis(ms);
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
                            let e = [0x40, b'1', 0xa0, rid];
                            let p = rtp(
                                *base + 1 + l as u32,
                                96,
                                seqs[l],
                                ms as u32 * 90,
                                &e,
                                &payload,
                            );
                            feed_from(relay, now, *id, &p, sink);
                            seqs[l] = seqs[l].wrapping_add(1);
                        }
                    }
                }
            }
            if ms.is_multiple_of(10) {
                relay.handle_timeout(now, sink);
            }
            let (rtp_out, rtcp_out) = sink.take();
            for (_, p) in &rtcp_out {
                for c in Compound::new(p) {
                    if let Ok(RtcpPacket::Pli(pli)) = c {
                        for (_, base, _, keys) in pubs.iter_mut() {
                            if let Some(l) =
                                pli.media_ssrc.checked_sub(*base + 1).filter(|&l| l < 2)
                            {
                                keys[l as usize] = true;
                            }
                        }
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
    assert!(relay.set_pinned(V, 1, true));
    assert_eq!(
        run(&mut relay, &mut sink, 4),
        [300, 1000],
        "the pinned track gets the top layer"
    );
    relay.set_pinned(V, 1, false);
    relay.set_pinned(V, 0, true);
    assert_eq!(run(&mut relay, &mut sink, 3), [1000, 300], "the pin moved");
    relay.set_pinned(V, 0, false);
    relay.set_slides(P2, 1, true);
    assert!(relay.track_is_slides(P2, 1));
    assert_eq!(
        run(&mut relay, &mut sink, 3),
        [300, 1000],
        "the presentation goes first"
    );
}

/// A viewer whose path moved (a network change) gets its video from a key frame asked for at
/// once; a viewer that did not move asks for nothing.
#[test]
fn a_viewer_that_moved_gets_a_key_frame_asked_for() {
    let t0 = Instant::now();
    let mut relay = Relay::new(RelayConfig::default());
    let mut sink = Recorder::default();
    relay
        .add_publisher(PUB, "room", 0x5e1f, publisher_tracks())
        .unwrap();
    add_viewer(&mut relay, t0, V1, viewer_tracks(1000), &mut sink);
    sink.take();
    let later = t0 + Duration::from_secs(5);
    relay.viewer_moved(later, 4242, &mut sink);
    assert!(sink.take().1.is_empty(), "no such viewer: nothing asked");
    relay.viewer_moved(later, V1, &mut sink);
    let (_, rtcp) = sink.take();
    assert_eq!(
        rtcp_of(&rtcp, PUB),
        vec![format!(
            "{:?}",
            RtcpPacket::Pli(Pli {
                sender_ssrc: 0x5e1f,
                media_ssrc: VIDEO_SSRC
            })
        )]
    );
}

/// A publisher that repeats a sequence number with other bytes (a QUIC publisher can: RoQ has no
/// SRTP replay check) gets the copy dropped, and a viewer's NACK brings back the bytes it was
/// sent, not the copy: one sequence number, so one SRTP index at the viewer, carries one set of
/// bytes (two under one AES-GCM nonce give away the authentication key).
#[test]
fn a_resend_carries_the_bytes_first_sent_under_that_number() {
    let t0 = Instant::now();
    let mut relay = Relay::new(RelayConfig::default());
    let mut sink = Recorder::default();
    relay
        .add_publisher(PUB, "room", 77, publisher_tracks())
        .unwrap();
    add_viewer(&mut relay, t0, V1, viewer_tracks(1000), &mut sink);
    sink.take();
    feed(
        &mut relay,
        t0,
        &rtp(VIDEO_SSRC, 96, 1, 90, &[0x40, b'1'], KEY),
        &mut sink,
    );
    let (out, _) = sink.take();
    let original = out[0].1.clone();
    let v = RtpView::parse(&original).unwrap();
    let copy = rtp(
        VIDEO_SSRC,
        96,
        1,
        90,
        &[0x40, b'1'],
        &[0x10, 0x00, 0xca, 0xca, 0xca],
    );
    feed(&mut relay, t0 + Duration::from_millis(5), &copy, &mut sink);
    assert!(sink.take().0.is_empty(), "the copy is not forwarded");
    let nack = nack_for(0x100, v.ssrc, v.sequence);
    relay.handle_viewer_rtcp(t0 + Duration::from_millis(10), V1, &nack, &mut sink);
    let (resent, _) = sink.take();
    assert_eq!(resent.len(), 1);
    assert_eq!(
        resent[0].1, original,
        "the resend is the packet first sent, byte for byte"
    );
}
