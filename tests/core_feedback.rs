//! The relay core repairing and restarting viewers' video: resends (on the RTX stream, with the
//! bytes first sent), probes, key frames from the cache or asked of the publisher.

use std::time::{Duration, Instant};

use volna::core::room::RelayConfig;
use volna::core::rtp::RtpView;
use volna::testkit::{nack, remb, rtcp_debug, transport_seq, views_to, Recorder, Sim};

mod common;
use common::call::*;

/// With an RTX stream negotiated, a NACK is answered on it (RFC 4588: its own SSRC, payload type
/// and numbering, the original sequence number first in the payload), and probes go there as
/// padding-only packets carrying transport-wide numbers.
#[test]
fn rtx_carries_resends_and_probes() {
    use volna::core::rtcp::twcc::{self, PacketResult};
    let mut sim = Sim::new(RelayConfig::default());
    let t0 = sim.t0;
    sim.publish(PUB, 77, publisher_tracks());
    sim.view(V1, transport_cc_tracks(0x100, true));
    let mut sent: Vec<(u16, Instant)> = Vec::new();
    let mut video_out: Vec<Vec<u8>> = Vec::new();
    // 60 packets of 1200 B in 1.2 s: about 480 kbps, more than the initial estimate.
    for i in 0..60u16 {
        sim.goto(20 * u64::from(i));
        let video = video_rtp(i, u32::from(i) * 1800)
            .ext(4, b"1")
            .payload(&[0x10, 0x00])
            .pad_to(1200, i as u8);
        sim.feed(PUB, &video.build());
        for (to, p) in sim.sink.take().0 {
            if to == V1 {
                sent.push((transport_seq(&p).unwrap(), sim.now));
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
    sim.viewer_rtcp(V1, &fb);

    // A NACK for the 10th video packet: answered on the RTX stream.
    let orig = &video_out[10];
    let ov = RtpView::parse(orig).unwrap();
    let nack = nack(0x100, ov.ssrc, ov.sequence);
    sim.viewer_rtcp(V1, &nack);
    let (resent, _) = sim.sink.take();
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
    let before = sim.relay.counters().probes;
    let now = sim.now;
    for k in 1..=10u64 {
        sim.now = now + Duration::from_millis(100 * k);
        sim.timeout();
    }
    let (out, _) = sim.sink.take();
    let probes: Vec<&Vec<u8>> = out
        .iter()
        .filter(|(to, p)| *to == V1 && RtpView::parse(p).unwrap().ssrc == 0x1a1a)
        .map(|(_, p)| p)
        .collect();
    assert!(
        sim.relay.counters().probes > before,
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

/// A viewer that joins shortly after a key frame starts from the cache: the key frame and every
/// packet since are sent to it at once, numbered from its first sequence number, and the
/// publisher is not asked for another. One joining after the key frame is too old asks.
#[test]
fn joining_viewers_start_from_the_cached_key_frame() {
    let mut sim = Sim::new(RelayConfig::default());
    sim.publish(PUB, 77, publisher_tracks());
    sim.view(V1, viewer_tracks(0x100));
    let plis = |sink: &mut Recorder| {
        let (_, rtcp) = sink.take();
        rtcp_debug(&rtcp, PUB)
            .iter()
            .filter(|r| r.starts_with("Pli"))
            .count()
    };
    assert_eq!(
        plis(&mut sim.sink),
        1,
        "the first viewer asks for a key frame"
    );
    // The key frame (two packets), then a delta frame every 33 ms.
    let mut seq = 2000u16;
    let mut send = |sim: &mut Sim, ms: u64, payload: &[u8]| {
        sim.goto(ms);
        sim.feed(
            PUB,
            &video_rtp(seq, ms as u32 * 90).payload(payload).build(),
        );
        seq = seq.wrapping_add(1);
    };
    send(&mut sim, 10, KEY);
    send(&mut sim, 10, &[0x00, 0x00, 0xaa]);
    for ms in (43..300).step_by(33) {
        send(&mut sim, ms, DELTA);
    }
    let (to_v1, _) = sim.sink.take();
    assert_eq!(to_v1.len(), 10, "V1 got the key frame and the deltas");

    sim.goto(300);
    sim.view(V2, viewer_tracks(0x200));
    let (rtp_out, rtcp_out) = sim.sink.take();
    assert!(
        rtcp_debug(&rtcp_out, PUB)
            .iter()
            .all(|r| !r.starts_with("Pli")),
        "no key frame asked for"
    );
    let got: Vec<(u16, Vec<u8>)> = views_to(&rtp_out, V2)
        .map(|(v, p)| (v.sequence, v.payload(p).to_vec()))
        .collect();
    assert_eq!(
        got.len(),
        10,
        "V2 is sent the key frame and every packet since"
    );
    assert_eq!(got[0].1, KEY);
    let seqs: Vec<u16> = got.iter().map(|g| g.0).collect();
    assert_eq!(seqs, (100..110).collect::<Vec<u16>>());
    assert_eq!(sim.relay.counters().replayed_packets, 10);
    send(&mut sim, 340, DELTA);
    let (rtp_out, _) = sim.sink.take();
    let next: Vec<u16> = views_to(&rtp_out, V2).map(|(v, _)| v.sequence).collect();
    assert_eq!(next, [110], "live packets go on from there");

    for ms in (373..1500).step_by(33) {
        send(&mut sim, ms, DELTA);
    }
    sim.sink.take();
    sim.goto(1500);
    sim.view(V3, viewer_tracks(0x300));
    assert_eq!(
        plis(&mut sim.sink),
        1,
        "a key frame over a second old is not replayed"
    );
    assert_eq!(sim.relay.counters().replayed_packets, 10);
}

/// A viewer whose path moved (a network change) gets its video from a key frame asked for at
/// once; a viewer that did not move asks for nothing.
#[test]
fn a_viewer_that_moved_gets_a_key_frame_asked_for() {
    let mut sim = call_with_one_viewer(0x5e1f);
    sim.goto(5000);
    sim.relay.viewer_moved(sim.now, 4242, &mut sim.sink);
    assert!(
        sim.sink.take().1.is_empty(),
        "no such viewer: nothing asked"
    );
    sim.relay.viewer_moved(sim.now, V1, &mut sim.sink);
    let (_, rtcp) = sim.sink.take();
    assert_eq!(rtcp_debug(&rtcp, PUB), key_frame_request());
}

/// A publisher that repeats a sequence number with other bytes (a QUIC publisher can: RoQ has no
/// SRTP replay check) gets the copy dropped, and a viewer's NACK brings back the bytes it was
/// sent, not the copy: one sequence number, so one SRTP index at the viewer, carries one set of
/// bytes (two under one AES-GCM nonce give away the authentication key).
#[test]
fn a_resend_carries_the_bytes_first_sent_under_that_number() {
    let mut sim = call_with_one_viewer(77);
    sim.feed(PUB, &video_rtp(1, 90).ext(4, b"1").payload(KEY).build());
    let (out, _) = sim.sink.take();
    let original = out[0].1.clone();
    let v = RtpView::parse(&original).unwrap();
    let copy = video_rtp(1, 90)
        .ext(4, b"1")
        .payload(&[0x10, 0x00, 0xca, 0xca, 0xca]);
    sim.goto(5);
    sim.feed(PUB, &copy.build());
    assert!(sim.sink.take().0.is_empty(), "the copy is not forwarded");
    let nack = nack(0x100, v.ssrc, v.sequence);
    sim.goto(10);
    sim.viewer_rtcp(V1, &nack);
    let (resent, _) = sim.sink.take();
    assert_eq!(resent.len(), 1);
    assert_eq!(
        resent[0].1, original,
        "the resend is the packet first sent, byte for byte"
    );
}

/// Resends wait in the viewer's pacer like video: a NACK naming 15 packets, from a viewer whose
/// link rate is known, does not put them all on the link at once. They leave spread out at the
/// pacing rate, each once, and within the pacer's longest wait (250 ms).
#[test]
fn resends_leave_at_the_pacing_rate() {
    let mut sim = Sim::new(RelayConfig::default());
    sim.publish(PUB, 77, publisher_tracks());
    sim.view(V1, transport_cc_tracks(0x100, false));
    sim.viewer_rtcp(V1, &remb(0x100, VIDEO_SSRC, 1_000_000));
    let mut video_out: Vec<Vec<u8>> = Vec::new();
    // 60 packets of 1200 B in 1.2 s, each paced out before the next comes.
    for i in 0..60u16 {
        sim.goto(20 * u64::from(i));
        let video = video_rtp(i, u32::from(i) * 1800)
            .ext(4, b"1")
            .payload(&[0x10, 0x00])
            .pad_to(1200, i as u8);
        sim.feed(PUB, &video.build());
        sim.advance(Duration::from_millis(19));
        video_out.extend(views_to(&sim.sink.take().0, V1).map(|(_, p)| p.to_vec()));
    }
    assert_eq!(video_out.len(), 60);

    // The last 15 lost, named in one NACK.
    let lost: Vec<u16> = video_out[45..]
        .iter()
        .map(|p| RtpView::parse(p).unwrap().sequence)
        .collect();
    let ssrc = RtpView::parse(&video_out[0]).unwrap().ssrc;
    let mut buf = [0u8; 1500];
    let n = volna::core::rtcp::nack::write_list(0x100, ssrc, &lost, &mut buf).unwrap();
    let asked = sim.now;
    sim.viewer_rtcp(V1, &buf[..n]);
    let mut resent: Vec<(u16, Duration)> = Vec::new();
    for _ in 0..400 {
        for (v, p) in views_to(&sim.sink.take().0, V1) {
            // (Probes, if any, are padding.)
            let Some(k) = lost.iter().position(|s| *s == v.sequence) else {
                continue;
            };
            assert_eq!(p, video_out[45 + k], "the bytes first sent");
            resent.push((v.sequence, sim.now - asked));
        }
        sim.advance(Duration::from_millis(1));
    }
    let mut seqs: Vec<u16> = resent.iter().map(|r| r.0).collect();
    seqs.sort_unstable();
    assert_eq!(seqs, lost, "each lost packet resent once: {resent:?}");
    let at_once = resent.iter().filter(|r| r.1.is_zero()).count();
    assert!(at_once <= 2, "not all at once: {resent:?}");
    let last = resent.iter().map(|r| r.1).max().unwrap();
    assert!(
        last >= Duration::from_millis(20) && last <= Duration::from_millis(250),
        "spread out, within the longest wait: {resent:?}"
    );
}

/// The distributions operators see: a viewer's time to first media (from when its session
/// started), and what its receiver reports say of loss, jitter and the round-trip time (a report
/// that echoes the sender report it was sent). A report echoing no sender report gives no RTT.
#[test]
fn time_to_first_media_and_report_figures_are_measured() {
    use volna::core::rtcp::{ReceiverReport, ReportBlock, SenderReport};
    let mut sim = Sim::new(RelayConfig::default());
    sim.publish(PUB, 0x5e1f, publisher_tracks());
    sim.view(V1, viewer_tracks(1000));
    // Its session started at 0; the first packet it is sent, the key frame, goes at 200 ms.
    assert!(sim.relay.time_first_media(V1, sim.at(0)));
    assert!(!sim.relay.time_first_media(99, sim.at(0)), "no such viewer");
    sim.goto(200);
    sim.feed(PUB, &video_rtp(0, 1_000).payload(KEY).build());
    sim.goto(300);
    sim.feed(PUB, &video_rtp(1, 4_000).payload(DELTA).build());
    let join = sim.relay.counters().join_us;
    assert_eq!(
        (join.count, join.sum),
        (1, 200_000),
        "the first packet only"
    );

    // The publisher's sender report goes to the viewer at 400 ms; its report comes back at
    // 470 ms, held 10 ms by the viewer: 60 ms round trip.
    sim.goto(400);
    let ntp: u64 = 0x0123_4567_89ab_cdef;
    let sr = SenderReport {
        ssrc: VIDEO_SSRC,
        ntp,
        rtp_timestamp: 4_000,
        packets: 2,
        octets: 100,
    };
    let mut buf = [0u8; 64];
    let n = sr.write(&mut buf).unwrap();
    sim.relay
        .handle_publisher_rtcp(sim.now, PUB, &buf[..n], &mut sim.sink);
    sim.goto(470);
    let block = |last_sr: u32| ReportBlock {
        ssrc: 1001,
        fraction_lost: 26,
        cumulative_lost: 3,
        highest_sequence: 101,
        jitter: 900,
        last_sr,
        delay_since_last_sr: 655,
    };
    let middle = (ntp >> 16) as u32;
    for (last_sr, rtts) in [(middle, 1), (0, 1), (middle ^ 1, 1)] {
        let n = ReceiverReport::write(0xbeef, &[block(last_sr)], &mut buf).unwrap();
        sim.viewer_rtcp(V1, &buf[..n]);
        assert_eq!(
            sim.relay.counters().rtt_us.count,
            rtts,
            "last_sr {last_sr:x}"
        );
    }
    let c = sim.relay.counters();
    // 655/65536 s held: 9994 µs.
    assert_eq!(c.rtt_us.sum, 70_000 - 9_994);
    // 26/256 lost: 101 per mille; 900 ticks of 90 kHz: 10 ms; once per report.
    assert_eq!((c.loss_per_mille.count, c.loss_per_mille.sum), (3, 303));
    assert_eq!((c.jitter_us.count, c.jitter_us.sum), (3, 30_000));
}
