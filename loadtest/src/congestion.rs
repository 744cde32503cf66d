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
use volna::core::room::{
    Feedback, MediaKind, Relay, RelayConfig, Rtx, SessionId, Sink, TrackRef, TrackSpec,
    ViewerTrackSpec,
};
use volna::core::rtcp::{Compound, RtcpPacket};
use volna::core::rtp::{Codec, ExtKind, ExtMap, RtpView};

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

#[derive(Default)]
struct Out {
    to_viewer: Vec<Vec<u8>>,
    to_publisher: Vec<Vec<u8>>,
}

impl Sink for Out {
    fn rtp(&mut self, to: SessionId, header: &[u8], prefix: &[u8], payload: &[u8]) {
        if to == VIEWER {
            let mut p = Vec::with_capacity(header.len() + prefix.len() + payload.len() + SRTP_TAG);
            p.extend_from_slice(header);
            p.extend_from_slice(prefix);
            p.extend_from_slice(payload);
            p.resize(p.len() + SRTP_TAG, 0);
            self.to_viewer.push(p);
        }
    }

    fn rtcp(&mut self, to: SessionId, packet: &[u8]) {
        if to == PUB {
            self.to_publisher.push(packet.to_vec());
        }
    }
}

fn ext(pairs: &[(u8, ExtKind)]) -> ExtMap {
    ExtMap::from_pairs(pairs)
}

/// An RTP packet with one-byte header extensions.
fn rtp(ssrc: u32, pt: u8, seq: u16, ts: u32, elems: &[u8], payload: &[u8]) -> Vec<u8> {
    let mut p = vec![0x80, pt, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
    p[2..4].copy_from_slice(&seq.to_be_bytes());
    p[4..8].copy_from_slice(&ts.to_be_bytes());
    p[8..12].copy_from_slice(&ssrc.to_be_bytes());
    p[0] |= 0x10;
    let words = elems.len().div_ceil(4);
    p.extend_from_slice(&[0xbe, 0xde, 0, words as u8]);
    p.extend_from_slice(elems);
    p.resize(p.len() + words * 4 - elems.len(), 0);
    p.extend_from_slice(payload);
    p
}

/// A VP8 packet: descriptor with a 15-bit picture id; the first packet of a key frame carries
/// the frame tag, start code and size.
/// The rest is filled with `fill`.
fn vp8(first: bool, key: bool, picture_id: u16, size: (u16, u16), len: usize, fill: u8) -> Vec<u8> {
    let id = (picture_id | 0x8000).to_be_bytes();
    let mut p = vec![
        if first { 0x90 } else { 0x80 },
        0x80,
        id[0],
        id[1],
        u8::from(!key),
    ];
    if first && key {
        p.extend_from_slice(&[0, 0, 0x9d, 0x01, 0x2a]);
        p.extend_from_slice(&size.0.to_le_bytes());
        p.extend_from_slice(&size.1.to_le_bytes());
    }
    p.resize(len.max(p.len()), fill);
    p
}

/// Runs the §5.1 script for `seconds` and returns a sample every half second.
pub fn rfc8867_5_1(seconds: u64) -> Vec<Sample> {
    let t0 = Instant::now();
    let mut relay = Relay::new(RelayConfig::default());
    let mut out = Out::default();
    let video = TrackSpec {
        kind: MediaKind::Video,
        mid: "1".into(),
        codec: Codec::Vp8,
        payload_type: 96,
        clock_rate: 90_000,
        ssrc: None,
        ext: ext(&[(4, ExtKind::Mid), (10, ExtKind::RtpStreamId)]),
        feedback: Feedback {
            nack: true,
            pli: true,
            fir: false,
            remb: false,
        },
        rids: LAYERS.iter().map(|l| l.0.to_owned()).collect(),
    };
    let audio = TrackSpec {
        kind: MediaKind::Audio,
        mid: "0".into(),
        codec: Codec::Opus,
        payload_type: 111,
        clock_rate: 48_000,
        ssrc: Some(AUDIO_SSRC),
        ext: ext(&[(4, ExtKind::Mid)]),
        feedback: Feedback::default(),
        rids: Vec::new(),
    };
    relay
        .add_publisher(PUB, "rfc8867", 7, vec![audio, video])
        .expect("fresh relay");
    relay.add_viewer(VIEWER, "rfc8867").expect("fresh relay");
    let viewer_ext = ext(&[(2, ExtKind::Mid), (5, ExtKind::TransportWideCc)]);
    let specs = [
        (0usize, "0", 0x102u32, 111u8, None),
        (
            1,
            "1",
            0x101,
            96,
            Some(Rtx {
                payload_type: 97,
                ssrc: 0x1a1a,
            }),
        ),
    ];
    for (track, mid, ssrc, pt, rtx) in specs {
        let spec = ViewerTrackSpec {
            source: TrackRef {
                publisher: PUB,
                track,
            },
            mid: mid.into(),
            ssrc,
            payload_type: pt,
            ext: viewer_ext.clone(),
            initial_seq: 1000,
            initial_ts: 0,
            rtx,
            red: None,
        };
        relay
            .add_viewer_track(t0, VIEWER, spec, &mut out)
            .expect("publisher track exists");
    }
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
        let now = t0 + Duration::from_millis(ms);
        if ms % 20 == 0 {
            let p = rtp(
                AUDIO_SSRC,
                111,
                audio_seq,
                ms as u32 * 48,
                &[0x40, b'0'],
                &[0xfc; 100],
            );
            audio_seq = audio_seq.wrapping_add(1);
            feed(&mut relay, now, &p, &mut out);
        }
        if ms % 33 == 0 {
            for (i, &(rid, ssrc, bps, size)) in LAYERS.iter().enumerate() {
                let key = std::mem::take(&mut key_due[i]) || ms % 4000 == 0;
                let frame = (bps / 8 / 30) as usize * if key { 3 } else { 1 };
                let n = frame.div_ceil(1100);
                for k in 0..n {
                    let elems = [0x40, b'1', 0xa0, rid.as_bytes()[0]];
                    // The fill tells the viewer's side which layer a packet is from.
                    let fill = LAYER_MARK + i as u8;
                    let payload = vp8(k == 0, key, pids[i], size, frame / n, fill);
                    let p = rtp(ssrc, 96, seqs[i], ms as u32 * 90, &elems, &payload);
                    seqs[i] = seqs[i].wrapping_add(1);
                    feed(&mut relay, now, &p, &mut out);
                }
                pids[i] = (pids[i] + 1) & 0x7fff;
            }
        }
        if relay.poll_timeout().is_some_and(|t| t <= now) {
            relay.handle_timeout(now, &mut out);
        }
        while feedback.front().is_some_and(|(at, _)| *at <= now) {
            let (_, fb) = feedback.pop_front().expect("checked");
            relay.handle_viewer_rtcp(now, VIEWER, &fb, &mut out);
        }
        for p in out.to_publisher.drain(..) {
            for pkt in Compound::new(&p) {
                if let Ok(RtcpPacket::Pli(pli)) = pkt {
                    if let Some(i) = LAYERS.iter().position(|l| l.1 == pli.media_ssrc) {
                        key_due[i] = true;
                    }
                }
            }
        }
        for p in out.to_viewer.drain(..) {
            link.handle_packet(now, p);
        }
        while let Some(p) = link.poll_release(now) {
            window_bytes += p.len();
            let plain = &p[..p.len() - SRTP_TAG];
            let Ok(view) = RtpView::parse(plain) else {
                continue;
            };
            if let Some((_, &[a, b])) = view.extensions(plain).find(|(id, _)| *id == 5) {
                let arrival = now.duration_since(t0).as_micros() as i64;
                twcc.on_packet(u16::from_be_bytes([a, b]), arrival);
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
                estimate_kbps: relay.viewer_estimate(VIEWER).map_or(0, |e| e.0) as f64 / 1000.0,
                delivered_kbps: window_bytes as f64 * 8.0 / 0.5 / 1000.0,
                layer,
            });
            window_bytes = 0;
        }
    }
    samples
}

fn feed(relay: &mut Relay, now: Instant, p: &[u8], out: &mut Out) {
    let packet = bytes::Bytes::copy_from_slice(p);
    if let Ok(view) = RtpView::parse(&packet) {
        relay.handle_rtp(now, PUB, &packet, &view, out);
    }
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
