//! The call the relay-core tests share: one publisher (`PUB`) of Opus and VP8, the track specs
//! its viewers negotiate, and its packets.

use volna::core::room::{RelayConfig, Rtx, SessionId, TrackSpec, ViewerTrackSpec};
use volna::core::rtcp::{Pli, RtcpPacket};
use volna::core::rtp::ExtKind;
use volna::testkit::{opus_track, vp8_track, RtpBuilder, Sim, ViewerTrack};

pub const PUB: SessionId = 1;
pub const V1: SessionId = 2;
pub const V2: SessionId = 3;
pub const V3: SessionId = 4;
pub const AUDIO_SSRC: u32 = 0xa0d1;
pub const VIDEO_SSRC: u32 = 0x7e0;

/// The start of a VP8 key frame, and a delta frame.
pub const KEY: &[u8] = &[0x10, 0x00, 0x9d, 0x01, 0x2a];
pub const DELTA: &[u8] = &[0x10, 0x01, 0x00];

pub fn publisher_tracks() -> Vec<TrackSpec> {
    vec![opus_track(AUDIO_SSRC), vp8_track(Some(VIDEO_SSRC))]
}

/// A viewer's video (SSRC `base_ssrc + 1`) and audio (`base_ssrc + 2`), with payload types,
/// extension ids and numbering of its own.
pub fn viewer_tracks(base_ssrc: u32) -> Vec<ViewerTrackSpec> {
    vec![
        ViewerTrack::new(PUB, 1, base_ssrc + 1, 98)
            .mid("0")
            .ext(&[(2, ExtKind::Mid)])
            .start(100, 5000)
            .build(),
        ViewerTrack::new(PUB, 0, base_ssrc + 2, 109)
            .mid("1")
            .ext(&[(2, ExtKind::Mid), (3, ExtKind::AudioLevel)])
            .start(7, 0)
            .build(),
    ]
}

/// The viewer tracks with transport-wide sequence numbers (id 5), and an RTX stream (payload type
/// 99, SSRC 0x1a1a) on the video track when `rtx`.
pub fn transport_cc_tracks(base_ssrc: u32, rtx: bool) -> Vec<ViewerTrackSpec> {
    let mut tracks = viewer_tracks(base_ssrc);
    for t in &mut tracks {
        t.ext.insert(5, ExtKind::TransportWideCc);
    }
    if rtx {
        tracks[0].rtx = Some(Rtx {
            payload_type: 99,
            ssrc: 0x1a1a,
        });
    }
    tracks
}

/// The call with one viewer (`V1`, SSRCs from 1000) joined and what its joining sent taken; the
/// relay's RTCP to the publisher comes from `rtcp_ssrc`.
pub fn call_with_one_viewer(rtcp_ssrc: u32) -> Sim {
    let mut sim = Sim::new(RelayConfig::default());
    sim.publish(PUB, rtcp_ssrc, publisher_tracks());
    sim.view(V1, viewer_tracks(1000));
    sim.sink.take();
    sim
}

/// What the publisher gets when the relay asks it for a video key frame (from RTCP SSRC 0x5e1f),
/// as `rtcp_debug` shows it.
pub fn key_frame_request() -> Vec<String> {
    let pli = Pli {
        sender_ssrc: 0x5e1f,
        media_ssrc: VIDEO_SSRC,
    };
    vec![format!("{:?}", RtcpPacket::Pli(pli))]
}

/// A packet of the publisher's audio.
pub fn audio_rtp(seq: u16, ts: u32) -> RtpBuilder {
    RtpBuilder::new(AUDIO_SSRC, 111).seq(seq).ts(ts)
}

/// The publisher's audio at 50 packets a second: the packet of millisecond `ms` (a multiple of
/// 20), 60 bytes of Opus.
pub fn audio_at(ms: u64) -> RtpBuilder {
    audio_rtp((ms / 20) as u16, ms as u32 * 48).payload(&[0xfc; 60])
}

/// A packet of the publisher's video.
pub fn video_rtp(seq: u16, ts: u32) -> RtpBuilder {
    RtpBuilder::new(VIDEO_SSRC, 96).seq(seq).ts(ts)
}
