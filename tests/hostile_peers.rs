//! Peers that hold valid credentials and misuse them, in memory against a worker's shard with real
//! ICE, DTLS and SRTP: what they send may cost the relay little and must never make it send much.
//! - a viewer's NACK that names the same packets hundreds of times gets each cached packet back
//!   at most once, within its resend budget;
//! - a forged Binding request (wrong password) changes no session state.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use volna::session::protocol::ServerMessage;
use volna::session::sdp::Offer;
use volna::session::JoinRequest;
use volna::session::{Grants, Shard};

mod common;
use common::{attr, binding_request, offer, shard, Client};

struct Call {
    shard: Shard,
    t0: Instant,
    publisher: Client,
    viewer: Client,
}

fn call() -> Call {
    let t0 = Instant::now();
    let mut shard = shard();
    let mut publisher = Client::new(1000);
    publisher.publish_to(&mut shard, t0, "room");
    let mut viewer = Client::new(2000);
    viewer.view_from(&mut shard, t0, "room");
    while shard.poll_transmit().is_some() {}
    Call {
        shard,
        t0,
        publisher,
        viewer,
    }
}

/// A VP8 packet (a key frame every 30th), `size` bytes, its payload filled with `fill`.
fn publish(c: &mut Call, now: Instant, seq: u16, size: usize, fill: u8) {
    let mut wire = vec![0x90, 96];
    wire.extend_from_slice(&seq.to_be_bytes());
    wire.extend_from_slice(&(u32::from(seq / 4) * 3000).to_be_bytes());
    wire.extend_from_slice(&2222u32.to_be_bytes());
    wire.extend_from_slice(&[0xbe, 0xde, 0, 1, 0x40, b'0', 0, 0]);
    let key = seq.is_multiple_of(30);
    wire.extend_from_slice(&[0x10, if key { 0x00 } else { 0x01 }, 0x9d, 0x01, 0x2a]);
    wire.resize(size, fill);
    let keys = c.publisher.keys.as_mut().unwrap();
    keys.rtp_out.protect(&mut wire, 0, 20).unwrap();
    c.shard
        .handle_datagram(now, c.publisher.addr, BytesMut::from(&wire[..]));
}

/// SRTP packets sent to the viewer: (sequence number, the datagram). The header is clear text.
fn to_viewer(c: &mut Call) -> Vec<(u16, Bytes)> {
    let viewer = c.viewer.addr;
    std::iter::from_fn(|| c.shard.poll_transmit())
        .filter(|(to, d)| {
            *to == viewer && (128..192).contains(&d[0]) && !(192..=223).contains(&d[1])
        })
        .map(|(_, d)| (u16::from_be_bytes([d[2], d[3]]), d))
        .collect()
}

fn ssrc_of(d: &[u8]) -> u32 {
    u32::from_be_bytes([d[8], d[9], d[10], d[11]])
}

/// A generic NACK (RFC 4585 §6.2.1) with the given (packet id, bitmask) pairs, SRTCP-protected,
/// from the viewer.
fn nack(c: &mut Call, now: Instant, media_ssrc: u32, pairs: &[(u16, u16)]) {
    let words = 2 + pairs.len();
    let mut p = vec![0x81, 205];
    p.extend_from_slice(&(words as u16).to_be_bytes());
    p.extend_from_slice(&1u32.to_be_bytes());
    p.extend_from_slice(&media_ssrc.to_be_bytes());
    for (id, blp) in pairs {
        p.extend_from_slice(&id.to_be_bytes());
        p.extend_from_slice(&blp.to_be_bytes());
    }
    let keys = c.viewer.keys.as_mut().unwrap();
    let wire = keys.local.encrypt_rtcp(&p).unwrap();
    c.shard.handle_datagram(now, c.viewer.addr, wire);
}

#[test]
fn a_nack_naming_packets_hundreds_of_times_gets_each_back_at_most_once_within_budget() {
    let mut c = call();
    let t0 = c.t0;
    // One second of video: 100 packets of 1,200 bytes.
    let mut sent = Vec::new();
    for i in 0..100u16 {
        publish(
            &mut c,
            t0 + Duration::from_millis(10 * u64::from(i)),
            i,
            1200,
            7,
        );
        sent.extend(to_viewer(&mut c));
    }
    assert_eq!(sent.len(), 100, "every packet forwarded");
    let forwarded: usize = sent.iter().map(|(_, d)| d.len()).sum();
    let ssrc = ssrc_of(&sent[0].1);
    let last = sent.last().unwrap().0;
    // The audit's NACK: 1,172 bytes naming the 17 packets up to the last one 290 times over.
    let first = last.wrapping_sub(16);
    let now = t0 + Duration::from_millis(1000);
    nack(&mut c, now, ssrc, &[(first, 0xffff); 290]);
    let resent = to_viewer(&mut c);
    let bytes: usize = resent.iter().map(|(_, d)| d.len()).sum();
    println!(
        "a 1,172-byte NACK: {} packets, {bytes} bytes resent ({} refused by the budget); {forwarded} bytes forwarded",
        resent.len(),
        c.shard.stats().resends_refused
    );
    let mut seqs: Vec<u16> = resent.iter().map(|(s, _)| *s).collect();
    seqs.sort_unstable();
    seqs.dedup();
    assert_eq!(
        seqs.len(),
        resent.len(),
        "no packet resent twice for one NACK"
    );
    assert!(
        resent.len() <= 17,
        "at most the 17 distinct packets named: {}",
        resent.len()
    );
    assert!(!resent.is_empty(), "the lost packets do come back");
    assert!(
        bytes <= forwarded / 2 + 4_000,
        "resends within half the media forwarded plus the burst: {bytes} of {forwarded}"
    );

    // The same NACK again at once: nothing (each packet waits about a round trip).
    nack(
        &mut c,
        now + Duration::from_millis(10),
        ssrc,
        &[(first, 0xffff); 290],
    );
    assert!(
        to_viewer(&mut c).is_empty(),
        "no resend within the interval"
    );

    // The same NACK every 100 ms for the next second: the budget holds however it is asked.
    let mut total = bytes;
    for k in 1..=10u64 {
        let at = now + Duration::from_millis(100 * k);
        nack(&mut c, at, ssrc, &[(first, 0xffff); 290]);
        total += to_viewer(&mut c)
            .iter()
            .map(|(_, d)| d.len())
            .sum::<usize>();
    }
    assert!(
        total <= forwarded / 2 + 2 * 4_000,
        "over the second after, still within budget: {total} of {forwarded}"
    );
}

/// A participant's `join` of `room` with every grant.
fn join_request(room: &str) -> JoinRequest {
    JoinRequest {
        room: room.into(),
        identity: "alice".into(),
        verified: false,
        name: "Alice".into(),
        grants: Grants {
            publish: true,
            subscribe: true,
        },
        auto_subscribe: true,
        conn: 1,
        resume: None,
        only_resume: false,
    }
}

#[test]
fn a_forged_binding_request_changes_nothing() {
    let t0 = Instant::now();
    let mut shard = shard();
    // A WHIP publisher gives the room a track; a participant joins and gets an offer for it.
    Client::new(1000).publish_to(&mut shard, t0, "room");
    let (pid, _joined) = shard.join(t0, join_request("room")).expect("join");
    shard.joined_delivered(t0, pid);
    let sdp = std::iter::from_fn(|| shard.poll_message())
        .find_map(|(to, m)| match m {
            ServerMessage::Offer { sdp, .. } if to == pid => Some(sdp),
            _ => None,
        })
        .expect("an offer for the receiving connection");
    let (ufrag, pwd) = (attr(&sdp, "a=ice-ufrag:"), attr(&sdp, "a=ice-pwd:"));
    // Before the participant answers, someone who knows volna's ufrag (not its password) sends a
    // check under another remote ufrag: refused, and the subscriber does not learn that ufrag.
    let from: SocketAddr = "10.0.0.1:3000".parse().unwrap();
    let junk = shard.stats().junk_datagrams;
    let forged = binding_request(&format!("{ufrag}:attacker"), "not-the-password-at-all");
    shard.handle_datagram(t0, from, BytesMut::from(&forged[..]));
    assert_eq!(shard.stats().junk_datagrams, junk + 1);
    assert!(
        shard.poll_transmit().is_none(),
        "no answer to a forged check"
    );
    // The participant's own check (with its ufrag, which its answer will carry) still works.
    let real = binding_request(&format!("{ufrag}:client3000"), pwd);
    shard.handle_datagram(t0, from, BytesMut::from(&real[..]));
    let out: Vec<_> = std::iter::from_fn(|| shard.poll_transmit()).collect();
    assert!(
        out.iter().any(|(to, d)| *to == from && d[0] < 4),
        "the real check is answered: {out:?}"
    );
}

/// A quiet stream among busy ones (or junk): each of its packets lands in a receive batch of
/// others, and a cached packet holds its whole block. The cache lets packets go after a second
/// (swept on the relay's once-a-second report timer), so what the stream holds is about a
/// second of its own packets, one block each: here 512 packets at 10 a second, each with 31
/// junk datagrams, end up holding a few dozen blocks of 64 KiB, not one per packet ever cached.
#[test]
fn a_quiet_stream_among_junk_holds_a_block_per_young_packet_at_most() {
    use volna::core::cache::retransmit::MAX_AGE;
    use volna::core::cache::RetransmitCache;
    use volna::core::rtp::RtpView;
    use volna::transport::buffers::{RecvPool, BLOCK_BYTES, RECV_BATCH};
    let t0 = Instant::now();
    let mut pool = RecvPool::new();
    let mut cache = RetransmitCache::new(512);
    let mut most_held = 0;
    for i in 0..512u16 {
        let now = t0 + Duration::from_millis(100 * u64::from(i));
        let region = pool.prepare(RECV_BATCH);
        region[..12].copy_from_slice(&[0x80, 111, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
        region[2..4].copy_from_slice(&i.to_be_bytes());
        let pkt = pool.take(0, 200).freeze();
        for k in 1..RECV_BATCH {
            drop(pool.take(k, 100));
        }
        pool.finish();
        let view = RtpView::parse(&pkt).unwrap();
        cache.insert(now, &pkt, &view);
        drop(pkt);
        if i % 10 == 0 {
            cache.expire(now);
        }
        most_held = most_held.max(cache.len());
    }
    let per_second = (1000 / 100) * (MAX_AGE.as_millis() as usize / 1000);
    let bound = per_second * 2 + 2;
    println!(
        "a quiet stream under junk: at most {most_held} packets held, {} blocks of {} KiB allocated",
        pool.allocated_blocks(),
        BLOCK_BYTES / 1024
    );
    assert!(most_held <= bound, "{most_held} packets held");
    assert!(
        pool.allocated_blocks() as usize <= bound + 1,
        "{} blocks: one per held packet at most, plus the one in use",
        pool.allocated_blocks()
    );
}

/// Every way into a room honours every limit, with the same codes: WHIP, WHEP, QUIC and the room
/// protocol each count against the room's members and the node's rooms, and WHIP against the
/// tracks per participant (the audit got 100 WHIP tracks, 21 publishers in a room of 2, and 5 QUIC
/// rooms on a node of 1).
#[test]
fn every_entry_point_honours_every_limit() {
    use volna::session::quic::QuicTrack;
    use volna::session::{Limits, SessionError};
    let t0 = Instant::now();
    let mut s = common::shard_with(Limits {
        max_rooms: 1,
        max_participants_per_room: 2,
        max_tracks_per_participant: 1,
        ..Limits::default()
    });
    let publish = |s: &mut Shard, room: &str, sdp: &str| {
        s.publish(t0, room, &Offer::parse(sdp).unwrap()).map(|_| ())
    };
    let fp = Client::new(1).identity.fingerprint.clone();
    let one = offer(&fp, "ufrag1", "sendonly", Some(1));
    // Two m-lines: over the track limit.
    let second = one
        .split_once("m=video")
        .map(|(_, m)| format!("m=video{}", m.replace("a=mid:0", "a=mid:1")))
        .unwrap();
    let two = format!(
        "{}{second}",
        one.replace("a=group:BUNDLE 0", "a=group:BUNDLE 0 1")
    );
    let limit = |r: Result<(), SessionError>| match r {
        Err(e) if e.code == 429 => e.message,
        other => panic!("expected a limit, got {other:?}"),
    };
    assert!(limit(publish(&mut s, "a", &two)).contains("tracks"));
    publish(&mut s, "a", &one).expect("the first publisher");
    let watch = offer(&fp, "ufrag2", "recvonly", None);
    s.view(t0, "a", None, &Offer::parse(&watch).unwrap())
        .expect("a viewer: the second member");
    // The room has its two members: a third, whichever way it comes, is refused.
    assert!(limit(publish(&mut s, "a", &one)).contains("maximum of 2 participants"));
    assert!(limit(
        s.view(t0, "a", None, &Offer::parse(&watch).unwrap())
            .map(|_| ())
    )
    .contains("maximum of 2 participants"));
    let track: QuicTrack = serde_json::from_str(
        r#"{"kind":"audio","codec":"opus","payload_type":111,"clock_rate":48000,"ssrc":5}"#,
    )
    .unwrap();
    let refused = s
        .quic_publish(t0, "a", 1, std::slice::from_ref(&track), None)
        .unwrap_err();
    assert_eq!((refused.code, refused.reason), (429, "room_full"));
    let refused = s.quic_subscribe(t0, "a", None, 2, false).unwrap_err();
    assert_eq!((refused.code, refused.reason), (429, "room_full"));
    let join = join_request;
    let refused = s.join(t0, join("a")).unwrap_err();
    assert_eq!((refused.code, refused.reason), (429, "room_full"));
    // The node has its one room: another room is refused the same way everywhere.
    assert!(limit(publish(&mut s, "b", &one)).contains("maximum of 1 rooms"));
    let refused = s
        .quic_publish(t0, "b", 3, std::slice::from_ref(&track), None)
        .unwrap_err();
    assert_eq!((refused.code, refused.reason), (429, "too_many_rooms"));
    let refused = s.join(t0, join("b")).unwrap_err();
    assert_eq!((refused.code, refused.reason), (429, "too_many_rooms"));
}
