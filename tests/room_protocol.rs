//! The room protocol over a real WebSocket against an in-process relay: the message flow between
//! participants, auth failures with their codes, limits, and malformed input (which must get an
//! error reply and leave the connection and the room working).

use std::net::SocketAddr;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::MaybeTlsStream;
use volna::config::Config;
use volna::signal::auth::{unix_now, Auth, Claims};

mod common;
use common::ws::*;

const KEY: &str = "room-protocol-test-key-0123";

async fn start(keys: &[&str], tweak: impl FnOnce(&mut Config)) -> SocketAddr {
    let mut config = Config::default();
    config.http.listen = "127.0.0.1:0".parse().unwrap();
    config.media.listen = "127.0.0.1:0".parse().unwrap();
    config.quic.listen = "127.0.0.1:0".parse().unwrap();
    config.auth.keys = keys.iter().map(|k| k.to_string()).collect();
    tweak(&mut config);
    volna::server::start(&config).await.unwrap().http_addr
}

fn token(room: &str, sub: &str, publish: bool, subscribe: bool, exp: u64) -> String {
    Auth::new(vec![KEY.into()])
        .sign(&Claims {
            room: room.into(),
            sub: sub.into(),
            publish,
            subscribe,
            exp,
            admin: false,
        })
        .unwrap()
}

#[tokio::test]
async fn participants_see_each_other_publish_mute_and_leave() {
    let addr = start(&[], |_| {}).await;
    let mut a = connect(addr, "").await;
    let mut b = connect(addr, "").await;
    let ja = join(&mut a, "r", "Ann", None).await;
    assert_eq!(ja["type"], "joined", "{ja}");
    assert_eq!(ja["id"], 1);
    assert_eq!(ja["v"], 1);
    let a_id = ja["participant"]["id"].as_str().unwrap().to_owned();
    let jb = join(&mut b, "r", "Ben", None).await;
    assert_eq!(jb["participants"][0]["id"], a_id.as_str(), "{jb}");
    let joined = expect_type(&mut a, "participant_joined").await;
    assert_eq!(joined["participant"]["name"], "Ben");

    // Ann publishes: she gets an answer, Ben gets the tracks and an offer to receive them.
    send(&mut a, json!({"type": "publish", "id": 2, "sdp": OFFER})).await;
    let ans = expect_type(&mut a, "publish_answer").await;
    assert_eq!(ans["id"], 2);
    assert!(ans["sdp"].as_str().unwrap().contains("a=recvonly"));
    let t1 = expect_type(&mut b, "track_published").await;
    let t2 = expect_type(&mut b, "track_published").await;
    let kinds = [
        t1["track"]["kind"].as_str().unwrap(),
        t2["track"]["kind"].as_str().unwrap(),
    ];
    assert_eq!(kinds, ["audio", "video"]);
    assert!(t2["track"].get("content").is_none(), "a camera: {t2}");
    let offer = expect_type(&mut b, "offer").await;
    let sdp = offer["sdp"].as_str().unwrap();
    assert!(
        sdp.contains("a=sendonly") && sdp.contains("a=setup:actpass") && sdp.contains("a=ice-lite"),
        "{sdp}"
    );
    assert_eq!(offer["tracks"].as_object().unwrap().len(), 2);
    let audio_track = t1["track"]["id"].as_str().unwrap().to_owned();

    // Ben answers (a minimal valid answer mirroring the two m-lines).
    let answer = "v=0\r\no=- 9 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\na=group:BUNDLE 0 1\r\n\
m=audio 9 UDP/TLS/RTP/SAVPF 111\r\nc=IN IP4 0.0.0.0\r\na=ice-ufrag:bbbb\r\na=ice-pwd:0123456789012345678901\r\n\
a=fingerprint:sha-256 AA:BB:CC\r\na=setup:active\r\na=mid:0\r\na=recvonly\r\na=rtcp-mux\r\na=rtpmap:111 opus/48000/2\r\n\
m=video 9 UDP/TLS/RTP/SAVPF 96\r\nc=IN IP4 0.0.0.0\r\na=ice-ufrag:bbbb\r\na=ice-pwd:0123456789012345678901\r\n\
a=fingerprint:sha-256 AA:BB:CC\r\na=setup:active\r\na=mid:1\r\na=recvonly\r\na=rtcp-mux\r\na=rtpmap:96 VP8/90000\r\n";
    send(&mut b, json!({"type": "answer", "id": 3, "sdp": answer})).await;
    assert_eq!(expect_type(&mut b, "ok").await["id"], 3);
    // A second answer has no offer to answer.
    send(&mut b, json!({"type": "answer", "id": 4, "sdp": answer})).await;
    let e = expect_type(&mut b, "error").await;
    assert_eq!(
        (e["code"].as_u64(), e["reason"].as_str(), e["id"].as_u64()),
        (Some(409), Some("no_offer"), Some(4))
    );

    // Mute: only one's own tracks; the other side hears of it.
    send(
        &mut b,
        json!({"type": "mute", "id": 5, "track": audio_track, "muted": true}),
    )
    .await;
    assert_eq!(
        expect_type(&mut b, "error").await["reason"],
        "no_such_track"
    );
    send(
        &mut a,
        json!({"type": "mute", "id": 6, "track": audio_track, "muted": true}),
    )
    .await;
    assert_eq!(expect_type(&mut a, "ok").await["id"], 6);
    let m = expect_type(&mut b, "mute").await;
    assert_eq!(
        (m["participant"].as_str(), m["muted"].as_bool()),
        (Some(a_id.as_str()), Some(true))
    );

    // Pin: tracks of the room only.
    let video_track = t2["track"]["id"].as_str().unwrap().to_owned();
    send(
        &mut b,
        json!({"type": "pin", "id": 8, "tracks": [video_track]}),
    )
    .await;
    assert_eq!(expect_type(&mut b, "ok").await["id"], 8);
    send(
        &mut b,
        json!({"type": "pin", "id": 9, "tracks": ["nobody-1"]}),
    )
    .await;
    let e = expect_type(&mut b, "error").await;
    assert_eq!(
        (e["code"].as_u64(), e["reason"].as_str()),
        (Some(404), Some("no_such_track"))
    );

    // Ann leaves: Ben is told, and offered his connection again with her lines ended: the
    // first (the BUNDLE tag) inactive and still in the group, the other stopped.
    send(&mut a, json!({"type": "leave", "id": 7})).await;
    assert_eq!(expect_type(&mut a, "ok").await["id"], 7);
    let left = expect_type(&mut b, "participant_left").await;
    assert_eq!(left["participant"], a_id.as_str());
    let again = expect_type(&mut b, "offer").await;
    let sdp = again["sdp"].as_str().unwrap();
    assert!(sdp.contains("a=group:BUNDLE 0\r\n"), "{sdp}");
    assert!(
        sdp.contains("m=audio 9 ") && sdp.contains("m=video 0 "),
        "{sdp}"
    );
    assert!(!sdp.contains("a=sendonly"), "{sdp}");
    assert!(again["tracks"].as_object().unwrap().is_empty());
}

#[tokio::test]
async fn auth_failures_get_their_codes() {
    let addr = start(&[KEY], |_| {}).await;
    let now = unix_now();
    let cases: Vec<(&str, Option<String>, u64, &str)> = vec![
        ("no token", None, 401, "missing_token"),
        (
            "expired",
            Some(token("r", "x", true, true, now - 10)),
            401,
            "token_expired",
        ),
        ("garbage", Some("not.a.jwt".into()), 401, "invalid_token"),
        (
            "wrong key",
            Some(
                Auth::new(vec!["another-key-0123456789".into()])
                    .sign(&Claims {
                        room: "r".into(),
                        sub: "x".into(),
                        publish: true,
                        subscribe: true,
                        exp: now + 60,
                        admin: false,
                    })
                    .unwrap(),
            ),
            401,
            "invalid_token",
        ),
        (
            "other room",
            Some(token("elsewhere", "x", true, true, now + 60)),
            403,
            "wrong_room",
        ),
    ];
    for (name, t, code, reason) in cases {
        let mut ws = connect(addr, "").await;
        let r = join(&mut ws, "r", "x", t.as_deref()).await;
        assert_eq!(
            (r["type"].as_str(), r["code"].as_u64(), r["reason"].as_str()),
            (Some("error"), Some(code), Some(reason)),
            "{name}: {r}"
        );
    }
    // A good token without the publish grant joins, but cannot publish.
    let mut ws = connect(addr, "").await;
    let r = join(
        &mut ws,
        "r",
        "viewer",
        Some(&token("r", "vic", false, true, now + 60)),
    )
    .await;
    assert_eq!(r["type"], "joined", "{r}");
    assert_eq!(
        r["participant"]["identity"], "vic",
        "identity comes from the token"
    );
    send(&mut ws, json!({"type": "publish", "id": 9, "sdp": OFFER})).await;
    let e = expect_type(&mut ws, "error").await;
    assert_eq!(
        (e["code"].as_u64(), e["reason"].as_str()),
        (Some(403), Some("forbidden"))
    );
    // A token in the upgrade request is checked before the upgrade.
    let err = tokio_tungstenite::connect_async(format!("ws://{addr}/rtc?token=bad.token.here"))
        .await
        .unwrap_err();
    match err {
        tokio_tungstenite::tungstenite::Error::Http(res) => assert_eq!(res.status(), 401),
        other => panic!("expected HTTP 401, got {other}"),
    }
    // The upgrade token serves the join.
    let mut ws = connect(
        addr,
        &format!("?token={}", token("r", "uma", true, true, now + 60)),
    )
    .await;
    assert_eq!(
        join(&mut ws, "r", "", None).await["participant"]["identity"],
        "uma"
    );
}

#[tokio::test]
async fn room_limit_refuses_the_extra_participant_only() {
    let addr = start(&[], |c| c.limits.max_participants_per_room = 2).await;
    let mut a = connect(addr, "").await;
    let mut b = connect(addr, "").await;
    let mut c = connect(addr, "").await;
    assert_eq!(join(&mut a, "small", "a", None).await["type"], "joined");
    assert_eq!(join(&mut b, "small", "b", None).await["type"], "joined");
    let r = join(&mut c, "small", "c", None).await;
    assert_eq!(
        (r["code"].as_u64(), r["reason"].as_str()),
        (Some(429), Some("room_full")),
        "{r}"
    );
    // Another room is fine, and the first two are unaffected.
    assert_eq!(join(&mut c, "other", "c", None).await["type"], "joined");
    send(&mut a, json!({"type": "ping", "id": 1})).await;
    assert_eq!(expect_type(&mut a, "pong").await["id"], 1);
}

/// One token cannot fill a room: an identity may be in a room `max_participants_per_identity`
/// times (its devices), another identity still gets in; names chosen without a token (dev mode)
/// are not counted.
#[tokio::test]
async fn one_identity_cannot_fill_a_room() {
    let addr = start(&[KEY], |c| c.limits.max_participants_per_identity = 2).await;
    let now = unix_now();
    let eve = token("r", "eve", true, true, now + 60);
    let mut socks = Vec::new();
    for i in 0..3 {
        let mut ws = connect(addr, "").await;
        let r = join(&mut ws, "r", "", Some(&eve)).await;
        if i < 2 {
            assert_eq!(r["type"], "joined", "{r}");
        } else {
            assert_eq!(
                (r["code"].as_u64(), r["reason"].as_str()),
                (Some(429), Some("identity_limit")),
                "{r}"
            );
        }
        socks.push(ws);
    }
    let mut other = connect(addr, "").await;
    let r = join(
        &mut other,
        "r",
        "",
        Some(&token("r", "ann", true, true, now + 60)),
    )
    .await;
    assert_eq!(r["type"], "joined", "{r}");
    // In dev mode many guests share a name.
    let dev = start(&[], |c| c.limits.max_participants_per_identity = 1).await;
    for _ in 0..3 {
        let mut ws = connect(dev, "").await;
        assert_eq!(join(&mut ws, "g", "guest", None).await["type"], "joined");
        socks.push(ws);
    }
}

/// A client that stops reading its socket is cut off within seconds (shown to the others as
/// reconnecting), instead of having the events meant for it pile up or vanish unseen.
#[tokio::test]
async fn a_client_that_stops_reading_is_cut_off() {
    let addr = start(&[], |c| c.limits.ws_messages_per_second = 100_000).await;
    // The stuck one: a tiny receive buffer, and it never reads after `joined`.
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.set_recv_buffer_size(4096).unwrap();
    let stream = MaybeTlsStream::Plain(sock.connect(addr).await.unwrap());
    let (mut stuck, _) = tokio_tungstenite::client_async(format!("ws://{addr}/rtc"), stream)
        .await
        .unwrap();
    let joined = join(&mut stuck, "slow", "stuck", None).await;
    let stuck_id = joined["participant"]["id"].as_str().unwrap().to_owned();
    let mut watcher = connect(addr, "").await;
    assert_eq!(
        join(&mut watcher, "slow", "watcher", None).await["type"],
        "joined"
    );
    let mut talker = connect(addr, "").await;
    assert_eq!(
        join(&mut talker, "slow", "talker", None).await["type"],
        "joined"
    );
    send(
        &mut talker,
        json!({"type": "publish", "id": 2, "sdp": OFFER}),
    )
    .await;
    let track = loop {
        let v = recv(&mut talker).await;
        if v["type"] == "publish_answer" {
            break expect_type(&mut watcher, "track_published").await["track"]["id"]
                .as_str()
                .unwrap()
                .to_owned();
        }
    };
    // The talker mutes and unmutes tens of thousands of times: events for everyone. The watcher and the
    // talker read theirs; the stuck one does not.
    let (mut tx, mut rx) = talker.split();
    let drain = tokio::spawn(async move { while rx.next().await.is_some() {} });
    // About 5 MB of events: more than the socket buffers on loopback hold.
    for i in 0..40_000 {
        let m = json!({"type": "mute", "track": track, "muted": i % 2 == 0});
        tx.send(Message::Text(m.to_string().into())).await.unwrap();
    }
    let reconnecting = loop {
        let v = tokio::time::timeout(Duration::from_secs(20), watcher.next())
            .await
            .expect("the watcher hears of the stuck one within 20 s")
            .unwrap()
            .unwrap();
        if let Message::Text(t) = v {
            let v: Value = serde_json::from_str(&t).unwrap();
            if v["type"] == "participant_reconnecting" {
                break v;
            }
        }
    };
    assert_eq!(
        reconnecting["participant"],
        stuck_id.as_str(),
        "{reconnecting}"
    );
    drain.abort();
    drop(stuck);
}

#[tokio::test]
async fn malformed_and_unexpected_messages_get_errors_never_a_crash() {
    let addr = start(&[], |c| {
        c.limits.ws_max_message_bytes = 2048;
        c.limits.ws_messages_per_second = 1000;
    })
    .await;
    let mut ws = connect(addr, "").await;
    let cases: Vec<(Message, u64, &str)> = vec![
        (Message::Text("not json".into()), 400, "bad_message"),
        (Message::Text("[1,2,3]".into()), 400, "bad_message"),
        (
            Message::Text(r#"{"type":"teleport"}"#.into()),
            400,
            "bad_message",
        ),
        (
            Message::Text(r#"{"type":"join","v":"one","room":"r"}"#.into()),
            400,
            "bad_message",
        ),
        (
            Message::Text(r#"{"type":"join","v":2,"room":"r"}"#.into()),
            400,
            "unsupported_version",
        ),
        (
            Message::Text(r#"{"type":"join","v":1,"room":"no spaces"}"#.into()),
            400,
            "bad_room",
        ),
        (
            Message::Text(r#"{"type":"publish","sdp":"v=0"}"#.into()),
            409,
            "not_joined",
        ),
        (
            Message::Text(r#"{"type":"mute","track":"x","muted":true}"#.into()),
            409,
            "not_joined",
        ),
        (Message::Binary(vec![1, 2, 3].into()), 400, "bad_message"),
        (
            Message::Text("x".repeat(5000).into()),
            413,
            "message_too_large",
        ),
    ];
    for (msg, code, reason) in cases {
        let shown = format!("{msg:?}").chars().take(60).collect::<String>();
        ws.send(msg).await.unwrap();
        let r = recv(&mut ws).await;
        assert_eq!(
            (r["type"].as_str(), r["code"].as_u64(), r["reason"].as_str()),
            (Some("error"), Some(code), Some(reason)),
            "{shown}: {r}"
        );
    }
    assert_eq!(join(&mut ws, "fuzz", "f", None).await["type"], "joined");
    // After joining: a second join, bad SDP, subscribing to nothing that exists.
    let cases = [
        (
            json!({"type": "join", "v": 1, "room": "fuzz"}),
            409,
            "already_joined",
        ),
        (json!({"type": "publish", "sdp": "garbage"}), 400, "bad_sdp"),
        (
            json!({"type": "subscribe", "tracks": ["nope"]}),
            404,
            "no_such_track",
        ),
        (json!({"type": "answer", "sdp": OFFER}), 409, "no_offer"),
    ];
    for (msg, code, reason) in cases {
        send(&mut ws, msg.clone()).await;
        let r = recv(&mut ws).await;
        assert_eq!(
            (r["code"].as_u64(), r["reason"].as_str()),
            (Some(code), Some(reason)),
            "{msg}: {r}"
        );
    }
    // A burst of pseudo-random printable junk: each gets an error.
    let mut x: u32 = 12345;
    for _ in 0..200 {
        let len = 1 + (x % 300) as usize;
        let s: String = (0..len)
            .map(|_| {
                x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
                (b' ' + (x >> 16) as u8 % 94) as char
            })
            .collect();
        ws.send(Message::Text(s.into())).await.unwrap();
        assert_eq!(recv(&mut ws).await["type"], "error");
    }
    send(&mut ws, json!({"type": "ping", "id": 77})).await;
    assert_eq!(
        expect_type(&mut ws, "pong").await["id"],
        77,
        "the connection still works"
    );
}

#[tokio::test]
async fn message_rate_is_limited() {
    let addr = start(&[], |c| c.limits.ws_messages_per_second = 5).await;
    let mut ws = connect(addr, "").await;
    for i in 0..20 {
        send(&mut ws, json!({"type": "ping", "id": i})).await;
    }
    let mut limited = 0;
    for _ in 0..20 {
        let r = recv(&mut ws).await;
        if r["reason"] == "rate_limited" {
            limited += 1;
        }
    }
    assert!(
        limited >= 10,
        "most of a 20-message burst over a 5/s limit is refused ({limited})"
    );
    tokio::time::sleep(Duration::from_millis(1200)).await;
    send(&mut ws, json!({"type": "ping", "id": 99})).await;
    assert_eq!(
        expect_type(&mut ws, "pong").await["id"],
        99,
        "allowed again after a pause"
    );
}

#[tokio::test]
async fn track_and_room_limits() {
    let addr = start(&[], |c| {
        c.limits.max_tracks_per_participant = 1;
        c.limits.max_rooms = 1;
    })
    .await;
    let mut a = connect(addr, "").await;
    assert_eq!(join(&mut a, "one", "a", None).await["type"], "joined");
    send(&mut a, json!({"type": "publish", "id": 1, "sdp": OFFER})).await;
    let e = expect_type(&mut a, "error").await;
    assert_eq!(
        (e["code"].as_u64(), e["reason"].as_str()),
        (Some(429), Some("too_many_tracks")),
        "{e}"
    );
    let mut b = connect(addr, "").await;
    let r = join(&mut b, "two", "b", None).await;
    assert_eq!(
        (r["code"].as_u64(), r["reason"].as_str()),
        (Some(429), Some("too_many_rooms")),
        "{r}"
    );
    assert_eq!(
        join(&mut b, "one", "b", None).await["type"],
        "joined",
        "the existing room still takes people"
    );
}

#[tokio::test]
async fn republishing_unpublishes_the_old_tracks() {
    let addr = start(&[], |_| {}).await;
    let mut a = connect(addr, "").await;
    let mut b = connect(addr, "").await;
    join(&mut a, "re", "a", None).await;
    join(&mut b, "re", "b", None).await;
    send(&mut a, json!({"type": "publish", "id": 1, "sdp": OFFER})).await;
    expect_type(&mut a, "publish_answer").await;
    let first = expect_type(&mut b, "track_published").await["track"]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    send(&mut a, json!({"type": "publish", "id": 2, "sdp": OFFER})).await;
    expect_type(&mut a, "publish_answer").await;
    let un = expect_type(&mut b, "track_unpublished").await;
    assert_eq!(un["track"], first.as_str());
}

#[tokio::test]
async fn losing_media_removes_the_participant_and_tells_the_others() {
    // Nobody ever sends media here, so the publishing connection times out.
    let addr = start(&[], |c| {
        c.media.consent_timeout_secs = 1;
        c.media.reconnect_secs = 1;
    })
    .await;
    let mut a = connect(addr, "").await;
    let mut b = connect(addr, "").await;
    let a_id = join(&mut a, "quiet", "a", None).await["participant"]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    // B receives nothing (no subscriber connection to time out itself): it only watches events.
    send(
        &mut b,
        json!({"type": "join", "v": 1, "room": "quiet", "name": "b", "auto_subscribe": false}),
    )
    .await;
    assert_eq!(recv(&mut b).await["type"], "joined");
    send(&mut a, json!({"type": "publish", "id": 1, "sdp": OFFER})).await;
    expect_type(&mut a, "publish_answer").await;
    let e = expect_type(&mut a, "error").await;
    assert_eq!(
        (e["code"].as_u64(), e["reason"].as_str()),
        (Some(408), Some("media_lost")),
        "{e}"
    );
    // A is shown reconnecting, and leaves when it does not come back within reconnect_secs.
    let r = expect_type(&mut b, "participant_reconnecting").await;
    assert_eq!(r["participant"], a_id.as_str());
    let left = expect_type(&mut b, "participant_left").await;
    assert_eq!(left["participant"], a_id.as_str());
    // A's socket is closed by the server.
    let end = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match a.next().await {
                None | Some(Err(_)) | Some(Ok(Message::Close(_))) => break,
                Some(Ok(_)) => continue,
            }
        }
    })
    .await;
    assert!(end.is_ok(), "socket closed after media_lost");
}

/// A video m-line marked as a presentation (RFC 4796 `a=content:slides`) is announced with
/// `"content": "slides"`.
#[tokio::test]
async fn presentations_are_announced_as_slides() {
    let addr = start(&[], |_| {}).await;
    let mut a = connect(addr, "").await;
    let mut b = connect(addr, "").await;
    join(&mut a, "r", "Ann", None).await;
    join(&mut b, "r", "Ben", None).await;
    let slides = OFFER.replace("a=mid:1\r\n", "a=mid:1\r\na=content:slides\r\n");
    send(&mut a, json!({"type": "publish", "id": 2, "sdp": slides})).await;
    expect_type(&mut a, "publish_answer").await;
    let t1 = expect_type(&mut b, "track_published").await;
    let t2 = expect_type(&mut b, "track_published").await;
    assert!(t1["track"].get("content").is_none(), "{t1}");
    assert_eq!(t2["track"]["content"], "slides", "{t2}");
}

/// A participant whose socket drops is shown reconnecting; a new socket with its `resume` secret
/// takes it back (same id, tracks published again), and the others never see it leave.
#[tokio::test]
async fn a_lost_socket_resumes_as_the_same_participant() {
    let addr = start(&[], |_| {}).await;
    let mut a = connect(addr, "").await;
    let mut b = connect(addr, "").await;
    let ja = join(&mut a, "back", "Ann", None).await;
    let a_id = ja["participant"]["id"].as_str().unwrap().to_owned();
    let secret = ja["resume"].as_str().unwrap().to_owned();
    assert_eq!(secret.len(), 32, "{ja}");
    assert_eq!(ja["resumed"], false);
    join(&mut b, "back", "Ben", None).await;
    send(&mut a, json!({"type": "publish", "id": 2, "sdp": OFFER})).await;
    expect_type(&mut a, "publish_answer").await;
    expect_type(&mut b, "offer").await;
    // Ann's network drops: her socket closes without `leave`.
    drop(a);
    let r = expect_type(&mut b, "participant_reconnecting").await;
    assert_eq!(r["participant"], a_id.as_str());
    // A wrong secret is a new participant, not Ann.
    let mut x = connect(addr, "").await;
    send(
        &mut x,
        json!({"type": "join", "v": 1, "room": "back", "name": "Ann", "resume": "0123", "id": 1}),
    )
    .await;
    let jx = expect_type(&mut x, "joined").await;
    assert_eq!(jx["resumed"], false);
    assert_ne!(jx["participant"]["id"], a_id.as_str());
    let reconnecting: Vec<bool> = jx["participants"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["id"] == a_id.as_str())
        .map(|p| p["reconnecting"] == true)
        .collect();
    assert_eq!(reconnecting, [true], "joiners see Ann reconnecting: {jx}");
    // Ann comes back with her secret.
    let mut a = connect(addr, "").await;
    send(
        &mut a,
        json!({"type": "join", "v": 1, "room": "back", "name": "Ann", "resume": secret, "id": 1}),
    )
    .await;
    let again = expect_type(&mut a, "joined").await;
    assert_eq!(again["resumed"], true, "{again}");
    assert_eq!(again["participant"]["id"], a_id.as_str());
    // Ben sees her old tracks end, her return, then (after she publishes again) new tracks.
    let mut seen = Vec::new();
    loop {
        let m = recv(&mut b).await;
        let t = m["type"].as_str().unwrap().to_owned();
        assert_ne!(t, "participant_left", "Ann never leaves: {m}");
        if t == "participant_joined" {
            assert_ne!(
                m["participant"]["id"],
                a_id.as_str(),
                "nor joins again: {m}"
            );
            continue;
        }
        seen.push(t.clone());
        if t == "participant_reconnected" {
            assert_eq!(m["participant"], a_id.as_str());
            break;
        }
    }
    assert!(seen.contains(&"track_unpublished".to_owned()), "{seen:?}");
    send(&mut a, json!({"type": "publish", "id": 3, "sdp": OFFER})).await;
    expect_type(&mut a, "publish_answer").await;
    let t = expect_type(&mut b, "track_published").await;
    assert_eq!(t["participant"], a_id.as_str());
}

/// A WHIP publisher in a room is shown to its participants as a participant of its own (with
/// its tracks, received like anyone's), and leaves when its session ends.
#[tokio::test]
async fn whip_publishers_are_shown_to_room_participants() {
    let addr = start(&[], |_| {}).await;
    let mut a = connect(addr, "").await;
    join(&mut a, "mixed", "Ann", None).await;
    let (status, location, raw) = http(addr, "POST", "/whip/mixed", OFFER).await;
    assert_eq!(status, 201, "{raw}");
    let j = expect_type(&mut a, "participant_joined").await;
    let who = j["participant"]["id"].as_str().unwrap().to_owned();
    assert_eq!(j["participant"]["identity"], "whip", "{j}");
    assert_eq!(
        j["participant"]["tracks"].as_array().unwrap().len(),
        2,
        "{j}"
    );
    let offer = expect_type(&mut a, "offer").await;
    let tracks: Vec<&str> = offer["tracks"]
        .as_object()
        .unwrap()
        .values()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert!(
        tracks.iter().all(|t| t.starts_with(&format!("{who}-"))),
        "{offer}"
    );
    // A later joiner finds it in `joined`.
    let mut b = connect(addr, "").await;
    let jb = join(&mut b, "mixed", "Ben", None).await;
    let ids: Vec<&str> = jb["participants"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["id"].as_str().unwrap())
        .collect();
    assert!(ids.contains(&who.as_str()), "{jb}");
    let (status, _, _) = http(addr, "DELETE", &location, "").await;
    assert_eq!(status, 200);
    let left = expect_type(&mut a, "participant_left").await;
    assert_eq!(left["participant"], who.as_str());
}

/// A participant without any media session (it only watches an empty room) whose socket drops
/// is shown reconnecting, then leaves when it does not come back.
#[tokio::test]
async fn a_lost_socket_that_does_not_come_back_leaves() {
    let addr = start(&[], |c| c.media.reconnect_secs = 1).await;
    let mut a = connect(addr, "").await;
    let mut b = connect(addr, "").await;
    let a_id = join(&mut a, "gone", "Ann", None).await["participant"]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    join(&mut b, "gone", "Ben", None).await;
    drop(a);
    let r = expect_type(&mut b, "participant_reconnecting").await;
    assert_eq!(r["participant"], a_id.as_str());
    let left = expect_type(&mut b, "participant_left").await;
    assert_eq!(left["participant"], a_id.as_str());
}

/// An open WebSocket keeps its place among the listener's `max_connections` for as long as it is
/// open, not only until its upgrade; one that joins no room within `join_timeout_secs` is told
/// `408 join_timeout` and closed, and its place is free again.
#[tokio::test]
async fn open_sockets_count_against_the_cap_and_unjoined_ones_are_closed() {
    let addr = start(&[], |c| {
        c.http.max_connections = 2;
        c.http.join_timeout_secs = 1;
    })
    .await;
    let mut joined = connect(addr, "").await;
    assert_eq!(join(&mut joined, "r", "Ann", None).await["type"], "joined");
    let mut idle = connect(addr, "").await;
    // Both places taken by open sockets: a third connection is closed without an answer.
    let third = tokio_tungstenite::connect_async(format!("ws://{addr}/rtc")).await;
    assert!(third.is_err(), "a third socket past the cap of 2");

    // The idle one is told and closed after about a second; the joined one stays.
    let started = std::time::Instant::now();
    let e = recv(&mut idle).await;
    assert_eq!(
        (e["type"].as_str(), e["code"].as_u64()),
        (Some("error"), Some(408)),
        "{e}"
    );
    assert_eq!(e["reason"], "join_timeout");
    let closed = tokio::time::timeout(Duration::from_secs(5), async {
        while let Some(Ok(m)) = idle.next().await {
            if m.is_close() {
                break;
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "closed after the error");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    drop(idle);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut again = connect(addr, "").await;
    assert_eq!(join(&mut again, "r", "Bob", None).await["type"], "joined");
    send(&mut joined, json!({"type": "ping", "id": 9})).await;
    let pong = expect_type(&mut joined, "pong").await;
    assert_eq!(pong["id"], 9, "the joined socket outlived the deadline");
}
