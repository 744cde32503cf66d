//! The relay core forwarding on virtual time: viewers joining and leaving a publisher's call,
//! header rewriting, sender reports, NACK and PLI passed on, several publishers, active speaker.

use volna::core::room::{RelayConfig, RelayEvent, SessionId, TrackSpec};
use volna::core::rtcp::{Compound, Pli, RtcpPacket, SenderReport};
use volna::core::rtp::{ExtKind, ExtMap, RtpView};
use volna::testkit::{opus_track, rtcp_debug, views_to, RtpBuilder, Sim, ViewerTrack};

mod common;
use common::call::*;

#[test]
fn meeting_on_virtual_time() {
    let mut sim = Sim::new(RelayConfig::default());
    sim.publish(PUB, 0x5e1f, publisher_tracks());
    assert_eq!(sim.relay.room_publishers("room"), Some(&[PUB][..]));

    // Viewer 1 joins: the publisher is asked for a keyframe at once.
    sim.view(V1, viewer_tracks(1000));
    let (_, rtcp) = sim.sink.take();
    assert_eq!(rtcp_debug(&rtcp, PUB), key_frame_request());

    // Viewer 2 joins 100 ms later: within the rate limit, so no second request yet.
    sim.goto(100);
    sim.view(V2, viewer_tracks(2000));
    assert!(
        sim.sink.take().1.is_empty(),
        "keyframe requests are rate-limited per publisher track"
    );
    let due = sim
        .relay
        .poll_timeout()
        .expect("deferred request is scheduled");
    assert_eq!(
        due,
        sim.at(0) + RelayConfig::default().keyframe_request_interval
    );

    // Audio reaches both at once, with their SSRC, PT, MID and the level under their id.
    sim.goto(120);
    let audio = audio_rtp(40, 96000)
        .ext(1, &[0x85])
        .ext(4, b"0")
        .payload(&[0xfc, 1, 2]);
    sim.feed(PUB, &audio.build());
    let (out, _) = sim.sink.take();
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
    sim.goto(130);
    sim.feed(PUB, &video_rtp(65535, 1_000).payload(DELTA).build());
    assert!(sim.sink.take().0.is_empty(), "no video before a keyframe");
    sim.goto(140);
    sim.feed(PUB, &video_rtp(0, 4_000).payload(KEY).build());
    sim.goto(150);
    sim.feed(PUB, &video_rtp(1, 4_000).payload(DELTA).build());
    let (out, _) = sim.sink.take();
    let v1: Vec<(u16, u32)> = views_to(&out, V1)
        .map(|(v, _)| (v.sequence, v.timestamp))
        .collect();
    assert_eq!(v1, vec![(100, 5000), (101, 5000)]);

    // The deferred keyframe request goes out when its interval ends.
    sim.now = due;
    sim.timeout();
    let (_, rtcp) = sim.sink.take();
    let to_pub = rtcp_debug(&rtcp, PUB);
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
    sim.goto(600);
    sim.relay
        .handle_publisher_rtcp(sim.now, PUB, &sr, &mut sim.sink);
    let (_, rtcp) = sim.sink.take();
    let to_v1 = rtcp_debug(&rtcp, V1);
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
    sim.goto(700);
    sim.viewer_rtcp(V1, &nack_buf);
    let (out, rtcp) = sim.sink.take();
    assert_eq!(out.len(), 1, "one resend, to the viewer that lost it");
    let (to, pkt) = &out[0];
    let v = RtpView::parse(pkt).unwrap();
    assert_eq!(
        (*to, v.ssrc, v.sequence, v.timestamp),
        (V1, 1001, 101, 5000)
    );
    assert_eq!(v.payload(pkt), DELTA);
    assert_eq!(sim.relay.counters().retransmitted_packets, 1);
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
    sim.goto(1700);
    sim.viewer_rtcp(V1, &nack_buf);
    let (out, rtcp) = sim.sink.take();
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
    sim.goto(2000);
    sim.viewer_rtcp(V2, &pli);
    let (_, rtcp) = sim.sink.take();
    assert_eq!(rtcp_debug(&rtcp, PUB), key_frame_request());

    // Viewer 2 leaves: only viewer 1 receives from now on.
    assert!(sim.relay.remove_viewer(V2));
    sim.goto(2100);
    sim.feed(PUB, &video_rtp(2, 7_000).payload(DELTA).build());
    let (out, _) = sim.sink.take();
    assert_eq!(out.iter().map(|(s, _)| *s).collect::<Vec<_>>(), vec![V1]);

    // The publisher leaves: viewer 1 gets a BYE for its streams and is reported as orphaned.
    let ended = sim.relay.remove_publisher(PUB, &mut sim.sink);
    assert_eq!(ended, vec![(V1, vec![0, 1])]);
    assert_eq!(sim.relay.live_viewer_tracks(V1), 0);
    let (_, rtcp) = sim.sink.take();
    let bye = rtcp_debug(&rtcp, V1);
    assert_eq!(bye.len(), 1);
    assert!(bye[0].starts_with("Bye"));
    assert!(sim.relay.remove_viewer(V1));
    assert_eq!(
        (
            sim.relay.room_count(),
            sim.relay.publisher_count(),
            sim.relay.viewer_count()
        ),
        (0, 0, 0)
    );
}

#[test]
fn packets_of_unknown_streams_are_dropped_and_counted() {
    let mut sim = call_with_one_viewer(1);
    // Unknown SSRC with an unknown payload type.
    let unknown = RtpBuilder::new(0x999, 55).seq(1).ts(1).payload(&[1]);
    sim.feed(PUB, &unknown.build());
    assert!(sim.sink.take().0.is_empty());
    assert_eq!(sim.relay.counters().dropped_packets, 1);
    // From a session that is not a publisher.
    let pkt = audio_rtp(1, 1).payload(&[1]).build();
    sim.feed(42, &pkt);
    assert_eq!(sim.relay.counters().dropped_packets, 2);
    // Garbage RTCP from a viewer changes nothing.
    sim.viewer_rtcp(V1, &[0x81, 206, 0, 9, 1, 2]);
    assert!(sim.sink.take().1.is_empty());
}

/// One publisher of audio only, with the audio-level extension under id 1.
fn talker(sim: &mut Sim, id: SessionId, ssrc: u32) {
    let track = TrackSpec {
        ext: ExtMap::from_pairs(&[(1, ExtKind::AudioLevel)]),
        ..opus_track(ssrc)
    };
    sim.publish(id, 1, vec![track]);
}

#[test]
fn active_speaker_follows_audio_levels_with_hysteresis() {
    let mut sim = Sim::new(RelayConfig::default());
    talker(&mut sim, 10, 100);
    talker(&mut sim, 11, 101);
    let mut seq = 0u16;
    // Levels in -dBov: 127 is silence, smaller is louder.
    let mut speak = |sim: &mut Sim, levels: [(u32, SessionId, u8); 2]| {
        for (ssrc, from, level) in levels {
            seq = seq.wrapping_add(1);
            let pkt = RtpBuilder::new(ssrc, 111)
                .seq(seq)
                .ts(960 * u32::from(seq))
                .ext(1, &[level])
                .payload(&[1]);
            sim.feed(from, &pkt.build());
        }
    };
    let mut events = Vec::new();
    let mut run = |sim: &mut Sim, from_ms: u64, to_ms: u64, a: u8, b: u8| {
        for ms in (from_ms..to_ms).step_by(20) {
            sim.goto(ms);
            speak(sim, [(100, 10, a), (101, 11, b)]);
            sim.timeout();
            while let Some(e) = sim.relay.poll_event() {
                events.push((ms, e));
            }
        }
    };
    // Both silent: no speaker.
    run(&mut sim, 0, 1000, 127, 127);
    // 10 talks (-20 dBov), 11 is quiet: 10 becomes the speaker.
    run(&mut sim, 1000, 2000, 20, 110);
    // 11 barely louder than 10: not enough to take over.
    run(&mut sim, 2000, 3000, 21, 20);
    // Both equally loud, each a little louder in turn every 400 ms: the highlight stays.
    for turn in 0..5 {
        let (a, b) = if turn % 2 == 0 { (22, 12) } else { (12, 22) };
        run(&mut sim, 3000 + turn * 400, 3400 + turn * 400, a, b);
    }
    // 11 clearly louder for good: it takes over after leading for a second.
    run(&mut sim, 5000, 6500, 60, 10);
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
    assert_eq!(sim.relay.active_speaker("room"), Some(11));
    // The speaker leaves: the room has none.
    sim.relay.remove_publisher(11, &mut sim.sink);
    assert_eq!(
        sim.relay.poll_event(),
        Some(RelayEvent::ActiveSpeaker {
            room: "room".into(),
            publisher: None
        })
    );
}

#[test]
fn one_viewer_receives_tracks_of_several_publishers() {
    let mut sim = Sim::new(RelayConfig::default());
    talker(&mut sim, 10, 100);
    talker(&mut sim, 11, 101);
    sim.relay.add_viewer(20, "room").unwrap();
    let spec = |publisher, ssrc| ViewerTrack::new(publisher, 0, ssrc, 111).build();
    let a = sim
        .relay
        .add_viewer_track(sim.now, 20, spec(10, 500), &mut sim.sink)
        .unwrap();
    let b = sim
        .relay
        .add_viewer_track(sim.now, 20, spec(11, 501), &mut sim.sink)
        .unwrap();
    assert_eq!((a, b), (0, 1));
    let talk = |ssrc, seq, ts, byte| {
        RtpBuilder::new(ssrc, 111)
            .seq(seq)
            .ts(ts)
            .payload(&[byte])
            .build()
    };
    // The SSRCs of what was sent since the last look.
    let ssrcs = |sim: &mut Sim| -> Vec<u32> {
        sim.sink
            .take()
            .0
            .iter()
            .map(|(_, p)| RtpView::parse(p).unwrap().ssrc)
            .collect()
    };
    sim.feed(10, &talk(100, 1, 0, 1));
    sim.feed(11, &talk(101, 1, 0, 2));
    assert_eq!(ssrcs(&mut sim), vec![500, 501]);
    // Unsubscribing one track stops only that one; the other keeps its index.
    assert!(sim.relay.remove_viewer_track(20, a));
    assert!(
        !sim.relay.remove_viewer_track(20, a),
        "removing twice reports nothing to do"
    );
    sim.feed(10, &talk(100, 2, 960, 1));
    sim.feed(11, &talk(101, 2, 960, 2));
    assert_eq!(ssrcs(&mut sim), vec![501]);
    assert_eq!(sim.relay.live_viewer_tracks(20), 1);
    // Publisher 11 leaves: the viewer learns which of its tracks ended.
    assert_eq!(
        sim.relay.remove_publisher(11, &mut sim.sink),
        vec![(20, vec![1])]
    );
    assert_eq!(sim.relay.live_viewer_tracks(20), 0);
}

/// A track muted by a moderator reaches no viewer while muted (the others go on), and a video
/// track that comes back asks its publisher for a key frame.
#[test]
fn a_moderator_mute_stops_forwarding_and_unmuting_asks_for_a_key_frame() {
    let mut sim = Sim::new(RelayConfig::default());
    sim.publish(PUB, 0x5e1f, publisher_tracks());
    sim.view(V1, viewer_tracks(1000));
    sim.goto(10);
    sim.feed(PUB, &video_rtp(0, 1_000).payload(KEY).build());
    sim.sink.take();
    // Track 0 is audio, track 1 video.
    for (track, muted) in [(0, true), (1, true)] {
        assert!(sim
            .relay
            .set_blocked(sim.now, PUB, track, muted, &mut sim.sink));
        assert!(sim.relay.track_is_blocked(PUB, track));
    }
    assert!(
        !sim.relay.set_blocked(sim.now, PUB, 7, true, &mut sim.sink),
        "no such track"
    );
    assert!(
        sim.sink.take().1.is_empty(),
        "muting asks nothing of the publisher"
    );
    sim.goto(2_000);
    sim.feed(PUB, &audio_rtp(1, 960).payload(&[0xfc, 1]).build());
    sim.feed(PUB, &video_rtp(1, 4_000).payload(DELTA).build());
    assert!(sim.sink.take().0.is_empty(), "nothing muted is forwarded");

    // Audio back: forwarded again at once.
    sim.relay.set_blocked(sim.now, PUB, 0, false, &mut sim.sink);
    assert!(sim.sink.take().1.is_empty(), "audio needs no key frame");
    sim.feed(PUB, &audio_rtp(2, 1_920).payload(&[0xfc, 2]).build());
    assert_eq!(views_to(&sim.sink.take().0, V1).count(), 1);

    // Video back: a key frame is asked for.
    sim.relay.set_blocked(sim.now, PUB, 1, false, &mut sim.sink);
    let (_, rtcp) = sim.sink.take();
    assert_eq!(rtcp_debug(&rtcp, PUB), key_frame_request());
    sim.goto(2_100);
    sim.feed(PUB, &video_rtp(2, 8_000).payload(KEY).build());
    assert_eq!(
        views_to(&sim.sink.take().0, V1).count(),
        1,
        "video flows again"
    );
}
