//! Simulcast across relay links in the relay core. The origin's copy of each layer for another
//! node (`ViewerTrackSpec::layer`) is a stream of its own, on while that node wants it and the
//! link's budget has room: audio first, the lowest layer next. A relayed publisher lets a layer
//! no viewer wants go after half a second (a browser's, after five).

use volna::core::room::{RelayConfig, RelayEvent, SessionId};
use volna::testkit::{remb, simulcast_track, vp8_payload, RtpBuilder, Sim, ViewerTrack};

mod common;
use common::call::*;

const Q: u32 = 0x51;
const F: u32 = 0x52;
const LINK: SessionId = 9;
const LINK_AUDIO: u32 = 0x900;
const LINK_Q: u32 = 0x901;
const LINK_F: u32 = 0x902;

/// `PUB` with Opus and a VP8 track of two layers ("q" on SSRC `Q`, "f" on `F`), bound by SSRC
/// as a QUIC or relayed publisher announces them.
fn simulcast_call(relayed: bool) -> Sim {
    let mut sim = Sim::new(RelayConfig::default());
    let mut tracks = publisher_tracks();
    tracks[1] = simulcast_track(&["q", "f"]);
    sim.publish(PUB, 77, tracks);
    sim.relay.bind_layers(PUB, 1, &[Q, F], relayed);
    sim
}

/// Runs the call from `from` to `to` ms: audio every 20 ms; every 33 ms a frame of "q" (one
/// 300-byte packet) and of "f" (four of 1000), a key frame every 300 ms. Returns the packets
/// sent to each of `ssrcs`, and the relay's layer events with their times.
fn run(sim: &mut Sim, from: u64, to: u64, ssrcs: &[u32]) -> (Vec<usize>, Vec<(u64, u8)>) {
    let mut counts = vec![0; ssrcs.len()];
    let mut events = Vec::new();
    for ms in from..to {
        sim.goto(ms);
        if ms % 20 == 0 {
            sim.feed(PUB, &audio_at(ms).build());
        }
        if ms % 33 == 0 {
            let frame = (ms / 33) as u16;
            for (ssrc, packets, len, size) in [(Q, 1, 300, (320, 180)), (F, 4, 1000, (640, 360))] {
                for k in 0..packets {
                    let key = k == 0 && ms % 300 < 33;
                    let payload = vp8_payload(k == 0, key, frame, size, len, 0xab);
                    let seq = frame.wrapping_mul(4).wrapping_add(k);
                    let p = RtpBuilder::new(ssrc, 96)
                        .seq(seq)
                        .ts(ms as u32 * 90)
                        .marker(k + 1 == packets)
                        .payload(&payload);
                    sim.feed(PUB, &p.build());
                }
            }
        }
        if ms % 10 == 0 {
            sim.timeout();
        }
        while let Some(ev) = sim.relay.poll_event() {
            if let RelayEvent::Layers { active, .. } = ev {
                events.push((ms, active));
            }
        }
        let (rtp, _) = sim.sink.take();
        for (_, packet) in rtp {
            let ssrc = u32::from_be_bytes([packet[8], packet[9], packet[10], packet[11]]);
            if let Some(i) = ssrcs.iter().position(|s| *s == ssrc) {
                counts[i] += 1;
            }
        }
    }
    (counts, events)
}

#[test]
fn a_link_gets_the_layers_wanted_within_its_budget_audio_first() {
    let mut sim = simulcast_call(false);
    sim.view(
        LINK,
        vec![
            ViewerTrack::new(PUB, 0, LINK_AUDIO, 111).build(),
            ViewerTrack::new(PUB, 1, LINK_Q, 96).layer(0).build(),
            ViewerTrack::new(PUB, 1, LINK_F, 96).layer(1).build(),
        ],
    );
    let ssrcs = [LINK_AUDIO, LINK_Q, LINK_F];
    let ids = |got: &[usize]| {
        ssrcs
            .iter()
            .zip(got)
            .map(|(s, n)| format!("{s:#x}: {n}"))
            .collect::<Vec<_>>()
    };
    // Both layers, each on its own stream, and the audio (2 s: 100 audio packets, about 60
    // frames of each layer).
    let (got, _) = run(&mut sim, 0, 2000, &ssrcs);
    assert!(got[0] >= 95, "audio: {:?}", ids(&got));
    assert!(
        (50..=61).contains(&got[1]),
        "one packet per frame of q: {:?}",
        ids(&got)
    );
    assert!(
        (200..=244).contains(&got[2]),
        "four per frame of f: {:?}",
        ids(&got)
    );

    // The other node no longer wants "f": it stops at once, the rest goes on.
    sim.relay.set_link_layers(LINK, |i| Some(i != 2));
    let (got, _) = run(&mut sim, 2000, 3000, &ssrcs);
    assert_eq!(got[2], 0, "f stopped: {:?}", ids(&got));
    assert!(
        got[0] >= 48 && got[1] >= 28,
        "audio and q go on: {:?}",
        ids(&got)
    );

    // Wanted again, on a link whose budget carries audio and "q" (about 100 kbps) but not "f"
    // (about 1 Mbps): "f" stays off.
    sim.relay.set_link_layers(LINK, |_| Some(true));
    sim.relay.set_link_budget(LINK, 300_000);
    let (got, _) = run(&mut sim, 3000, 4000, &ssrcs);
    assert_eq!(got[2], 0, "f does not fit: {:?}", ids(&got));
    assert!(
        got[0] >= 48 && got[1] >= 28,
        "audio and q fit: {:?}",
        ids(&got)
    );

    // Less than audio and "q" need: "q" goes too, audio stays.
    sim.relay.set_link_budget(LINK, 50_000);
    run(&mut sim, 4000, 4500, &ssrcs);
    let (got, _) = run(&mut sim, 4500, 5500, &ssrcs);
    assert_eq!((got[1], got[2]), (0, 0), "video paused: {:?}", ids(&got));
    assert!(got[0] >= 48, "audio never is: {:?}", ids(&got));

    // Room again: both layers come back (each from a key frame).
    sim.relay.set_link_budget(LINK, 10_000_000);
    run(&mut sim, 5500, 6000, &ssrcs);
    let (got, _) = run(&mut sim, 6000, 7000, &ssrcs);
    assert!(
        got[1] >= 28 && got[2] >= 110,
        "both layers back: {:?}",
        ids(&got)
    );
}

#[test]
fn a_relayed_publisher_lets_an_unwatched_layer_go_in_half_a_second() {
    for (relayed, after) in [(true, 500..=800), (false, 5000..=5300)] {
        let mut sim = simulcast_call(relayed);
        sim.view(V1, viewer_tracks(0x100));
        sim.view(V2, viewer_tracks(0x200));
        sim.viewer_rtcp(V1, &remb(0x100, 0x101, 5_000_000));
        sim.viewer_rtcp(V2, &remb(0x200, 0x201, 300_000));
        let (got, events) = run(&mut sim, 0, 3000, &[0x101, 0x201]);
        assert!(got[0] > 0 && got[1] > 0, "both viewers get video: {got:?}");
        assert!(events.is_empty(), "both layers wanted: {events:?}");
        // The viewer of "f" leaves: only "q" (bit 0) is wanted after the hold.
        sim.relay.remove_viewer(V1);
        let (_, events) = run(&mut sim, 3000, 9000, &[]);
        assert_eq!(events.len(), 1, "relayed {relayed}: {events:?}");
        let (at, active) = events[0];
        assert_eq!(active, 0b01, "relayed {relayed}: only q");
        assert!(
            after.contains(&(at - 3000)),
            "relayed {relayed}: let go {} ms after",
            at - 3000
        );
    }
}
