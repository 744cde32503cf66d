//! The server API (docs/api.md) over real HTTP against an in-process relay with auth on: room
//! participants over WebSocket, a WHIP publisher and a WHEP viewer in the same room; every call,
//! what the room's participants are told, and every refusal with its code.

use std::net::SocketAddr;

use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use volna::config::Config;
use volna::signal::auth::{unix_now, Auth, Claims};

mod common;
use common::ws::*;

const KEY: &str = "server-api-test-key-0123456789";

fn token(room: &str, sub: &str, admin: bool) -> String {
    Auth::new(vec![KEY.into()])
        .sign(&Claims {
            room: room.into(),
            sub: sub.into(),
            publish: true,
            subscribe: true,
            exp: unix_now() + 600,
            admin,
        })
        .unwrap()
}

async fn start() -> SocketAddr {
    let mut config = Config::default();
    config.http.listen = "127.0.0.1:0".parse().unwrap();
    config.media.listen = "127.0.0.1:0".parse().unwrap();
    config.quic.listen = "127.0.0.1:0".parse().unwrap();
    config.media.reconnect_secs = 30;
    config.auth.keys = vec![KEY.into()];
    volna::server::start(&config).await.unwrap().http_addr
}

struct Reply {
    status: u16,
    head: String,
    json: Value,
}

/// One HTTP request: `body` goes as `content_type`; the reply's status, head and JSON body
/// (`null` when it has none).
async fn call(
    addr: SocketAddr,
    method: &str,
    path: &str,
    bearer: Option<&str>,
    content_type: &str,
    body: &str,
) -> Reply {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let auth = bearer.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n{auth}Content-Type: {content_type}\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).await.unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((&raw, ""));
    Reply {
        status: head.split_whitespace().nth(1).unwrap().parse().unwrap(),
        head: head.to_ascii_lowercase(),
        json: serde_json::from_str(body).unwrap_or(Value::Null),
    }
}

/// An API call with the admin token and a JSON body.
async fn api(addr: SocketAddr, method: &str, path: &str, body: Value) -> Reply {
    let admin = token("-", "ops", true);
    let body = if body.is_null() {
        String::new()
    } else {
        body.to_string()
    };
    call(addr, method, path, Some(&admin), "application/json", &body).await
}

async fn member<'a>(room: &'a Value, id: &str) -> &'a Value {
    room["participants"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["id"] == id)
        .unwrap_or_else(|| panic!("{id} in {room}"))
}

#[tokio::test]
async fn an_admin_lists_rooms_and_acts_on_them_and_participants_are_told() {
    let addr = start().await;

    // Only an admin token opens the API.
    let r = call(addr, "GET", "/api/v1/rooms", None, "application/json", "").await;
    assert_eq!(r.status, 401);
    assert!(r.head.contains("www-authenticate: bearer"), "{}", r.head);
    assert_eq!(r.json["reason"], "unauthorized");
    let plain = token("call", "ann", false);
    let r = call(
        addr,
        "GET",
        "/api/v1/rooms",
        Some(&plain),
        "application/json",
        "",
    )
    .await;
    assert_eq!(
        (r.status, r.json["reason"].as_str()),
        (403, Some("forbidden"))
    );
    let r = api(addr, "GET", "/api/v1/rooms", Value::Null).await;
    assert_eq!((r.status, &r.json), (200, &json!({"rooms": []})));

    // Ann publishes over the room protocol, Ben watches; a WHIP publisher and a WHEP viewer.
    let mut ann = connect(addr, "").await;
    let joined = join(&mut ann, "call", "Ann", Some(&token("call", "ann", false))).await;
    let ann_id = joined["participant"]["id"].as_str().unwrap().to_owned();
    send(&mut ann, json!({"type": "publish", "id": 2, "sdp": OFFER})).await;
    expect_type(&mut ann, "publish_answer").await;
    let mut ben = connect(addr, "").await;
    let joined = join(&mut ben, "call", "Ben", Some(&token("call", "ben", false))).await;
    let ben_id = joined["participant"]["id"].as_str().unwrap().to_owned();
    let whip_token = token("call", "cam", false);
    let whip = call(
        addr,
        "POST",
        "/whip/call",
        Some(&whip_token),
        "application/sdp",
        OFFER,
    )
    .await;
    assert_eq!(whip.status, 201, "{}", whip.head);
    let whep = call(
        addr,
        "POST",
        "/whep/call",
        Some(&whip_token),
        "application/sdp",
        &OFFER.replace("a=sendonly", "a=recvonly"),
    )
    .await;
    assert_eq!(whep.status, 201, "{}", whep.head);
    let cam = loop {
        let j = expect_type(&mut ann, "participant_joined").await;
        if j["participant"]["identity"] == "whip" {
            break j["participant"]["id"].as_str().unwrap().to_owned();
        }
    };

    // The list and the room in detail.
    let r = api(addr, "GET", "/api/v1/rooms", Value::Null).await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.json["rooms"],
        json!([{"name": "call", "participants": 3, "viewers": 1}])
    );
    let r = api(addr, "GET", "/api/v1/rooms/call", Value::Null).await;
    assert_eq!(r.status, 200, "{}", r.json);
    let room = r.json;
    assert_eq!(room["participants"].as_array().unwrap().len(), 3, "{room}");
    let a = member(&room, &ann_id).await;
    assert_eq!(
        (a["identity"].as_str(), a["kind"].as_str()),
        (Some("ann"), Some("room")),
        "{a}"
    );
    let kinds: Vec<(&str, &str)> = a["tracks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| (t["kind"].as_str().unwrap(), t["codec"].as_str().unwrap()))
        .collect();
    assert_eq!(kinds, [("audio", "opus"), ("video", "VP8")], "{a}");
    assert_eq!(member(&room, &ben_id).await["tracks"], json!([]));
    assert_eq!(member(&room, &cam).await["kind"], "whip");
    assert_eq!(room["viewers"].as_array().unwrap().len(), 1, "{room}");
    assert_eq!(room["viewers"][0]["kind"], "whep");

    // A moderator mutes Ann's audio: nobody gets it, everyone (Ann too) is told.
    let audio = a["tracks"][0]["id"].as_str().unwrap().to_owned();
    let path = format!("/api/v1/rooms/call/tracks/{audio}/mute");
    let r = api(addr, "POST", &path, json!({"muted": true})).await;
    assert_eq!(r.status, 204, "{}", r.json);
    for ws in [&mut ann, &mut ben] {
        let m = expect_type(ws, "mute").await;
        assert_eq!(
            m,
            json!({"type": "mute", "participant": ann_id, "track": audio, "muted": true})
        );
    }
    let room = api(addr, "GET", "/api/v1/rooms/call", Value::Null)
        .await
        .json;
    let t = &member(&room, &ann_id).await["tracks"][0];
    assert_eq!(
        (t["muted"].as_bool(), t["muted_by_server"].as_bool()),
        (Some(true), Some(true)),
        "{t}"
    );
    // Ann cannot unmute it herself: the others still see it muted.
    send(
        &mut ann,
        json!({"type": "mute", "id": 3, "track": audio, "muted": false}),
    )
    .await;
    assert_eq!(expect_type(&mut ben, "mute").await["muted"], true);
    let r = api(addr, "POST", &path, json!({"muted": false})).await;
    assert_eq!(r.status, 204);
    assert_eq!(expect_type(&mut ben, "mute").await["muted"], false);

    // Metadata: told to those in the room, found by later joiners.
    let r = api(
        addr,
        "PUT",
        "/api/v1/rooms/call/metadata",
        json!({"topic": "weekly"}),
    )
    .await;
    assert_eq!(r.status, 204, "{}", r.json);
    let m = expect_type(&mut ben, "room_metadata").await;
    assert_eq!(m["metadata"], json!({"topic": "weekly"}));
    let mut cat = connect(addr, "").await;
    let joined = join(&mut cat, "call", "Cat", Some(&token("call", "cat", false))).await;
    assert_eq!(joined["metadata"], json!({"topic": "weekly"}), "{joined}");
    let cat_id = joined["participant"]["id"].as_str().unwrap().to_owned();
    let r = api(addr, "GET", "/api/v1/rooms", Value::Null).await;
    assert_eq!(r.json["rooms"][0]["metadata"], json!({"topic": "weekly"}));

    // Cat loses its socket (reconnecting) and is removed meanwhile: its resume is void.
    let resume = joined["resume"].as_str().unwrap().to_owned();
    drop(cat);
    expect_type(&mut ann, "participant_reconnecting").await;
    let r = api(
        addr,
        "DELETE",
        &format!("/api/v1/rooms/call/participants/{cat_id}"),
        Value::Null,
    )
    .await;
    assert_eq!(r.status, 204);
    assert_eq!(
        expect_type(&mut ann, "participant_left").await["participant"],
        cat_id.as_str()
    );
    let mut cat = connect(addr, "").await;
    send(
        &mut cat,
        json!({"type": "join", "v": 1, "room": "call", "name": "Cat", "id": 1,
        "token": token("call", "cat", false), "resume": resume}),
    )
    .await;
    let again = recv(&mut cat).await;
    assert_eq!(again["resumed"], false, "{again}");
    assert_ne!(again["participant"]["id"], cat_id.as_str());

    // Ben is removed: told 410 removed, then the socket closes; Ann sees him leave.
    let r = api(
        addr,
        "DELETE",
        &format!("/api/v1/rooms/call/participants/{ben_id}"),
        Value::Null,
    )
    .await;
    assert_eq!(r.status, 204);
    let gone = expect_type(&mut ben, "error").await;
    assert_eq!(
        (gone["code"].as_u64(), gone["reason"].as_str()),
        (Some(410), Some("removed"))
    );
    assert!(
        closes(&mut ben).await,
        "the removed participant's socket closes"
    );
    assert_eq!(
        expect_type(&mut ann, "participant_left").await["participant"],
        ben_id.as_str()
    );
    // The WHIP publisher is removed: it leaves the room like any participant.
    let r = api(
        addr,
        "DELETE",
        &format!("/api/v1/rooms/call/participants/{cam}"),
        Value::Null,
    )
    .await;
    assert_eq!(r.status, 204);
    assert_eq!(
        expect_type(&mut ann, "participant_left").await["participant"],
        cam.as_str()
    );

    // The room is closed: everyone in it is told, and it is gone.
    let r = api(addr, "DELETE", "/api/v1/rooms/call", Value::Null).await;
    assert_eq!(r.status, 204);
    for ws in [&mut ann, &mut cat] {
        let m = expect_type(ws, "error").await;
        assert_eq!(
            (m["code"].as_u64(), m["reason"].as_str()),
            (Some(410), Some("room_closed"))
        );
    }
    let r = api(addr, "GET", "/api/v1/rooms/call", Value::Null).await;
    assert_eq!(
        (r.status, r.json["reason"].as_str()),
        (404, Some("no_room"))
    );
    let r = api(addr, "GET", "/api/v1/rooms", Value::Null).await;
    assert_eq!(r.json, json!({"rooms": []}));
}

/// Whether the socket closes within 5 s (messages before the close are skipped).
async fn closes(ws: &mut Ws) -> bool {
    use futures_util::StreamExt;
    let wait = async {
        while let Some(Ok(m)) = ws.next().await {
            if m.is_close() {
                return true;
            }
        }
        true
    };
    tokio::time::timeout(std::time::Duration::from_secs(5), wait)
        .await
        .unwrap_or(false)
}

#[tokio::test]
async fn refusals_have_their_codes() {
    let addr = start().await;
    let mut ann = connect(addr, "").await;
    join(&mut ann, "here", "Ann", Some(&token("here", "ann", false))).await;
    let long = format!("\"{}\"", "x".repeat(5000));
    // (method, path, content type, body, status, reason)
    let cases: &[(&str, &str, &str, &str, u16, &str)] = &[
        (
            "GET",
            "/api/v1/rooms/nowhere",
            "application/json",
            "",
            404,
            "no_room",
        ),
        (
            "GET",
            "/api/v1/rooms/bad%20name",
            "application/json",
            "",
            400,
            "bad_room",
        ),
        (
            "DELETE",
            "/api/v1/rooms/nowhere",
            "application/json",
            "",
            404,
            "no_room",
        ),
        (
            "DELETE",
            "/api/v1/rooms/here/participants/nobody",
            "application/json",
            "",
            404,
            "no_participant",
        ),
        (
            "POST",
            "/api/v1/rooms/here/tracks/none-0/mute",
            "application/json",
            r#"{"muted":true}"#,
            404,
            "no_such_track",
        ),
        (
            "POST",
            "/api/v1/rooms/here/tracks/none-0/mute",
            "application/json",
            r#"{"muted":"yes"}"#,
            400,
            "bad_json",
        ),
        (
            "POST",
            "/api/v1/rooms/here/tracks/none-0/mute",
            "application/json",
            r#"{"muted":true,"x":1}"#,
            400,
            "bad_json",
        ),
        (
            "POST",
            "/api/v1/rooms/here/tracks/none-0/mute",
            "text/plain",
            r#"{"muted":true}"#,
            415,
            "bad_content_type",
        ),
        (
            "PUT",
            "/api/v1/rooms/here/metadata",
            "application/json",
            "{not json",
            400,
            "bad_json",
        ),
        (
            "PUT",
            "/api/v1/rooms/here/metadata",
            "application/json",
            &long,
            413,
            "too_large",
        ),
        (
            "PUT",
            "/api/v1/rooms/nowhere/metadata",
            "application/json",
            "{}",
            404,
            "no_room",
        ),
    ];
    let admin = token("-", "ops", true);
    for &(method, path, ct, body, status, reason) in cases {
        let r = call(addr, method, path, Some(&admin), ct, body).await;
        assert_eq!(
            (r.status, r.json["reason"].as_str()),
            (status, Some(reason)),
            "{method} {path} {body:.40}: {}",
            r.json
        );
        assert_eq!(r.json["code"], status);
        assert!(r.json["message"].as_str().is_some_and(|m| !m.is_empty()));
    }
    // The room and its participant are untouched by all of that.
    let r = api(addr, "GET", "/api/v1/rooms/here", Value::Null).await;
    assert_eq!(
        r.json["participants"].as_array().map(Vec::len),
        Some(1),
        "{}",
        r.json
    );
    // Metadata `null` clears it.
    assert_eq!(
        api(addr, "PUT", "/api/v1/rooms/here/metadata", json!([1, 2]))
            .await
            .status,
        204
    );
    assert_eq!(
        expect_type(&mut ann, "room_metadata").await["metadata"],
        json!([1, 2])
    );
    assert_eq!(
        api(addr, "PUT", "/api/v1/rooms/here/metadata", Value::Null)
            .await
            .status,
        400
    );
    let r = call(
        addr,
        "PUT",
        "/api/v1/rooms/here/metadata",
        Some(&admin),
        "application/json",
        "null",
    )
    .await;
    assert_eq!(r.status, 204);
    let r = api(addr, "GET", "/api/v1/rooms/here", Value::Null).await;
    assert!(r.json.get("metadata").is_none(), "{}", r.json);
}
