//! A NAT rebinding, in memory against a worker's shard with real ICE, DTLS and SRTP: a peer whose
//! datagrams start coming from a new port of its IP gets a consent check there, and its media
//! moves only when the peer answers that check with its own credentials. Until then nothing but
//! the check goes to the new address and nothing from it is accepted; forged, misdirected and
//! late answers move nothing; checks and moves are rate-limited.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use volna::session::Shard;
use volna::transport::webrtc::ice::BindingRequest;

mod common;
use common::{attr, binding_request, shard, Client, CLIENT_PWD};

struct Call {
    shard: Shard,
    t0: Instant,
    publisher: Client,
    viewer: Client,
    /// volna's answer to the viewer (its ufrag and password).
    viewer_answer: String,
    seq: u16,
}

fn at(t0: Instant, ms: u64) -> Instant {
    t0 + Duration::from_millis(ms)
}

fn client(ip: [u8; 4], port: u16) -> Client {
    let mut c = Client::new(port);
    c.addr = SocketAddr::from((ip, port));
    c
}

fn call() -> Call {
    let t0 = Instant::now();
    let mut shard = shard();
    let mut publisher = client([10, 0, 0, 1], 1000);
    publisher.publish_to(&mut shard, t0, "room");
    let mut viewer = client([10, 0, 0, 2], 2000);
    let viewer_answer = viewer.view_from(&mut shard, t0, "room");
    drain(&mut shard);
    Call {
        shard,
        t0,
        publisher,
        viewer,
        viewer_answer,
        seq: 0,
    }
}

fn drain(shard: &mut Shard) -> Vec<(SocketAddr, Bytes)> {
    std::iter::from_fn(|| shard.poll_transmit()).collect()
}

fn is_stun(d: &[u8]) -> bool {
    d[0] < 4
}

fn is_rtp(d: &[u8]) -> bool {
    (128..192).contains(&d[0]) && !(192..=223).contains(&d[1])
}

/// One VP8 packet from the publisher (a key frame when `key`), SRTP-protected, from its address.
fn publish(c: &mut Call, now: Instant, key: bool) {
    c.seq += 1;
    let mut wire = vec![0x90, 96];
    wire.extend_from_slice(&c.seq.to_be_bytes());
    wire.extend_from_slice(&(u32::from(c.seq) * 3000).to_be_bytes());
    wire.extend_from_slice(&2222u32.to_be_bytes());
    wire.extend_from_slice(&[0xbe, 0xde, 0, 1, 0x40, b'0', 0, 0]);
    wire.extend_from_slice(&[0x10, if key { 0x00 } else { 0x01 }, 0x9d, 0x01, 0x2a]);
    wire.resize(600, 7);
    let keys = c.publisher.keys.as_mut().unwrap();
    keys.rtp_out.protect(&mut wire, 0, 20).unwrap();
    c.shard
        .handle_datagram(now, c.publisher.addr, BytesMut::from(&wire[..]));
}

/// A receiver report from the viewer, SRTCP-protected, from `from`.
fn report(c: &mut Call, now: Instant, from: SocketAddr) {
    let rr = [0x80, 201, 0, 1, 0, 0, 0, 1];
    let keys = c.viewer.keys.as_mut().unwrap();
    let wire = keys.local.encrypt_rtcp(&rr).unwrap();
    c.shard.handle_datagram(now, from, wire);
}

/// An answer to a consent check as the peer would build it, signed with `pwd`.
fn response(check: &[u8], pwd: &str, from: SocketAddr) -> Vec<u8> {
    use rtc_stun::fingerprint::FINGERPRINT;
    use rtc_stun::integrity::MessageIntegrity;
    use rtc_stun::message::{Message, Setter, BINDING_SUCCESS};
    use rtc_stun::xoraddr::XorMappedAddress;
    let provider = rtc_crypto::default_provider().unwrap();
    let mut req = Message::new();
    req.unmarshal_binary(check).expect("a STUN message");
    let mut m = Message::new();
    m.write_header();
    let mapped = XorMappedAddress {
        ip: from.ip(),
        port: from.port(),
    };
    let integrity =
        MessageIntegrity::new_short_term_integrity_with_provider(pwd.to_owned(), provider.crypto());
    let setters: [&dyn Setter; 5] = [
        &BINDING_SUCCESS,
        &req.transaction_id,
        &mapped,
        &integrity,
        &FINGERPRINT,
    ];
    for s in setters {
        s.add_to(&mut m).unwrap();
    }
    m.raw
}

/// The viewer's answer to a consent check, signed with `pwd`, sent from `from`.
fn answer(c: &mut Call, now: Instant, check: &[u8], pwd: &str, from: SocketAddr) {
    let resp = response(check, pwd, from);
    c.shard
        .handle_datagram(now, from, BytesMut::from(&resp[..]));
}

/// Where the publisher's media goes now: the addresses that got RTP for one packet.
fn media_goes_to(c: &mut Call, now: Instant) -> Vec<SocketAddr> {
    publish(c, now, false);
    let mut to: Vec<SocketAddr> = drain(&mut c.shard)
        .into_iter()
        .filter(|(_, d)| is_rtp(d))
        .map(|(a, _)| a)
        .collect();
    to.dedup();
    to
}

/// The viewer's datagrams now come from `to`: one report from there must bring exactly one
/// consent check, and nothing else, to that address. Returns the check.
fn rebind(c: &mut Call, now: Instant, to: SocketAddr) -> Bytes {
    let junk = c.shard.stats().junk_datagrams;
    report(c, now, to);
    assert_eq!(
        c.shard.stats().junk_datagrams,
        junk + 1,
        "the report from {to} is dropped"
    );
    let out = drain(&mut c.shard);
    let there: Vec<&Bytes> = out
        .iter()
        .filter(|(a, _)| *a == to)
        .map(|(_, d)| d)
        .collect();
    assert_eq!(there.len(), 1, "one datagram to {to}: {out:?}");
    assert!(is_stun(there[0]), "and it is a STUN check, not media");
    there[0].clone()
}

#[test]
fn a_rebound_viewer_is_checked_before_its_media_moves() {
    let mut c = call();
    let t0 = c.t0;
    let old = c.viewer.addr;
    publish(&mut c, at(t0, 10), true);
    drain(&mut c.shard);
    assert_eq!(media_goes_to(&mut c, at(t0, 20)), [old]);

    // The NAT gives the viewer a new port: its next report comes from there.
    let new = SocketAddr::from(([10, 0, 0, 2], 2999));
    let check = rebind(&mut c, at(t0, 3_000), new);
    let seen = BindingRequest::parse(&check).unwrap();
    assert_eq!(
        seen.local_ufrag, c.viewer.ufrag,
        "the check names the viewer's ufrag first"
    );
    assert_eq!(seen.remote_ufrag, attr(&c.viewer_answer, "a=ice-ufrag:"));
    assert!(!seen.use_candidate);
    let checks = c.shard.stats().consent_checks;
    assert_eq!(checks, 1);
    // Until the viewer answers, media goes where it went.
    assert_eq!(media_goes_to(&mut c, at(t0, 3_010)), [old]);

    // Answers that must not move it: signed with another password (volna's own, say), from
    // another port, or after the check timed out.
    let volna_pwd = attr(&c.viewer_answer, "a=ice-pwd:").to_owned();
    answer(&mut c, at(t0, 3_020), &check, &volna_pwd, new);
    answer(
        &mut c,
        at(t0, 3_030),
        &check,
        CLIENT_PWD,
        SocketAddr::from(([10, 0, 0, 2], 3000)),
    );
    assert_eq!(media_goes_to(&mut c, at(t0, 3_040)), [old]);
    assert_eq!(c.shard.stats().path_switches, 0);

    // The real answer moves the media, and asks the publisher for a key frame.
    let keyframes = c.shard.stats().keyframe_requests;
    answer(&mut c, at(t0, 3_050), &check, CLIENT_PWD, new);
    let moved = drain(&mut c.shard);
    assert_eq!(c.shard.stats().path_switches, 1);
    assert!(
        c.shard.stats().keyframe_requests > keyframes,
        "a key frame is asked for: {moved:?}"
    );
    assert_eq!(media_goes_to(&mut c, at(t0, 3_060)), [new]);
    // The same answer again (a replay) changes nothing.
    answer(&mut c, at(t0, 3_070), &check, CLIENT_PWD, new);
    assert_eq!(c.shard.stats().path_switches, 1);

    // A check that is never answered: media stays; a late answer does nothing.
    let later = SocketAddr::from(([10, 0, 0, 2], 3001));
    let unanswered = rebind(&mut c, at(t0, 4_000), later);
    answer(&mut c, at(t0, 6_100), &unanswered, CLIENT_PWD, later);
    assert_eq!(media_goes_to(&mut c, at(t0, 6_110)), [new]);
}

#[test]
fn strangers_get_nothing_and_checks_are_spaced() {
    let mut c = call();
    let t0 = c.t0;
    publish(&mut c, at(t0, 10), true);
    drain(&mut c.shard);
    // SRTCP (even a valid one, replayed) from an IP where no session's peer is: dropped, and
    // nothing is sent there.
    let stranger = SocketAddr::from(([10, 0, 0, 9], 4000));
    report(&mut c, at(t0, 100), stranger);
    let out = drain(&mut c.shard);
    assert!(
        out.iter().all(|(a, _)| *a != stranger),
        "nothing to a stranger: {out:?}"
    );
    assert_eq!(c.shard.stats().consent_checks, 0);

    // A burst from a new port brings one check per interval, not one per datagram.
    let new = SocketAddr::from(([10, 0, 0, 2], 2999));
    rebind(&mut c, at(t0, 1_000), new);
    for ms in [1_010, 1_100, 1_400] {
        report(&mut c, at(t0, ms), new);
    }
    assert!(drain(&mut c.shard).iter().all(|(a, _)| *a != new));
    assert_eq!(c.shard.stats().consent_checks, 1);
    rebind(&mut c, at(t0, 1_600), new);
    assert_eq!(c.shard.stats().consent_checks, 2);
}

#[test]
fn a_rebound_publisher_is_heard_again_only_after_its_check() {
    let mut c = call();
    let t0 = c.t0;
    publish(&mut c, at(t0, 10), true);
    drain(&mut c.shard);
    let new = SocketAddr::from(([10, 0, 0, 1], 1999));
    c.publisher.addr = new;
    // Its media from the new port is not forwarded; a check goes there.
    publish(&mut c, at(t0, 1_000), false);
    let out = drain(&mut c.shard);
    assert!(
        !out.iter().any(|(_, d)| is_rtp(d)),
        "nothing forwarded: {out:?}"
    );
    let checks: Vec<&Bytes> = out
        .iter()
        .filter(|(a, _)| *a == new)
        .map(|(_, d)| d)
        .collect();
    assert_eq!(checks.len(), 1);
    let resp = response(checks[0], CLIENT_PWD, new);
    c.shard
        .handle_datagram(at(t0, 1_010), new, BytesMut::from(&resp[..]));
    assert_eq!(c.shard.stats().path_switches, 1);
    assert_eq!(media_goes_to(&mut c, at(t0, 1_020)), [c.viewer.addr]);
}

#[test]
fn moves_are_limited() {
    let mut c = call();
    let t0 = c.t0;
    publish(&mut c, at(t0, 10), true);
    drain(&mut c.shard);
    let ufrag = attr(&c.viewer_answer, "a=ice-ufrag:").to_owned();
    let pwd = attr(&c.viewer_answer, "a=ice-pwd:").to_owned();
    let user = format!("{ufrag}:{}", c.viewer.ufrag);
    // Nominating checks from ever new ports, 100 ms apart: four moves, then no more.
    let mut last = c.viewer.addr;
    for i in 0..6u16 {
        let from = SocketAddr::from(([10, 0, 0, 2], 5000 + i));
        let now = at(t0, 1_000 + 100 * u64::from(i));
        let req = binding_request(&user, &pwd);
        c.shard.handle_datagram(now, from, BytesMut::from(&req[..]));
        let out = drain(&mut c.shard);
        assert!(
            out.iter().any(|(a, d)| *a == from && is_stun(d)),
            "check {i} is answered"
        );
        if i < 4 {
            last = from;
        }
        assert_eq!(media_goes_to(&mut c, now), [last], "after check {i}");
    }
    let s = c.shard.stats();
    assert_eq!((s.path_switches, s.path_switches_refused), (4, 2));
    // No consent checks either while moves are spent.
    report(
        &mut c,
        at(t0, 2_000),
        SocketAddr::from(([10, 0, 0, 2], 6000)),
    );
    assert_eq!(c.shard.stats().consent_checks, 0);
    // Ten seconds after the first move, the session may move again.
    let from = SocketAddr::from(([10, 0, 0, 2], 7000));
    let req = binding_request(&user, &pwd);
    c.shard
        .handle_datagram(at(t0, 11_000), from, BytesMut::from(&req[..]));
    drain(&mut c.shard);
    assert_eq!(media_goes_to(&mut c, at(t0, 11_010)), [from]);
}
