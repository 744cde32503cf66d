//! The stateful target for a worker's sessions: a shard fed the room protocol's requests from
//! four clients (join, resume, publish, answer, subscribe, pin, mute, restart ICE, offer failed,
//! leave, socket lost), WHIP and WHEP sessions created and deleted, and time passing, in any
//! order the input says.
//!
//! Oracles: every message the shard sends serializes and goes to a participant that joined; every
//! SDP it writes (publish answers, subscriber offers, WHIP/WHEP answers) parses; every subscriber
//! offer keeps a BUNDLE group that holds exactly its live m-lines, tagged by a live one (RFC 8843
//! §7), with unique mids, and names tracks only on live lines; and when everyone has left or been
//! deleted, a minute later nothing is left: no session, participant or room.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use crate::session::events::RoomEvent;
use crate::session::protocol::ServerMessage;
use crate::session::sdp::Offer;
use crate::session::{Grants, JoinRequest, ParticipantId, Role, Shard};

/// Clients of the room protocol the input speaks for.
const CLIENTS: usize = 4;
/// Track ids remembered from the shard's messages, for `subscribe`, `pin` and `mute`.
const TRACKS: usize = 16;

#[derive(Default)]
struct Client {
    pid: Option<ParticipantId>,
    /// The last `joined`'s resume secret (kept after leaving, to try it again).
    resume: Option<String>,
    /// The last offer sent to it, to answer.
    offer: Option<String>,
    conn: u64,
}

/// An offer a client might publish with: one to three m-lines whose kinds, directions and
/// simulcast come from `b`; or `b` itself as text.
fn publish_offer(b: &[u8]) -> String {
    let byte = |i: usize| b.get(i).copied().unwrap_or(0);
    if byte(0) == 0xff {
        return String::from_utf8_lossy(&b[1..]).into_owned();
    }
    let lines = 1 + usize::from(byte(0) % 3);
    let mids: Vec<String> = (0..lines).map(|i| i.to_string()).collect();
    let mut s = format!(
        "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\na=group:BUNDLE {}\r\n",
        mids.join(" ")
    );
    for (i, mid) in mids.iter().enumerate() {
        let flags = byte(1 + i);
        let direction = ["sendonly", "sendrecv", "recvonly", "inactive"][usize::from(flags & 3)];
        let port = if flags & 0x40 != 0 && i > 0 { 0 } else { 9 };
        let common = format!(
            "c=IN IP4 0.0.0.0\r\na=ice-ufrag:fuzz\r\na=ice-pwd:0123456789012345678901\r\n\
             a=fingerprint:sha-256 AA:BB:CC\r\na=setup:actpass\r\na=mid:{mid}\r\n\
             a=extmap:4 urn:ietf:params:rtp-hdrext:sdes:mid\r\na={direction}\r\na=rtcp-mux\r\n"
        );
        if flags & 4 == 0 {
            s.push_str(&format!(
                "m=audio {port} UDP/TLS/RTP/SAVPF 111\r\n{common}a=rtpmap:111 opus/48000/2\r\n"
            ));
        } else {
            s.push_str(&format!(
                "m=video {port} UDP/TLS/RTP/SAVPF 96 97\r\n{common}a=rtpmap:96 VP8/90000\r\n\
                 a=rtcp-fb:96 nack pli\r\na=rtpmap:97 rtx/90000\r\na=fmtp:97 apt=96\r\n"
            ));
            if flags & 8 != 0 {
                s.push_str(
                    "a=extmap:10 urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id\r\n\
                     a=rid:h send\r\na=rid:l send\r\na=simulcast:send h;l\r\n",
                );
            }
            if flags & 0x10 != 0 {
                s.push_str("a=content:slides\r\n");
            }
        }
    }
    s
}

/// A viewer's WHEP offer: receive audio and video.
fn view_offer() -> String {
    let mut s =
        String::from("v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\na=group:BUNDLE 0 1\r\n");
    for (mid, m) in [
        "m=audio 9 UDP/TLS/RTP/SAVPF 111",
        "m=video 9 UDP/TLS/RTP/SAVPF 96",
    ]
    .iter()
    .enumerate()
    {
        s.push_str(&format!(
            "{m}\r\nc=IN IP4 0.0.0.0\r\na=ice-ufrag:view\r\na=ice-pwd:0123456789012345678901\r\n\
             a=fingerprint:sha-256 AA:BB:CC\r\na=setup:actpass\r\na=mid:{mid}\r\na=recvonly\r\n\
             a=rtcp-mux\r\na=rtpmap:111 opus/48000/2\r\na=rtpmap:96 VP8/90000\r\n"
        ));
    }
    s
}

/// The answer a browser would give to the shard's subscriber offer: the same lines, receiving.
fn answer_to(offer: &str) -> String {
    offer
        .replace("a=setup:actpass", "a=setup:active")
        .replace("a=sendonly", "a=recvonly")
        .replace("a=sendrecv", "a=recvonly")
}

/// RFC 8843 §7 for an offer the shard wrote: a BUNDLE group of exactly the live m-lines, its tag
/// (first mid) live, mids unique; the track map names live lines only.
fn check_subscriber_offer(sdp: &str, tracks: &std::collections::BTreeMap<String, String>) {
    let offer =
        Offer::parse(sdp).unwrap_or_else(|e| panic!("the shard's offer parses: {e}\n{sdp}"));
    let mids: Vec<&str> = offer.media.iter().map(|m| m.mid.as_str()).collect();
    let unique: BTreeSet<&str> = mids.iter().copied().collect();
    assert_eq!(unique.len(), mids.len(), "unique mids: {sdp}");
    let live: BTreeSet<&str> = offer
        .media
        .iter()
        .filter(|m| m.active())
        .map(|m| m.mid.as_str())
        .collect();
    let group: Vec<&str> = sdp
        .lines()
        .find_map(|l| l.strip_prefix("a=group:BUNDLE "))
        .unwrap_or_else(|| panic!("a BUNDLE group: {sdp}"))
        .split_whitespace()
        .collect();
    let tag = group.first().unwrap_or_else(|| panic!("a tag: {sdp}"));
    let tagged = offer.media.iter().find(|m| m.mid == *tag);
    assert!(
        tagged.is_some_and(|m| m.port != 0),
        "the tagged m-line is live and not bundle-only: {sdp}"
    );
    assert_eq!(
        group.iter().copied().collect::<BTreeSet<&str>>(),
        live,
        "the group holds exactly the live m-lines: {sdp}"
    );
    for mid in tracks.keys() {
        assert!(
            live.contains(mid.as_str()),
            "track on a live line ({mid}): {sdp}"
        );
    }
}

pub fn sessions(data: &[u8]) {
    run(data);
}

/// What a run got done (for the harness's own test: the seeds reach the shard's real work).
#[derive(Debug, Default)]
struct Done {
    joins: usize,
    publishes: usize,
    offers: usize,
    answers: usize,
}

fn run(data: &[u8]) -> Done {
    let mut done = Done::default();
    let seed = data
        .iter()
        .take(8)
        .fold(0u64, |a, &b| a << 8 | u64::from(b));
    let mut shard = Shard::with_seed(super::shard_config(), super::identity(), seed);
    let mut now = Instant::now();
    let mut clients: Vec<Client> = (0..CLIENTS).map(|_| Client::default()).collect();
    let mut joined_ever: BTreeSet<ParticipantId> = BTreeSet::new();
    let mut live_rooms: BTreeSet<String> = BTreeSet::new();
    let mut tracks: Vec<String> = Vec::new();
    // WHIP and WHEP resources: (role, room, resource).
    let mut resources: Vec<(Role, String, String)> = Vec::new();
    let mut next_conn = 1u64;

    for (op, len, body) in super::ops(data) {
        let c = usize::from(op >> 4) % CLIENTS;
        let room = if op & 0x80 != 0 { "b" } else { "a" };
        let pick = |i: usize| body.get(i).copied().map(usize::from).unwrap_or(0);
        let some_tracks = |k: usize| -> Vec<String> {
            body.iter()
                .take(k)
                .filter_map(|&b| tracks.get(usize::from(b) % tracks.len().max(1)).cloned())
                .collect()
        };
        match op & 0x0f {
            0 => {
                // A client joins on a new socket; one it had before closes (without `leave`).
                if let Some(pid) = clients[c].pid.take() {
                    shard.participant_disconnected(now, pid, clients[c].conn);
                }
                let conn = next_conn;
                next_conn += 1;
                let resume = clients[c].resume.clone().filter(|_| pick(0) & 1 == 1);
                let req = JoinRequest {
                    room: room.to_owned(),
                    identity: format!("user{c}"),
                    verified: pick(0) & 2 == 2,
                    name: format!("client {c}"),
                    grants: Grants {
                        publish: pick(0) & 4 == 0,
                        subscribe: pick(0) & 8 == 0,
                    },
                    auto_subscribe: pick(0) & 16 == 0,
                    conn,
                    resume,
                    only_resume: pick(1) & 1 == 1,
                };
                if let Ok((pid, msg)) = shard.join(now, req) {
                    done.joins += 1;
                    if let ServerMessage::Joined { resume, .. } = &msg {
                        clients[c].resume = Some(resume.clone());
                    }
                    serde_json::to_string(&msg).expect("joined serializes");
                    joined_ever.insert(pid);
                    clients[c].pid = Some(pid);
                    clients[c].conn = conn;
                    if pick(1) & 1 == 0 {
                        shard.joined_delivered(now, pid);
                    }
                }
            }
            1 => {
                if let (Some(pid), Ok(offer)) = (clients[c].pid, Offer::parse(&publish_offer(body)))
                {
                    if let Ok(answer) = shard.participant_publish(now, pid, &offer) {
                        Offer::parse(&answer).expect("a publish answer parses");
                        done.publishes += 1;
                    }
                }
            }
            2 => {
                if let (Some(pid), Some(offer)) = (clients[c].pid, clients[c].offer.take()) {
                    let answer = if pick(0) == 0xff {
                        String::from_utf8_lossy(&body[1..]).into_owned()
                    } else {
                        answer_to(&offer)
                    };
                    if shard.participant_answer(now, pid, &answer).is_ok() {
                        done.answers += 1;
                    }
                }
            }
            3 => {
                if let Some(pid) = clients[c].pid {
                    let _ =
                        shard.participant_subscribe(now, pid, &some_tracks(4), pick(0) & 1 == 0);
                }
            }
            4 => {
                if let Some(pid) = clients[c].pid {
                    let _ = shard.participant_pin(pid, &some_tracks(3));
                }
            }
            5 => {
                if let (Some(pid), Some(track)) = (clients[c].pid, some_tracks(1).pop()) {
                    let _ = shard.participant_mute(pid, &track, pick(1) & 1 == 0);
                }
            }
            6 => {
                if let Some(pid) = clients[c].pid {
                    let offer = Offer::parse(&publish_offer(&body[1.min(body.len())..]))
                        .ok()
                        .filter(|_| pick(0) & 1 == 1);
                    if let Ok(Some(answer)) = shard.participant_restart_ice(pid, offer.as_ref()) {
                        Offer::parse(&answer).expect("a restart answer parses");
                    }
                }
            }
            7 => {
                if let Some(pid) = clients[c].pid {
                    let _ = shard.participant_offer_failed(now, pid, "fuzz");
                }
            }
            8 => {
                if let Some(pid) = clients[c].pid.take() {
                    shard.leave(now, pid);
                }
            }
            9 => {
                // The socket is lost: the participant may come back with `resume`.
                if let Some(pid) = clients[c].pid.take() {
                    shard.participant_disconnected(now, pid, clients[c].conn);
                }
            }
            10 => {
                // Time passes, each timer served when due (a timer that keeps falling due at
                // once would loop: bounded, and a failure).
                let end = now + Duration::from_millis(u64::from(len) * 50);
                let mut served = 0;
                while let Some(t) = shard.poll_timeout().filter(|&t| t <= end) {
                    now = now.max(t);
                    shard.handle_timeout(now);
                    served += 1;
                    assert!(served < 100_000, "timers make progress");
                }
                now = end;
                shard.handle_timeout(now);
            }
            11 => {
                if let Ok(offer) = Offer::parse(&publish_offer(body)) {
                    if let Ok(created) = shard.publish(now, room, &offer) {
                        Offer::parse(&created.answer).expect("a WHIP answer parses");
                        resources.push((Role::Publisher, room.to_owned(), created.resource));
                    }
                }
            }
            12 => {
                let offer = Offer::parse(&view_offer()).expect("the viewer's offer parses");
                if let Ok(created) = shard.view(now, room, None, &offer) {
                    Offer::parse(&created.answer).expect("a WHEP answer parses");
                    resources.push((Role::Viewer, room.to_owned(), created.resource));
                }
            }
            13 if !resources.is_empty() => {
                let (role, room, resource) = resources.remove(pick(0) % resources.len());
                let _ = shard.delete(now, role, &room, &resource, &|_| true);
            }
            _ => {}
        }
        while let Some(e) = shard.poll_room_event() {
            serde_json::to_string(&e).expect("every room event serializes");
            // A room starts once until it finishes, and finishes only after it started.
            match e {
                RoomEvent::RoomStarted { room } => {
                    assert!(live_rooms.insert(room), "a started room starts again")
                }
                RoomEvent::RoomFinished { room } => {
                    assert!(
                        live_rooms.remove(&room),
                        "a room finishes that never started"
                    )
                }
                _ => {}
            }
        }
        while let Some((pid, msg)) = shard.poll_message() {
            assert!(
                joined_ever.contains(&pid),
                "a message for a participant that joined"
            );
            serde_json::to_string(&msg).expect("every message serializes");
            let client = clients.iter_mut().find(|c| c.pid == Some(pid));
            match msg {
                ServerMessage::Offer { sdp, tracks: map } => {
                    check_subscriber_offer(&sdp, &map);
                    done.offers += 1;
                    for t in map.into_values() {
                        if tracks.len() < TRACKS && !tracks.contains(&t) {
                            tracks.push(t);
                        }
                    }
                    if let Some(client) = client {
                        client.offer = Some(sdp);
                    }
                }
                ServerMessage::TrackPublished { track, .. }
                    if tracks.len() < TRACKS && !tracks.contains(&track.id) =>
                {
                    tracks.push(track.id);
                }
                _ => {}
            }
        }
    }
    // Everyone goes: a minute later nothing is left.
    for c in &mut clients {
        if let Some(pid) = c.pid.take() {
            shard.leave(now, pid);
        }
    }
    for (role, room, resource) in resources {
        let _ = shard.delete(now, role, &room, &resource, &|_| true);
    }
    for _ in 0..60 {
        now += Duration::from_secs(1);
        shard.handle_timeout(now);
    }
    while shard.poll_message().is_some() {}
    let stats = shard.stats();
    assert_eq!(
        (stats.sessions, stats.participants, stats.rooms),
        (0, 0, 0),
        "nothing left once everyone has gone"
    );
    done
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The saved seeds drive the shard through real work: joins, publishes, subscriber offers
    /// (each checked) and answers it accepts.
    #[test]
    fn the_seeds_reach_offers_and_answers() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/fuzz/corpus/sessions");
        // (seed, at least: joins, publishes, offers, answers)
        let cases = [
            ("first_leaves", (3, 3, 6, 6)),
            ("two_then_one_then_two", (3, 3, 4, 4)),
            ("churn_mix", (3, 2, 2, 2)),
        ];
        for (name, (joins, publishes, offers, answers)) in cases {
            let data = std::fs::read(format!("{dir}/{name}")).expect("the seed");
            let d = run(&data);
            assert!(
                d.joins >= joins
                    && d.publishes >= publishes
                    && d.offers >= offers
                    && d.answers >= answers,
                "{name}: {d:?}"
            );
        }
    }
}
