//! The relay core fitting video to each viewer's link: transport-wide numbering and feedback
//! driving the estimate, pausing and resuming video, pacing bursts to the estimate.

use std::time::{Duration, Instant};

use volna::core::room::RelayConfig;
use volna::core::rtp::RtpView;
use volna::testkit::{nack, plis_in, remb, transport_seq, views_to, Recorder, Sim};

mod common;
use common::call::*;

/// A viewer that negotiated transport-wide sequence numbers gets them on every packet, numbered
/// across its tracks; its transport-cc feedback drives its bandwidth estimate. A viewer without
/// them gets no such extension.
#[test]
fn transport_cc_numbers_packets_and_feedback_drives_the_estimate() {
    use volna::core::rtcp::twcc::{self, PacketResult};
    let mut sim = Sim::new(RelayConfig::default());
    let t0 = sim.t0;
    sim.publish(PUB, 77, publisher_tracks());
    sim.view(V1, transport_cc_tracks(0x100, false));
    sim.view(V2, viewer_tracks(0x200));
    let (initial, fed) = sim.relay.viewer_estimate(V1).unwrap();
    assert!(!fed);
    let mut seqs = Vec::new();
    // 2 s of audio and key-frame video, 20 ms apart; feedback from V1 every 100 ms saying
    // everything arrived 10 ms after it left (an idle path).
    let mut sent_at: Vec<(u16, Instant)> = Vec::new();
    for i in 0..100u16 {
        sim.goto(20 * u64::from(i));
        let audio = audio_rtp(i, u32::from(i) * 960)
            .ext(4, b"0")
            .payload(&[0xfc; 60]);
        let video = video_rtp(i, u32::from(i) * 1800)
            .ext(4, b"1")
            .payload(&[0x10, 0x00])
            .pad_to(1000, 0xab);
        for p in [audio, video] {
            sim.feed(PUB, &p.build());
        }
        let (rtp_out, _) = sim.sink.take();
        for (to, p) in rtp_out {
            match to {
                V1 => {
                    let s = transport_seq(&p).expect("V1's packets carry the transport-wide seq");
                    seqs.push(s);
                    sent_at.push((s, sim.now));
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
            sim.viewer_rtcp(V1, &fb);
        }
    }
    assert_eq!(seqs.len(), 200, "audio and video of 100 rounds");
    // A NACK for a video packet V1 was sent: the resend is the original, byte for byte, its
    // transport-wide number included (a different header under the same SRTP index would reuse
    // an AES-GCM nonce).
    let originals: Vec<Vec<u8>> = {
        sim.now += Duration::from_millis(20);
        let video = video_rtp(100, 180_000)
            .ext(4, b"1")
            .payload(&[0x10, 0x01])
            .pad_to(1000, 0xcd);
        sim.feed(PUB, &video.build());
        sim.sink
            .take()
            .0
            .into_iter()
            .filter(|(to, _)| *to == V1)
            .map(|(_, p)| p)
            .collect()
    };
    let original = &originals[0];
    let ov = RtpView::parse(original).unwrap();
    let nack = nack(0x100, ov.ssrc, ov.sequence);
    sim.viewer_rtcp(V1, &nack);
    let (resent, _) = sim.sink.take();
    assert_eq!(resent.len(), 1, "one resend");
    assert_eq!(
        &resent[0].1, original,
        "the resend is the original, byte for byte"
    );
    assert!(
        seqs.windows(2).all(|w| w[1] == w[0].wrapping_add(1)),
        "one sequence across the viewer's tracks: {seqs:?}"
    );
    let (estimate, fed) = sim.relay.viewer_estimate(V1).unwrap();
    assert!(fed, "feedback was taken");
    assert_ne!(estimate, initial, "the estimate moved with the feedback");
    assert_eq!(sim.relay.viewer_estimate(V2).map(|e| e.1), Some(false));
}

/// A viewer whose link (here told by REMB) cannot carry the video gets audio alone, without a
/// gap; when the link can carry it again the video resumes at a key frame, numbered right after
/// the last video packet the viewer got, and the publisher is asked for that key frame.
#[test]
fn video_pauses_when_the_estimate_cannot_carry_it_and_resumes_when_it_can() {
    let mut sim = Sim::new(RelayConfig {
        pause_video: true,
        ..RelayConfig::default()
    });
    sim.publish(PUB, 77, publisher_tracks());
    // Pausing needs a way back: transport-wide numbers and an RTX stream for probes.
    sim.view(V1, transport_cc_tracks(0x100, true));
    // 50 packets/s of audio, 30 frames/s of 4 × 1000 B video (about 1 Mbps), key frames each
    // second; returns what V1 got: (audio count, video sequence numbers).
    let mut vseq = 0u16;
    let mut run = |sim: &mut Sim, from_ms: u64, to_ms: u64| {
        let (mut audio, mut video, mut plis) = (0, Vec::new(), 0);
        for ms in from_ms..to_ms {
            sim.goto(ms);
            if ms % 20 == 0 {
                sim.feed(PUB, &audio_at(ms).ext(4, b"0").build());
            }
            if ms % 33 == 0 {
                for k in 0..4 {
                    let key = ms % 990 == 0 && k == 0;
                    let p = video_rtp(vseq, ms as u32 * 90)
                        .ext(4, b"1")
                        .payload(&[0x10, if key { 0 } else { 1 }])
                        .pad_to(1000, 0xab);
                    vseq = vseq.wrapping_add(1);
                    sim.feed(PUB, &p.build());
                }
            }
            if ms % 10 == 0 {
                sim.timeout();
            }
            let (rtp_out, rtcp_out) = sim.sink.take();
            plis += plis_in(&rtcp_out).filter(|(to, _)| *to == PUB).count();
            for (v, _) in views_to(&rtp_out, V1) {
                match v.payload_type {
                    98 => video.push(v.sequence),
                    109 => audio += 1,
                    _ => {} // probes on the RTX stream
                }
            }
        }
        (audio, video, plis)
    };
    let (a1, v1, _) = run(&mut sim, 0, 3000);
    assert!(
        a1 >= 140 && v1.len() >= 300,
        "before any estimate all flows: {a1} {}",
        v1.len()
    );
    sim.goto(3000);
    sim.viewer_rtcp(V1, &remb(0x100, 0x101, 100_000));
    // A passing dip does not pause: video goes on for two seconds, then stops.
    let (a2, v2a, _) = run(&mut sim, 3000, 5000);
    assert!(v2a.len() >= 200, "not paused on a dip: {}", v2a.len());
    let (a2b, v2, _) = run(&mut sim, 5000, 6000);
    assert!(a2 + a2b >= 145, "audio goes on: {a2} + {a2b}");
    assert!(
        v2.len() <= 40,
        "video paused within two seconds and an allocation round: {}",
        v2.len()
    );
    assert!(sim.relay.counters().paused_tracks >= 1);
    sim.goto(6000);
    sim.viewer_rtcp(V1, &remb(0x100, 0x101, 5_000_000));
    let (a3, v3, plis) = run(&mut sim, 6000, 9000);
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

/// Video to a viewer whose link is known leaves paced: a key frame's burst of 30 packets is
/// spread at 2.5 times the estimate instead of going out at once, audio is not held behind it,
/// and transport-wide numbers follow the order packets leave in.
#[test]
fn video_is_paced_to_the_viewers_estimate() {
    let mut sim = Sim::new(RelayConfig::default());
    sim.publish(PUB, 77, publisher_tracks());
    sim.view(V1, transport_cc_tracks(0x100, false));
    sim.viewer_rtcp(V1, &remb(0x100, 0x101, 1_000_000));
    sim.sink.take();
    // The key frame: 30 packets of about 1000 bytes, all at 10 ms.
    sim.goto(10);
    for k in 0..30u16 {
        let mut payload = if k == 0 {
            KEY.to_vec()
        } else {
            vec![0x00, 0x00]
        };
        payload.resize(1000, 0xab);
        sim.feed(PUB, &video_rtp(500 + k, 900).payload(&payload).build());
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
    record(&mut out, &mut sim.sink, 10);
    assert!(
        out.len() <= 3,
        "only the first packets leave at once: {}",
        out.len()
    );
    // From 11 ms on, a millisecond at a time: audio as it comes, then what the relay has due.
    sim.goto(11);
    for ms in 11..300u64 {
        if ms % 20 == 0 {
            let p = audio_rtp(ms as u16, ms as u32 * 48).payload(&[0xfc; 60]);
            sim.feed(PUB, &p.build());
        }
        sim.advance(Duration::from_millis(1));
        record(&mut out, &mut sim.sink, ms);
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
