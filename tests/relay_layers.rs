//! Simulcast across a relay link, two shards standing for two nodes, the link's datagrams
//! carried by hand: a QUIC publisher announces two layers by SSRC; the origin's subscriber
//! session for the other node sends each as a stream of its own (`subscribed` lists them); the
//! other node's relayed publisher takes both in and its viewer gets the top one; the origin
//! stops a layer the other node no longer wants; and with no viewer left there, the other node
//! wants only the lowest layer.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use volna::core::room::SessionId;
use volna::core::rtp::is_rtcp;
use volna::session::connection::Origin;
use volna::session::quic::QuicTrack;
use volna::session::Shard;
use volna::testkit::{vp8_payload, RtpBuilder};
use volna::transport::quic::roq::{datagram, split_datagram};

mod common;

const ROOM: &str = "span";

/// Node A (the origin) with its publisher and the subscriber session serving node B; node B with
/// the relayed publisher and a viewer.
struct Link {
    a: Shard,
    b: Shard,
    t0: Instant,
    publisher: SessionId,
    serving: SessionId,
    relayed: SessionId,
    viewer: Option<SessionId>,
}

fn ssrc_of(rtp: &[u8]) -> u32 {
    u32::from_be_bytes([rtp[8], rtp[9], rtp[10], rtp[11]])
}

impl Link {
    /// Runs both nodes from `from` to `to` ms: the publisher sends audio every 20 ms and a frame
    /// of each layer every 33 ms (a key frame every 300 ms); datagrams cross the link both ways.
    /// Returns the RTP packets per SSRC that crossed the link and that node B's viewer got.
    fn run(&mut self, from: u64, to: u64) -> (HashMap<u32, usize>, HashMap<u32, usize>) {
        let (mut link, mut viewer) = (HashMap::new(), HashMap::new());
        for ms in from..to {
            let now = self.t0 + Duration::from_millis(ms);
            let mut packets = Vec::new();
            if ms % 20 == 0 {
                let p = RtpBuilder::new(1, 111)
                    .seq((ms / 20) as u16)
                    .ts(ms as u32 * 48);
                packets.push(p.payload(&[0xfc; 60]).build());
            }
            if ms % 33 == 0 {
                let frame = (ms / 33) as u16;
                for (ssrc, len, width) in [(2u32, 300usize, 320u16), (3, 1000, 640)] {
                    let key = ms % 300 < 33;
                    let payload = vp8_payload(true, key, frame, (width, width / 2), len, 0xab);
                    let p = RtpBuilder::new(ssrc, 96).seq(frame).ts(ms as u32 * 90);
                    packets.push(p.marker(true).payload(&payload).build());
                }
            }
            for p in packets {
                let d = datagram(0, &[&p]);
                self.a.quic_datagram(now, self.publisher, &d.into());
            }
            if ms % 10 == 0 {
                self.a.handle_timeout(now);
                self.b.handle_timeout(now);
            }
            while let Some((from, d)) = self.a.poll_quic_transmit() {
                let (_, packet) = split_datagram(&d).unwrap();
                if from == self.serving {
                    if !is_rtcp(packet) {
                        *link.entry(ssrc_of(packet)).or_default() += 1;
                    }
                    self.b.quic_datagram(now, self.relayed, &d);
                }
            }
            while let Some((from, d)) = self.b.poll_quic_transmit() {
                let (_, packet) = split_datagram(&d).unwrap();
                if from == self.relayed {
                    // The relayed publisher's feedback goes back to the origin.
                    self.a.quic_datagram(now, self.serving, &d);
                } else if Some(from) == self.viewer && !is_rtcp(packet) {
                    *viewer.entry(ssrc_of(packet)).or_default() += 1;
                }
            }
        }
        (link, viewer)
    }
}

#[test]
fn each_layer_crosses_once_and_only_while_wanted() {
    let t0 = Instant::now();
    let (mut a, mut b) = (common::shard(), common::shard_seeded(7));
    let tracks: Vec<QuicTrack> = serde_json::from_str(
        r#"[{"kind":"audio","codec":"opus","payload_type":111,"clock_rate":48000,"ssrc":1},
            {"kind":"video","codec":"VP8","payload_type":96,"clock_rate":90000,"ssrc":2,
             "layers":[{"rid":"q","ssrc":2},{"rid":"f","ssrc":3}]}]"#,
    )
    .unwrap();
    let (publisher, public) = a.quic_publish(t0, ROOM, 0, &tracks, None).unwrap();
    // Node B subscribes for its room: each layer is a stream of its own.
    let (serving, _, offered) = a.quic_subscribe(t0, ROOM, Some(&public), 2, true).unwrap();
    assert!(offered[0].layers.is_empty(), "{offered:?}");
    let rids: Vec<&str> = offered[1].layers.iter().map(|l| l.rid.as_str()).collect();
    assert_eq!(rids, ["q", "f"]);
    let (q, f) = (offered[1].layers[0].ssrc, offered[1].layers[1].ssrc);
    assert!(q != f && offered[1].ssrc == q, "{offered:?}");
    let origin = Origin {
        node: "a".into(),
        id: public.clone(),
        identity: "quic".into(),
        name: "QUIC publisher".into(),
    };
    let (relayed, _) = b.quic_publish(t0, ROOM, 2, &offered, Some(origin)).unwrap();
    let (viewer, _, _) = b.quic_subscribe(t0, ROOM, Some(&public), 4, false).unwrap();
    let mut link = Link {
        a,
        b,
        t0,
        publisher,
        serving,
        relayed,
        viewer: Some(viewer),
    };

    // Both layers cross, once each; B's viewer (no estimate: the best) gets the top one.
    let (crossed, got) = link.run(0, 2000);
    assert!(crossed[&q] >= 50 && crossed[&f] >= 50, "{crossed:?}");
    assert_eq!(crossed.len(), 3, "audio and two layers: {crossed:?}");
    assert!(
        got.values().sum::<usize>() >= 140,
        "B's viewer gets audio and video: {got:?}"
    );

    // B wants only "q": "f" stops crossing at once, the rest goes on (a later list that leaves
    // the video track out changes nothing).
    link.a.set_link_layers(serving, &[vec![], vec![0]]);
    link.a.set_link_layers(serving, &[vec![]]);
    let (crossed, _) = link.run(2000, 3000);
    assert_eq!(crossed.get(&f), None, "{crossed:?}");
    assert!(crossed[&q] >= 28, "{crossed:?}");
    // Both again.
    link.a.set_link_layers(serving, &[vec![], vec![0, 1]]);
    let (crossed, _) = link.run(3000, 4000);
    assert!(crossed.get(&f).is_some_and(|n| *n >= 20), "{crossed:?}");

    // B wants only the lowest layer within a second of its viewer leaving.
    let wanted = |link: &Link| {
        let views = link.b.link_views(&[relayed]);
        views.first().map(|v| v.wanted.clone())
    };
    link.b
        .quic_closed(t0 + Duration::from_millis(4000), &[viewer]);
    link.viewer = None;
    link.run(4000, 5000);
    let w = wanted(&link).expect("the relayed publisher still runs");
    assert_eq!(
        w,
        [vec![], vec![0]],
        "the audio has no layers, the video only q"
    );
    // The origin's view: audio and the layers it sends, and what they take.
    let view = link.a.link_views(&[serving]).remove(0);
    assert_eq!(view.streams, 3, "audio, q and f still on until told");
    // Audio about 30 kbps, q about 80, f about 260 (measured by the origin).
    assert!((250_000..500_000).contains(&view.want_bps), "{view:?}");
    link.a.set_link_layers(serving, &w);
    assert_eq!(link.a.link_views(&[serving])[0].streams, 2);
}
