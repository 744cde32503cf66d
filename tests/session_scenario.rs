//! A worker's sessions on virtual time, with no sockets: in-memory peers do real ICE, DTLS and
//! SRTP against the shard, publish, watch, leave and come back, and the publisher leaves last.
//! Every random choice of the session layer comes from one seed: the same seed gives the same
//! call, to the byte of every header a viewer decrypts.

use std::time::{Duration, Instant};

use bytes::BytesMut;
use volna::core::rtp::{header_len, RtpView};
use volna::session::sdp::Offer;
use volna::session::{Role, Shard};

mod common;
use common::{attr, offer, shard_seeded, Client};

/// The shard, the virtual clock, and what happened, line by line.
struct World {
    shard: Shard,
    t0: Instant,
    now: Instant,
    trace: Vec<String>,
}

impl World {
    fn new(seed: u64) -> Self {
        let t0 = Instant::now();
        World {
            shard: shard_seeded(seed),
            t0,
            now: t0,
            trace: Vec::new(),
        }
    }

    /// Moves the clock on by `ms`, running every timer that falls due on the way.
    fn advance(&mut self, ms: u64) {
        let end = self.now + Duration::from_millis(ms);
        while let Some(t) = self.shard.poll_timeout().filter(|&t| t <= end) {
            self.now = self.now.max(t);
            self.shard.handle_timeout(self.now);
        }
        self.now = end;
    }

    fn note(&mut self, line: String) {
        let ms = self.now.duration_since(self.t0).as_millis();
        self.trace.push(format!("{ms:>6} ms  {line}"));
    }

    fn sessions(&self) -> usize {
        self.shard.stats().sessions
    }
}

/// A WHEP viewer, connected; returns it and its session's resource.
fn watch(w: &mut World, port: u16) -> (Client, String) {
    let mut c = Client::new(port);
    let o = offer(&c.identity.fingerprint, &c.ufrag, "recvonly", None);
    let created = w
        .shard
        .view(w.now, "room", None, &Offer::parse(&o).unwrap())
        .expect("WHEP view");
    c.handshake(&mut w.shard, w.now, &created.answer);
    let ufrag = attr(&created.answer, "a=ice-ufrag:").to_owned();
    w.note(format!(
        "viewer {port} connected: ufrag {ufrag}, resource {}",
        created.resource
    ));
    (c, created.resource)
}

/// One VP8 frame of the publisher (a key frame every tenth), SRTP-protected.
fn send_frame(w: &mut World, publisher: &mut Client, n: u16) {
    let key = n.is_multiple_of(10);
    let mut wire = vec![0x90, 96];
    wire.extend_from_slice(&n.to_be_bytes());
    wire.extend_from_slice(&(u32::from(n) * 1800).to_be_bytes());
    wire.extend_from_slice(&2222u32.to_be_bytes());
    wire.extend_from_slice(&[0xbe, 0xde, 0, 1, 0x40, b'0', 0, 0]);
    wire.extend_from_slice(&[0x10, if key { 0x00 } else { 0x01 }, 0x9d, 0x01, 0x2a]);
    wire.resize(500, n as u8);
    let keys = publisher.keys.as_mut().expect("publisher connected");
    keys.rtp_out.protect(&mut wire, 0, 20).unwrap();
    let from = publisher.addr;
    w.shard
        .handle_datagram(w.now, from, BytesMut::from(&wire[..]));
}

/// What reached `viewer` since the last call: each RTP packet decrypted, as (SSRC, sequence
/// number, timestamp, whether it starts a key frame).
fn received(w: &mut World, viewer: &mut Client) -> Vec<(u32, u16, u32, bool)> {
    let mut got = Vec::new();
    let early: Vec<_> = viewer.early.drain(..).map(|d| (viewer.addr, d)).collect();
    let now = std::iter::from_fn(|| w.shard.poll_transmit());
    for (to, d) in early.into_iter().chain(now) {
        if to != viewer.addr {
            continue;
        }
        let is_rtp = (128..192).contains(&d[0]) && !(192..=223).contains(&d[1]);
        if !is_rtp {
            continue;
        }
        let mut pkt = d.to_vec();
        let hl = header_len(&pkt).expect("an RTP header");
        let keys = viewer.keys.as_mut().expect("viewer connected");
        let n = keys
            .rtp_in
            .unprotect(&mut pkt, hl)
            .expect("SRTP from volna");
        let view = RtpView::parse(&pkt[..n]).unwrap();
        let payload = view.payload(&pkt[..n]);
        // VP8 payload descriptor (1 byte here), then the frame tag: bit 0 clear on a key frame.
        let key = payload.len() > 1 && payload[1] & 1 == 0;
        got.push((view.ssrc, view.sequence, view.timestamp, key));
    }
    got
}

/// The whole call under one seed; returns its trace.
fn call(seed: u64) -> Vec<String> {
    let mut w = World::new(seed);
    let mut publisher = Client::new(1000);
    let o = offer(
        &publisher.identity.fingerprint,
        &publisher.ufrag,
        "sendonly",
        Some(2222),
    );
    let created = w
        .shard
        .publish(w.now, "room", &Offer::parse(&o).unwrap())
        .expect("WHIP publish");
    publisher.handshake(&mut w.shard, w.now, &created.answer);
    let pub_resource = created.resource;
    w.note(format!(
        "publisher connected: ufrag {}, resource {pub_resource}, id {}",
        attr(&created.answer, "a=ice-ufrag:"),
        created.public_id
    ));
    let (mut viewer, resource) = watch(&mut w, 2000);
    let _ = received(&mut w, &mut viewer);

    // Two seconds of video: every packet reaches the viewer, in order, from the first key frame.
    let mut frames = 0u16;
    let mut first: Vec<(u32, u16, u32, bool)> = Vec::new();
    for _ in 0..100 {
        send_frame(&mut w, &mut publisher, frames);
        frames += 1;
        first.extend(received(&mut w, &mut viewer));
        w.advance(20);
    }
    assert!(
        first.len() >= 99,
        "the viewer got {} of 100 packets",
        first.len()
    );
    assert!(first[0].3, "the viewer starts on a key frame");
    for pair in first.windows(2) {
        assert_eq!(
            pair[1].1,
            pair[0].1.wrapping_add(1),
            "sequence numbers run on"
        );
        assert_eq!(pair[1].0, pair[0].0, "one SSRC");
    }
    w.note(format!(
        "viewer 2000 got {} packets, SSRC {:08x}, sequence numbers {}..={}",
        first.len(),
        first[0].0,
        first[0].1,
        first[first.len() - 1].1
    ));
    assert_eq!(w.sessions(), 2);

    // The viewer leaves: nothing more goes to it, the publisher stays.
    w.shard
        .delete(w.now, Role::Viewer, "room", &resource, &|_| true)
        .expect("the viewer's DELETE");
    w.advance(20);
    send_frame(&mut w, &mut publisher, frames);
    frames += 1;
    let after = received(&mut w, &mut viewer);
    assert!(
        after.is_empty(),
        "nothing reaches a viewer that left: {after:?}"
    );
    assert_eq!(w.sessions(), 1);
    w.note("viewer 2000 left".into());

    // It comes back (a new connection): it starts on a key frame (the cached one) and follows.
    let (mut back, resource) = watch(&mut w, 2001);
    let mut again = received(&mut w, &mut back);
    for _ in 0..30 {
        w.advance(20);
        send_frame(&mut w, &mut publisher, frames);
        frames += 1;
        again.extend(received(&mut w, &mut back));
    }
    assert!(
        !again.is_empty() && again[0].3,
        "the returning viewer starts on a key frame: {:?}",
        &again[..again.len().min(5)]
    );
    assert!(
        again.len() >= 30,
        "the returning viewer follows: {} packets",
        again.len()
    );
    w.note(format!(
        "viewer 2001 got {} packets, SSRC {:08x}, from sequence number {}",
        again.len(),
        again[0].0,
        again[0].1
    ));

    // The publisher leaves: its viewer's session ends with it.
    w.shard
        .delete(w.now, Role::Publisher, "room", &pub_resource, &|_| true)
        .expect("the publisher's DELETE");
    w.advance(1000);
    assert_eq!(w.sessions(), 0, "no session outlives its publisher");
    let stats = w.shard.stats();
    assert_eq!((stats.rooms, stats.participants), (0, 0));
    w.note(format!("publisher left; sessions {}", w.sessions()));
    // The other resource is gone with it.
    assert!(w
        .shard
        .delete(w.now, Role::Viewer, "room", &resource, &|_| true)
        .is_err());
    w.trace
}

#[test]
fn publish_view_leave_rejoin_on_virtual_time() {
    let trace = call(7);
    for line in &trace {
        println!("{line}");
    }
    let steps = [
        "publisher connected",
        "viewer 2000 connected",
        "viewer 2000 got",
        "viewer 2000 left",
        "viewer 2001 connected",
        "viewer 2001 got",
        "publisher left",
    ];
    assert_eq!(trace.len(), steps.len(), "{trace:#?}");
    for (line, step) in trace.iter().zip(steps) {
        assert!(line.contains(step), "{line} is not {step}");
    }
}

#[test]
fn the_same_seed_gives_the_same_call() {
    let (a, b) = (call(42), call(42));
    assert_eq!(a, b, "two runs under one seed");
    let c = call(43);
    assert_eq!(a.len(), c.len(), "the same story under another seed");
    assert_ne!(a, c, "another seed chooses other names and numbers");
}
