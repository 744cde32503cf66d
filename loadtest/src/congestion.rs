//! RFC 8867 §5.1 (variable available capacity, one flow) against volna's congestion control. The
//! relay core (the `Relay` every worker runs) forwards a three-layer simulcast publisher to one
//! viewer whose downlink is the impairment model `volna-impair` uses (`impair::Link`, on the §5.1
//! script: 1, 2.5, 0.6 and 1 Mbps from 0, 40, 60 and 80 s, 50 ms one-way delay); the viewer's side
//! counts what arrives and answers with transport-cc feedback every 50 ms (volna's own
//! `TwccReceiver`, as a browser does) over a 50 ms return path, and the publisher answers PLIs
//! with key frames. It runs on virtual time: a 100 s script takes about a second and gives the
//! same trace every time.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use volna::core::room::twcc_rx::TwccReceiver;
use volna::core::room::{Feedback, RelayConfig, Rtx, SessionId, TrackSpec};
use volna::core::rtp::{ExtKind, ExtMap, RtpView};
use volna::testkit::{
    opus_track, plis_in, sent_to, simulcast_track, transport_seq, vp8_payload, RtpBuilder, Sim,
    ViewerTrack,
};

use crate::impair::{Link, Schedule};

const PUB: SessionId = 1;
const VIEWER: SessionId = 2;
const AUDIO_SSRC: u32 = 0xa0;
/// The publisher's layers: (RID, SSRC, bps, key-frame width × height).
const LAYERS: [(&str, u32, u64, (u16, u16)); 3] = [
    ("q", 0x51, 150_000, (320, 180)),
    ("h", 0x52, 500_000, (640, 360)),
    ("f", 0x53, 1_500_000, (1280, 720)),
];
/// What SRTP adds to every packet on the wire (the AES-GCM tag).
const SRTP_TAG: usize = 16;
const LAYER_MARK: u8 = 0xa0;
const FEEDBACK_EVERY: Duration = Duration::from_millis(50);
const RETURN_DELAY: Duration = Duration::from_millis(50);

/// One sample of the run, every half second.
#[derive(Debug, Clone, Copy, serde::Serialize, serde::Deserialize)]
pub struct Sample {
    pub t: f64,
    pub capacity_kbps: f64,
    pub estimate_kbps: f64,
    /// Everything that reached the viewer (media, repairs, probes), SRTP included.
    pub delivered_kbps: f64,
    /// The video layer the viewer last received (0 = lowest), -1 for none.
    pub layer: i32,
}

/// Runs the §5.1 script for `seconds` and returns a sample every half second.
pub fn rfc8867_5_1(seconds: u64) -> Vec<Sample> {
    let mut sim = Sim::new(RelayConfig::default());
    sim.room = "rfc8867";
    let t0 = sim.t0;
    let video = TrackSpec {
        feedback: Feedback {
            nack: true,
            pli: true,
            fir: false,
            remb: false,
        },
        ..simulcast_track(&LAYERS.map(|l| l.0))
    };
    let audio = TrackSpec {
        ext: ExtMap::from_pairs(&[(4, ExtKind::Mid)]),
        ..opus_track(AUDIO_SSRC)
    };
    sim.publish(PUB, 7, vec![audio, video]);
    let viewer_ext = [(2, ExtKind::Mid), (5, ExtKind::TransportWideCc)];
    let rtx = Rtx {
        payload_type: 97,
        ssrc: 0x1a1a,
    };
    sim.view(
        VIEWER,
        vec![
            ViewerTrack::new(PUB, 0, 0x102, 111)
                .ext(&viewer_ext)
                .start(1000, 0)
                .build(),
            ViewerTrack::new(PUB, 1, 0x101, 96)
                .ext(&viewer_ext)
                .start(1000, 0)
                .rtx(rtx)
                .build(),
        ],
    );
    let mut link = Link::new(Schedule::rfc8867_5_1(), t0, 8867);
    let mut twcc = TwccReceiver::new();
    let mut feedback: VecDeque<(Instant, Vec<u8>)> = VecDeque::new();
    let mut next_feedback = t0 + FEEDBACK_EVERY;
    // Per layer: next sequence number, picture id, key frame due.
    let mut seqs = [0u16; 3];
    let mut pids = [0u16; 3];
    let mut key_due = [true; 3];
    let mut audio_seq = 0u16;
    let (mut window_bytes, mut layer) = (0usize, -1i32);
    let mut samples = Vec::new();
    for ms in 0..seconds * 1000 {
        sim.goto(ms);
        let now = sim.now;
        if ms % 20 == 0 {
            let p = RtpBuilder::new(AUDIO_SSRC, 111)
                .seq(audio_seq)
                .ts(ms as u32 * 48)
                .ext(4, b"0")
                .payload(&[0xfc; 100]);
            audio_seq = audio_seq.wrapping_add(1);
            sim.feed(PUB, &p.build());
        }
        if ms % 33 == 0 {
            for (i, &(rid, ssrc, bps, size)) in LAYERS.iter().enumerate() {
                let key = std::mem::take(&mut key_due[i]) || ms % 4000 == 0;
                let frame = (bps / 8 / 30) as usize * if key { 3 } else { 1 };
                let n = frame.div_ceil(1100);
                for k in 0..n {
                    // The fill tells the viewer's side which layer a packet is from.
                    let fill = LAYER_MARK + i as u8;
                    let payload = vp8_payload(k == 0, key, pids[i], size, frame / n, fill);
                    let p = RtpBuilder::new(ssrc, 96)
                        .seq(seqs[i])
                        .ts(ms as u32 * 90)
                        .ext(4, b"1")
                        .ext(10, rid.as_bytes())
                        .payload(&payload);
                    seqs[i] = seqs[i].wrapping_add(1);
                    sim.feed(PUB, &p.build());
                }
                pids[i] = (pids[i] + 1) & 0x7fff;
            }
        }
        sim.run_due();
        while feedback.front().is_some_and(|(at, _)| *at <= now) {
            let (_, fb) = feedback.pop_front().expect("checked");
            sim.viewer_rtcp(VIEWER, &fb);
        }
        let (to_viewer, to_publisher) = sim.sink.take();
        for (_, pli) in plis_in(&to_publisher).filter(|(to, _)| *to == PUB) {
            if let Some(i) = LAYERS.iter().position(|l| l.1 == pli.media_ssrc) {
                key_due[i] = true;
            }
        }
        for p in sent_to(&to_viewer, VIEWER) {
            // SRTP's tag: what the link carries.
            let mut p = p.to_vec();
            p.resize(p.len() + SRTP_TAG, 0);
            link.handle_packet(now, p);
        }
        while let Some(p) = link.poll_release(now) {
            window_bytes += p.len();
            let plain = &p[..p.len() - SRTP_TAG];
            let Ok(view) = RtpView::parse(plain) else {
                continue;
            };
            if let Some(seq) = transport_seq(plain) {
                let arrival = now.duration_since(t0).as_micros() as i64;
                twcc.on_packet(seq, arrival);
            }
            if view.ssrc == 0x101 {
                if let Some(&b) = view.payload(plain).last() {
                    layer = i32::from(b.wrapping_sub(LAYER_MARK)).min(2);
                }
            }
        }
        if now >= next_feedback {
            next_feedback += FEEDBACK_EVERY;
            if let Some(fb) = twcc.feedback(0x100, 0x101) {
                feedback.push_back((now + RETURN_DELAY, fb.to_vec()));
            }
        }
        if ms % 500 == 499 {
            let capacity = link.condition(now).rate_bps.unwrap_or(0);
            samples.push(Sample {
                t: (ms + 1) as f64 / 1000.0,
                capacity_kbps: capacity as f64 / 1000.0,
                estimate_kbps: sim.relay.viewer_estimate(VIEWER).map_or(0, |e| e.0) as f64 / 1000.0,
                delivered_kbps: window_bytes as f64 * 8.0 / 0.5 / 1000.0,
                layer,
            });
            window_bytes = 0;
        }
    }
    samples
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The relay's estimate follows the §5.1 capacity and its layer choice follows the estimate:
    /// the top layer once 2.5 Mbps is there, the lowest within two seconds of the drop to 0.6,
    /// and never more delivered than the link carries (queue included).
    #[test]
    fn estimate_and_layers_follow_the_script() {
        let s = rfc8867_5_1(100);
        let at = |t: f64| s.iter().find(|x| x.t >= t).expect("sample");
        let steady = |from: f64, to: f64| {
            let v: Vec<_> = s.iter().filter(|x| x.t > from && x.t <= to).collect();
            v.iter().map(|x| x.estimate_kbps).sum::<f64>() / v.len() as f64
        };
        assert!((800.0..=1250.0).contains(&steady(30.0, 40.0)), "{s:?}");
        assert!(steady(50.0, 60.0) >= 2000.0, "{s:?}");
        assert_eq!(at(59.5).layer, 2, "top layer at 2.5 Mbps");
        assert!(at(62.0).estimate_kbps <= 700.0, "{s:?}");
        assert_eq!(at(62.0).layer, 0, "lowest layer after the drop");
        assert!(steady(70.0, 80.0) <= 700.0, "{s:?}");
        for x in &s {
            assert!(x.delivered_kbps <= x.capacity_kbps * 1.15 + 50.0, "{x:?}");
        }
    }
}
