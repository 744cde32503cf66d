//! What the tests, benches, fuzz targets and load generator build the relay core's inputs and
//! read its outputs with, so that each has one definition: sinks ([`Recorder`] keeps every packet
//! for a test to read, [`CountingSink`] copies and counts without allocating), an RTP packet
//! builder ([`RtpBuilder`], with [`vp8_payload`]), the RTCP messages viewers send, track specs as
//! browsers negotiate them ([`opus_track`], [`vp8_track`], [`simulcast_track`], [`ViewerTrack`])
//! and a driver on virtual time ([`Sim`]). Sans-IO like the core: no sockets, and no clock but
//! the `Instant`s a caller moves on.

use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::core::room::{
    Feedback, MediaKind, Relay, RelayConfig, Rtx, SessionId, Sink, TrackRef, TrackSpec,
    ViewerTrackSpec,
};
use crate::core::rtcp::{Compound, Pli, RtcpPacket};
use crate::core::rtp::{Codec, ExtKind, ExtMap, RtpView};

/// Packets sent, each with the session it went to.
pub type Sent = Vec<(SessionId, Vec<u8>)>;

/// Keeps every packet the relay sends: RTP as one buffer (header, then the payload's rewritten
/// prefix, then the shared payload), RTCP as written.
#[derive(Debug, Default)]
pub struct Recorder {
    pub rtp: Sent,
    pub rtcp: Sent,
}

impl Sink for Recorder {
    fn rtp(&mut self, to: SessionId, header: &[u8], prefix: &[u8], payload: &[u8]) {
        let mut p = Vec::with_capacity(header.len() + prefix.len() + payload.len());
        p.extend_from_slice(header);
        p.extend_from_slice(prefix);
        p.extend_from_slice(payload);
        self.rtp.push((to, p));
    }
    fn rtcp(&mut self, to: SessionId, packet: &[u8]) {
        self.rtcp.push((to, packet.to_vec()));
    }
}

impl Recorder {
    /// What was sent since the last call: (RTP, RTCP).
    pub fn take(&mut self) -> (Sent, Sent) {
        (
            std::mem::take(&mut self.rtp),
            std::mem::take(&mut self.rtcp),
        )
    }
}

/// The packets in `sent` that went to `to`.
pub fn sent_to(sent: &[(SessionId, Vec<u8>)], to: SessionId) -> impl Iterator<Item = &[u8]> {
    sent.iter()
        .filter(move |(s, _)| *s == to)
        .map(|(_, p)| p.as_slice())
}

/// The RTP packets in `sent` that went to `to`, parsed.
pub fn views_to(
    sent: &[(SessionId, Vec<u8>)],
    to: SessionId,
) -> impl Iterator<Item = (RtpView, &[u8])> {
    sent_to(sent, to).map(|p| {
        (
            RtpView::parse(p).expect("the relay sends RTP that parses"),
            p,
        )
    })
}

/// Every RTCP message in `sent` that went to `to`, as its `Debug` text (easy to compare whole or
/// by its start, such as `"Pli"`).
pub fn rtcp_debug(sent: &[(SessionId, Vec<u8>)], to: SessionId) -> Vec<String> {
    sent_to(sent, to)
        .flat_map(|p| {
            Compound::new(p)
                .map(|r| format!("{:?}", r.expect("relay writes valid RTCP")))
                .collect::<Vec<_>>()
        })
        .collect()
}

/// Every PLI in `sent`, with the session it went to.
pub fn plis_in(sent: &[(SessionId, Vec<u8>)]) -> impl Iterator<Item = (SessionId, Pli)> + '_ {
    sent.iter().flat_map(|(to, p)| {
        Compound::new(p).filter_map(move |c| match c {
            Ok(RtcpPacket::Pli(pli)) => Some((*to, pli)),
            _ => None,
        })
    })
}

/// The transport-wide sequence number of an RTP packet, under extension id 5 (where the callers
/// of this kit negotiate it).
pub fn transport_seq(packet: &[u8]) -> Option<u16> {
    let view = RtpView::parse(packet).expect("an RTP packet");
    let (_, data) = view.extensions(packet).find(|(id, _)| *id == 5)?;
    Some(u16::from_be_bytes(data.try_into().ok()?))
}

/// Copies each RTP packet (and RTCP message) into one buffer reserved up front, as a worker's
/// send buffer takes it, and counts them. Allocates nothing after [`CountingSink::new`], so what
/// the zero-allocation test and the benches measure is the relay's work.
#[derive(Debug)]
pub struct CountingSink {
    buf: Vec<u8>,
    pub rtp: u64,
    pub rtcp: u64,
    /// RTP bytes copied.
    pub bytes: u64,
}

impl CountingSink {
    pub fn new() -> Self {
        Self {
            buf: Vec::with_capacity(2048),
            rtp: 0,
            rtcp: 0,
            bytes: 0,
        }
    }
}

impl Default for CountingSink {
    fn default() -> Self {
        Self::new()
    }
}

impl Sink for CountingSink {
    fn rtp(&mut self, _to: SessionId, header: &[u8], prefix: &[u8], payload: &[u8]) {
        self.buf.clear();
        self.buf.extend_from_slice(header);
        self.buf.extend_from_slice(prefix);
        self.buf.extend_from_slice(payload);
        self.rtp += 1;
        self.bytes += self.buf.len() as u64;
    }
    fn rtcp(&mut self, _to: SessionId, packet: &[u8]) {
        self.buf.clear();
        self.buf.extend_from_slice(packet);
        self.rtcp += 1;
    }
}

/// An RTP packet (RFC 3550) with one-byte header extensions (RFC 8285), field by field; what is
/// not set is zero.
#[derive(Debug, Clone)]
pub struct RtpBuilder {
    ssrc: u32,
    payload_type: u8,
    seq: u16,
    ts: u32,
    marker: bool,
    /// The extension elements, back to back, unpadded.
    ext: Vec<u8>,
    payload: Vec<u8>,
    /// The whole packet's length and the byte that fills it up to there.
    pad: Option<(usize, u8)>,
}

impl RtpBuilder {
    pub fn new(ssrc: u32, payload_type: u8) -> Self {
        Self {
            ssrc,
            payload_type,
            seq: 0,
            ts: 0,
            marker: false,
            ext: Vec::new(),
            payload: Vec::new(),
            pad: None,
        }
    }

    pub fn seq(mut self, seq: u16) -> Self {
        self.seq = seq;
        self
    }

    pub fn ts(mut self, ts: u32) -> Self {
        self.ts = ts;
        self
    }

    pub fn marker(mut self, marker: bool) -> Self {
        self.marker = marker;
        self
    }

    /// One more one-byte extension element: `id` 1 to 14, 1 to 16 bytes of data.
    pub fn ext(mut self, id: u8, data: &[u8]) -> Self {
        assert!((1..=14).contains(&id), "one-byte extension id {id}");
        assert!((1..=16).contains(&data.len()), "one-byte extension length");
        self.ext.push((id << 4) | (data.len() as u8 - 1));
        self.ext.extend_from_slice(data);
        self
    }

    pub fn payload(mut self, payload: &[u8]) -> Self {
        self.payload = payload.to_vec();
        self
    }

    /// Fills the packet with `fill` after the payload until it is `len` bytes long (a longer
    /// packet stays as it is): media of a given size without spelling it out.
    pub fn pad_to(mut self, len: usize, fill: u8) -> Self {
        self.pad = Some((len, fill));
        self
    }

    pub fn build(&self) -> Bytes {
        Bytes::from(self.to_vec())
    }

    pub fn to_vec(&self) -> Vec<u8> {
        let mut p = Vec::new();
        let x = if self.ext.is_empty() { 0 } else { 0x10 };
        p.extend_from_slice(&[0x80 | x, (u8::from(self.marker) << 7) | self.payload_type]);
        p.extend_from_slice(&self.seq.to_be_bytes());
        p.extend_from_slice(&self.ts.to_be_bytes());
        p.extend_from_slice(&self.ssrc.to_be_bytes());
        if !self.ext.is_empty() {
            let words = self.ext.len().div_ceil(4);
            p.extend_from_slice(&[0xbe, 0xde]);
            p.extend_from_slice(&(words as u16).to_be_bytes());
            p.extend_from_slice(&self.ext);
            p.resize(p.len() + words * 4 - self.ext.len(), 0);
        }
        p.extend_from_slice(&self.payload);
        if let Some((len, fill)) = self.pad {
            p.resize(len.max(p.len()), fill);
        }
        p
    }
}

/// A VP8 payload (RFC 7741): the descriptor with a 15-bit picture id, then, on the first packet of
/// a key frame, the frame tag, start code and `size` (width, height); filled with `fill` up to
/// `len` bytes.
pub fn vp8_payload(
    first: bool,
    key: bool,
    picture_id: u16,
    size: (u16, u16),
    len: usize,
    fill: u8,
) -> Vec<u8> {
    let id = (picture_id | 0x8000).to_be_bytes();
    let s = if first { 0x10 } else { 0 };
    let mut p = vec![0x80 | s, 0x80, id[0], id[1], u8::from(!key)];
    if first && key {
        p.extend_from_slice(&[0, 0, 0x9d, 0x01, 0x2a]);
        p.extend_from_slice(&size.0.to_le_bytes());
        p.extend_from_slice(&size.1.to_le_bytes());
    }
    p.resize(len.max(p.len()), fill);
    p
}

/// A viewer's REMB (draft-alvestrand-rmcat-remb): `bps` for `media_ssrc`.
pub fn remb(sender_ssrc: u32, media_ssrc: u32, bps: u64) -> Vec<u8> {
    let mut b = [0u8; 64];
    let n = crate::core::rtcp::Remb {
        sender_ssrc,
        bitrate_bps: bps,
        ssrc: media_ssrc,
    }
    .write(&mut b)
    .expect("fits");
    b[..n].to_vec()
}

/// A viewer's NACK (RFC 4585) for one packet.
pub fn nack(sender_ssrc: u32, media_ssrc: u32, seq: u16) -> Vec<u8> {
    let mut b = [0u8; 64];
    let n =
        crate::core::rtcp::nack::write_list(sender_ssrc, media_ssrc, &[seq], &mut b).expect("fits");
    b[..n].to_vec()
}

/// The feedback browsers negotiate for video: NACK, PLI, FIR and REMB.
pub const VIDEO_FEEDBACK: Feedback = Feedback {
    nack: true,
    pli: true,
    fir: true,
    remb: true,
};

/// A publisher's Opus (m-line "0", payload type 111) from `ssrc`, with the audio level under
/// extension id 1 and the MID under 4, as browsers number them.
pub fn opus_track(ssrc: u32) -> TrackSpec {
    TrackSpec {
        kind: MediaKind::Audio,
        mid: "0".into(),
        codec: Codec::Opus,
        payload_type: 111,
        clock_rate: 48_000,
        ssrc: Some(ssrc),
        ext: ExtMap::from_pairs(&[(1, ExtKind::AudioLevel), (4, ExtKind::Mid)]),
        feedback: Feedback::default(),
        rids: Vec::new(),
    }
}

/// A publisher's VP8 (m-line "1", payload type 96) with the MID under extension id 4 and
/// [`VIDEO_FEEDBACK`]; `ssrc` as the offer names it (`None`: learned from the first packet).
pub fn vp8_track(ssrc: Option<u32>) -> TrackSpec {
    TrackSpec {
        kind: MediaKind::Video,
        mid: "1".into(),
        codec: Codec::Vp8,
        payload_type: 96,
        clock_rate: 90_000,
        ssrc,
        ext: ExtMap::from_pairs(&[(4, ExtKind::Mid)]),
        feedback: VIDEO_FEEDBACK,
        rids: Vec::new(),
    }
}

/// [`vp8_track`] sent as simulcast layers named by `rids`, told apart by the RID extension
/// (id 10), their SSRCs learned from the packets.
pub fn simulcast_track(rids: &[&str]) -> TrackSpec {
    TrackSpec {
        ext: ExtMap::from_pairs(&[(4, ExtKind::Mid), (10, ExtKind::RtpStreamId)]),
        rids: rids.iter().map(|r| (*r).to_owned()).collect(),
        ..vp8_track(None)
    }
}

/// A viewer's copy of one publisher track, field by field: m-line named after the track's
/// index, no extensions, numbering from 0, no RTX or RED unless set.
#[derive(Debug, Clone)]
pub struct ViewerTrack(ViewerTrackSpec);

impl ViewerTrack {
    pub fn new(publisher: SessionId, track: usize, ssrc: u32, payload_type: u8) -> Self {
        Self(ViewerTrackSpec {
            source: TrackRef { publisher, track },
            mid: track.to_string(),
            ssrc,
            payload_type,
            ext: ExtMap::default(),
            initial_seq: 0,
            initial_ts: 0,
            rtx: None,
            red: None,
            layer: None,
        })
    }

    pub fn mid(mut self, mid: &str) -> Self {
        self.0.mid = mid.into();
        self
    }

    pub fn ext(mut self, pairs: &[(u8, ExtKind)]) -> Self {
        self.0.ext = ExtMap::from_pairs(pairs);
        self
    }

    /// The first sequence number and timestamp the viewer sees.
    pub fn start(mut self, seq: u16, ts: u32) -> Self {
        (self.0.initial_seq, self.0.initial_ts) = (seq, ts);
        self
    }

    pub fn rtx(mut self, rtx: impl Into<Option<Rtx>>) -> Self {
        self.0.rtx = rtx.into();
        self
    }

    /// The RED payload type, when the viewer negotiated audio/red.
    pub fn red(mut self, payload_type: impl Into<Option<u8>>) -> Self {
        self.0.red = payload_type.into();
        self
    }

    /// A relay link's copy of simulcast layer `slot` (see [`ViewerTrackSpec::layer`]).
    pub fn layer(mut self, slot: u8) -> Self {
        self.0.layer = Some(slot);
        self
    }

    pub fn build(self) -> ViewerTrackSpec {
        self.0
    }
}

/// A relay, the sink it sends into and the time, moved on by the caller: a test or a simulation
/// runs whole calls in a fraction of their length and the same way every time.
pub struct Sim<S = Recorder> {
    pub relay: Relay,
    pub sink: S,
    /// Where the simulation's milliseconds ([`Sim::at`]) count from.
    pub t0: Instant,
    pub now: Instant,
    /// The room every session joins.
    pub room: &'static str,
}

/// How often a worker's timer can fire: [`Sim::advance`] serves the relay's timeouts at
/// this resolution.
const TICK: Duration = Duration::from_millis(1);

impl Sim<Recorder> {
    pub fn new(config: RelayConfig) -> Self {
        Self::with_sink(config, Recorder::default())
    }
}

impl<S: Sink> Sim<S> {
    pub fn with_sink(config: RelayConfig, sink: S) -> Self {
        let t0 = Instant::now();
        Self {
            relay: Relay::new(config),
            sink,
            t0,
            now: t0,
            room: "room",
        }
    }

    /// The instant `ms` milliseconds into the simulation.
    pub fn at(&self, ms: u64) -> Instant {
        self.t0 + Duration::from_millis(ms)
    }

    /// Moves the time to `ms` milliseconds into the simulation without serving any timeout.
    pub fn goto(&mut self, ms: u64) {
        self.now = self.at(ms);
    }

    /// A publisher of `tracks`, which the relay's RTCP to it comes from as `ssrc`.
    pub fn publish(&mut self, id: SessionId, ssrc: u32, tracks: Vec<TrackSpec>) {
        self.relay
            .add_publisher(id, self.room, ssrc, tracks)
            .expect("a new publisher");
    }

    /// A viewer of `tracks`, added now, as WHEP adds one.
    pub fn view(&mut self, id: SessionId, tracks: Vec<ViewerTrackSpec>) {
        self.relay.add_viewer(id, self.room).expect("a new viewer");
        for t in tracks {
            self.relay
                .add_viewer_track(self.now, id, t, &mut self.sink)
                .expect("the publisher track exists");
        }
    }

    /// An RTP packet from session `from`, now.
    pub fn feed(&mut self, from: SessionId, packet: &Bytes) {
        let view = RtpView::parse(packet).expect("a packet that parses");
        self.relay
            .handle_rtp(self.now, from, packet, &view, &mut self.sink);
    }

    /// RTCP from viewer `from`, now.
    pub fn viewer_rtcp(&mut self, from: SessionId, packet: &[u8]) {
        self.relay
            .handle_viewer_rtcp(self.now, from, packet, &mut self.sink);
    }

    /// The relay's periodic work now, due or not (a fixed timer cadence).
    pub fn timeout(&mut self) {
        self.relay.handle_timeout(self.now, &mut self.sink);
    }

    /// The relay's periodic work now, if any is due; whether there was.
    pub fn run_due(&mut self) -> bool {
        let due = self.relay.poll_timeout().is_some_and(|t| t <= self.now);
        if due {
            self.timeout();
        }
        due
    }

    /// Moves the time on by `d`, a millisecond at a time, serving what is due at each step
    /// (from now, not at the end): what the worker's loop does while no packet comes.
    pub fn advance(&mut self, d: Duration) {
        let end = self.now + d;
        while self.now < end {
            self.run_due();
            self.now = (self.now + TICK).min(end);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builder_writes_each_field_where_rfc_3550_puts_it() {
        let header = |b0: u8, b1: u8| vec![b0, b1, 0x12, 0x34, 0, 0, 0x03, 0xe8, 0, 0, 0, 7];
        let base = || RtpBuilder::new(7, 96).seq(0x1234).ts(1000);
        // (case, packet, expected bytes)
        let cases: Vec<(&str, RtpBuilder, Vec<u8>)> = vec![
            ("bare", base(), header(0x80, 96)),
            ("marker", base().marker(true), header(0x80, 0x80 | 96)),
            (
                "payload",
                base().payload(&[1, 2, 3]),
                [header(0x80, 96), vec![1, 2, 3]].concat(),
            ),
            (
                "one element, padded to a word",
                base().ext(4, b"1"),
                [header(0x90, 96), vec![0xbe, 0xde, 0, 1, 0x40, b'1', 0, 0]].concat(),
            ),
            (
                "elements back to back, then the payload",
                base()
                    .ext(1, &[0x85])
                    .ext(4, b"0")
                    .ext(5, &[0, 9])
                    .payload(&[0xfc]),
                [
                    header(0x90, 96),
                    vec![
                        0xbe, 0xde, 0, 2, 0x10, 0x85, 0x40, b'0', 0x51, 0, 9, 0, 0xfc,
                    ],
                ]
                .concat(),
            ),
            (
                "sixteen bytes of one element",
                base().ext(12, &[0xaa; 16]),
                [
                    header(0x90, 96),
                    vec![0xbe, 0xde, 0, 5, 0xcf],
                    vec![0xaa; 16],
                    vec![0; 3],
                ]
                .concat(),
            ),
            (
                "padded to a length",
                base().payload(&[1]).pad_to(16, 0xab),
                [header(0x80, 96), vec![1, 0xab, 0xab, 0xab]].concat(),
            ),
            (
                "never cut by a shorter length",
                base().payload(&[1, 2]).pad_to(4, 0xab),
                [header(0x80, 96), vec![1, 2]].concat(),
            ),
        ];
        for (case, builder, expected) in cases {
            let p = builder.build();
            assert_eq!(p.as_ref(), &expected[..], "{case}");
            let v = RtpView::parse(&p).expect(case);
            assert_eq!(
                (v.ssrc, v.sequence, v.timestamp),
                (7, 0x1234, 1000),
                "{case}"
            );
        }
    }

    #[test]
    fn extensions_read_back_by_id() {
        let p = RtpBuilder::new(1, 111)
            .ext(4, b"0")
            .ext(5, &[0x12, 0x34])
            .build();
        let v = RtpView::parse(&p).unwrap();
        let ext: Vec<(u8, &[u8])> = v.extensions(&p).collect();
        assert_eq!(ext, vec![(4, &b"0"[..]), (5, &[0x12, 0x34][..])]);
        assert_eq!(transport_seq(&p), Some(0x1234));
        assert_eq!(transport_seq(&RtpBuilder::new(1, 111).build()), None);
    }

    #[test]
    fn advance_serves_what_falls_due_on_the_way() {
        let mut sim = Sim::new(RelayConfig::default());
        sim.publish(1, 9, vec![vp8_track(Some(2))]);
        let pli_count = |sim: &mut Sim| plis_in(&sim.sink.take().1).count();
        sim.view(2, vec![ViewerTrack::new(1, 0, 20, 96).build()]);
        assert_eq!(
            pli_count(&mut sim),
            1,
            "the first viewer's key frame is asked for at once"
        );
        // A second viewer within the keyframe-request interval (500 ms): its request waits.
        sim.goto(100);
        sim.view(3, vec![ViewerTrack::new(1, 0, 30, 96).build()]);
        assert_eq!(pli_count(&mut sim), 0);
        sim.advance(Duration::from_millis(399));
        assert_eq!((pli_count(&mut sim), sim.now), (0, sim.at(499)));
        sim.advance(Duration::from_millis(2));
        assert_eq!((pli_count(&mut sim), sim.now), (1, sim.at(501)));
    }
}
