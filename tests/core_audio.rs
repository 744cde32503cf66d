//! The relay core fitting audio to a viewer's link: RED (RFC 2198) to a viewer that loses packets,
//! Opus re-encoded at a low bitrate for one whose estimate cannot carry the original.

use volna::core::room::RelayConfig;
use volna::core::rtp::RtpView;
use volna::testkit::{remb, Sim};

mod common;
use common::call::*;

/// A viewer that negotiated audio/red and reports loss gets its audio as RED (RFC 2198): one
/// redundant block, the previous frame, with its timestamp offset and length, then the primary.
/// Before any loss, and for a viewer without RED, audio goes as plain Opus.
#[test]
fn audio_goes_as_red_to_a_viewer_that_loses_packets() {
    use volna::core::rtcp::{ReceiverReport, ReportBlock};
    let mut sim = Sim::new(RelayConfig::default());
    sim.publish(PUB, 77, publisher_tracks());
    let mut tracks = viewer_tracks(0x100);
    tracks[1].red = Some(63);
    sim.view(V1, tracks);
    sim.view(V2, viewer_tracks(0x200));
    let frame = |seq: u16| vec![seq as u8; 40 + (seq % 7) as usize];
    // Audio at 50 packets/s; returns V1's and V2's audio payloads (payload type, payload).
    type Got = Vec<(u8, Vec<u8>)>;
    let run = |sim: &mut Sim, from: u16, to: u16| {
        let (mut v1, mut v2): (Got, Got) = (Vec::new(), Vec::new());
        for seq in from..to {
            sim.goto(u64::from(seq) * 20);
            let p = audio_rtp(seq, u32::from(seq) * 960)
                .ext(4, b"0")
                .payload(&frame(seq));
            sim.feed(PUB, &p.build());
            sim.timeout();
            let (out, _) = sim.sink.take();
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
    let (v1, _) = run(&mut sim, 0, 50);
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
    sim.goto(1000);
    sim.viewer_rtcp(V1, &b[..n]);
    let (v1, v2) = run(&mut sim, 50, 100);
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
    let count = sim.relay.counters().red_packets;
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

/// A viewer whose estimate cannot carry the publisher's Opus gets it re-encoded at a low bitrate
/// (same sequence numbers and timestamps, valid Opus, a fraction of the size); a viewer with room
/// gets the publisher's own bytes; with room again, the first viewer gets the original too.
#[test]
fn audio_is_reencoded_for_a_viewer_that_cannot_carry_it() {
    use opus::{Application, Bitrate, Channels, Decoder, Encoder};
    let mut sim = Sim::new(RelayConfig::default());
    sim.publish(PUB, 77, publisher_tracks());
    let audio = |base: u32| viewer_tracks(base).into_iter().skip(1).collect::<Vec<_>>();
    sim.view(V1, audio(0x100));
    sim.view(V2, audio(0x200));
    sim.viewer_rtcp(V1, &remb(0x100, 0x102, 30_000));
    let mut enc = Encoder::new(48_000, Channels::Stereo, Application::Audio).unwrap();
    enc.set_bitrate(Bitrate::Bits(64_000)).unwrap();
    let mut pcm = vec![0i16; 1920];
    let mut buf = vec![0u8; 1275];
    let mut seq = 0u16;
    // 50 packets/s; returns, per viewer, (sequence, payload) of what it got.
    type Got = Vec<(u16, Vec<u8>)>;
    let mut run = |sim: &mut Sim, frames: u32| {
        let (mut v1, mut v2, mut sent): (Got, Got, Vec<Vec<u8>>) =
            (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..frames {
            sim.goto(u64::from(seq) * 20);
            for i in 0..960 {
                let x = f64::from(u32::from(seq) * 960 + i as u32) * 440.0 * std::f64::consts::TAU
                    / 48_000.0;
                pcm[2 * i] = (x.sin() * 8000.0) as i16;
                pcm[2 * i + 1] = pcm[2 * i];
            }
            let n = enc.encode(&pcm, &mut buf).unwrap();
            sent.push(buf[..n].to_vec());
            let p = audio_rtp(seq, u32::from(seq) * 960)
                .ext(4, b"0")
                .payload(&buf[..n]);
            sim.feed(PUB, &p.build());
            sim.timeout();
            seq += 1;
            for (to, p) in sim.sink.take().0 {
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
    let (v1, v2, sent) = run(&mut sim, 150);
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
    assert!(sim.relay.counters().transcoded_packets >= 95);
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
    sim.goto(3000);
    sim.viewer_rtcp(V1, &remb(0x100, 0x102, 2_000_000));
    let (v1, _, sent) = run(&mut sim, 50);
    assert!(
        v1[25..].iter().zip(&sent[25..]).all(|((_, p), s)| p == s),
        "the original again"
    );
}
