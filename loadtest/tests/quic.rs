//! RTP over QUIC through a relay started in-process: a libopus tone from one native client to
//! another with 5% datagram loss on every link (a lossy UDP proxy in front of the relay), and the
//! bad input the QUIC side must shrug off.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rand::{Rng, SeedableRng};
use serde_json::json;
use tokio::net::UdpSocket;
use tokio::sync::Mutex;
use volna::config::Config;
use volna_load::client::{publish_tone, subscribe, Client, ClientError, Connect};

struct Relay {
    http: SocketAddr,
    quic: SocketAddr,
    hash: String,
}

async fn relay() -> Relay {
    relay_with(Config::default()).await
}

async fn relay_with(mut config: Config) -> Relay {
    config.http.listen = "127.0.0.1:0".parse().unwrap();
    config.media.listen = "127.0.0.1:0".parse().unwrap();
    config.quic.listen = "127.0.0.1:0".parse().unwrap();
    let r = volna::server::start(&config).await.unwrap();
    Relay {
        http: r.http_addr,
        quic: r.quic_addr.unwrap(),
        hash: r.quic_cert_sha256.unwrap(),
    }
}

/// A UDP proxy that drops `loss` of the datagrams in each direction. Each client address gets
/// its own upstream socket, so the relay sees one peer per client.
async fn lossy_proxy(target: SocketAddr, loss: f64, seed: u64) -> SocketAddr {
    let front = Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
    let addr = front.local_addr().unwrap();
    let rng = Arc::new(Mutex::new(rand::rngs::StdRng::seed_from_u64(seed)));
    let uplinks: Arc<Mutex<HashMap<SocketAddr, Arc<UdpSocket>>>> = Arc::default();
    tokio::spawn(async move {
        let mut buf = vec![0u8; 65536];
        loop {
            let Ok((n, client)) = front.recv_from(&mut buf).await else {
                return;
            };
            let up = {
                let mut map = uplinks.lock().await;
                if let Some(u) = map.get(&client) {
                    u.clone()
                } else {
                    let u = Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
                    map.insert(client, u.clone());
                    let (u2, front2, rng2) = (u.clone(), front.clone(), rng.clone());
                    tokio::spawn(async move {
                        let mut b = vec![0u8; 65536];
                        while let Ok(n) = u2.recv(&mut b).await {
                            if !rng2.lock().await.gen_bool(loss) {
                                let _ = front2.send_to(&b[..n], client).await;
                            }
                        }
                    });
                    u.connect(target).await.unwrap();
                    u
                }
            };
            if !rng.lock().await.gen_bool(loss) {
                let _ = up.send(&buf[..n]).await;
            }
        }
    });
    addr
}

fn connect(quic: SocketAddr, hash: &str, room: &str) -> Connect {
    Connect {
        quic,
        cert_sha256: Some(hash.into()),
        room: room.into(),
        token: None,
        name: "test".into(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tone_crosses_the_relay_with_loss_repaired() {
    let r = relay().await;
    let proxy = lossy_proxy(r.quic, 0.05, 7).await;
    let mut publisher = Client::connect(&connect(proxy, &r.hash, "tone"))
        .await
        .unwrap();
    let publishing =
        tokio::spawn(async move { publish_tone(&mut publisher, 440.0, 8.0, false).await });
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut subscriber = Client::connect(&connect(proxy, &r.hash, "tone"))
        .await
        .unwrap();
    let report = subscribe(&mut subscriber, 7.0).await.unwrap();
    let sent = publishing.await.unwrap().unwrap();
    println!(
        "publisher {} / subscriber {}",
        sent.to_json(),
        report.to_json()
    );
    assert!(report.audio_packets >= 250, "{:?}", report);
    assert!(
        report.nacks_sent > 0 && sent.retransmitted > 0,
        "loss was repaired by NACK: {report:?} {sent:?}"
    );
    assert!(
        report.loss_pct() < 1.0,
        "effective loss after repair {:.2}% (5% per link)",
        report.loss_pct()
    );
    assert_eq!(report.decode_errors, 0);
    // A 0.3-amplitude sine is about -13.5 dBFS; concealed gaps only lower it a little.
    assert!(
        report.level_dbfs > -20.0 && report.level_dbfs < -10.0,
        "level {}",
        report.level_dbfs
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_refused_and_others_keep_working() {
    let r = relay().await;
    // Junk UDP at the QUIC port is ignored by QUIC.
    let junk = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    for i in 0..50u8 {
        junk.send_to(&vec![i; 1 + usize::from(i) * 20], r.quic)
            .await
            .unwrap();
    }
    // A wrong pinned certificate is refused by the client.
    let wrong = Client::connect(&connect(r.quic, &"00".repeat(32), "x")).await;
    assert!(
        matches!(wrong, Err(ClientError::Quic(_))),
        "pinning refuses another certificate"
    );

    let mut c = Client::connect(&connect(r.quic, &r.hash, "bad"))
        .await
        .unwrap();
    let opus = |ssrc: u32| json!({"kind": "audio", "codec": "opus", "payload_type": 111, "clock_rate": 48000, "ssrc": ssrc});
    let cases = [
        (json!({"type": "subscribe", "flow": 1}).to_string(), 404, "no_room"),
        (json!({"type": "join", "v": 1, "room": "again"}).to_string(), 409, "already_joined"),
        (json!({"type": "publish", "flow": 0, "tracks": []}).to_string(), 400, "bad_tracks"),
        (json!({"type": "publish", "flow": 0, "tracks": [{"kind": "audio", "codec": "VP8", "payload_type": 96, "clock_rate": 90000, "ssrc": 1}]}).to_string(), 400, "bad_tracks"),
        // Two tracks on one SSRC (packets go to tracks by SSRC), a payload type RTCP takes.
        (json!({"type": "publish", "flow": 0, "tracks": [opus(7), {"kind": "video", "codec": "VP8", "payload_type": 96, "clock_rate": 90000, "ssrc": 7}]}).to_string(), 400, "bad_tracks"),
        (json!({"type": "publish", "flow": 0, "tracks": [{"kind": "video", "codec": "VP8", "payload_type": 72, "clock_rate": 90000, "ssrc": 8}]}).to_string(), 400, "bad_tracks"),
        // Over the tracks per participant: the limit every way in has.
        (json!({"type": "publish", "flow": 0, "tracks": (1..=5).map(opus).collect::<Vec<_>>()}).to_string(), 429, "too_many_tracks"),
        // Fields the doc does not list, `id` among them, are refused.
        (json!({"type": "subscribe", "flow": 1, "id": 3}).to_string(), 400, "bad_message"),
        ("not json".to_string(), 400, "bad_message"),
        (json!({"type": "warp"}).to_string(), 400, "bad_message"),
    ];
    for (raw, code, reason) in cases {
        let reply = c.exchange(raw.as_bytes()).await.unwrap();
        assert_eq!(
            (reply["code"].as_u64(), reply["reason"].as_str()),
            (Some(code), Some(reason)),
            "{raw}: {reply}"
        );
    }
    // Datagrams on a flow nobody opened are dropped and counted.
    for _ in 0..20 {
        c.conn
            .send_datagram(bytes::Bytes::from_static(&[0x3f, 0x80, 111, 0, 1]))
            .unwrap();
    }
    // More streams than the one control stream: QUIC flow control refuses them.
    let extra = tokio::time::timeout(Duration::from_millis(500), c.conn.open_bi()).await;
    assert!(extra.is_err(), "a second stream is not granted");

    // With a publisher in the room: its flow is taken, and an id nobody has is no publisher.
    c.request(json!({"type": "publish", "flow": 0, "tracks": [opus(9)]}))
        .await
        .unwrap();
    let cases = [
        (json!({"type": "subscribe", "flow": 0}), 409, "flow_in_use"),
        (
            json!({"type": "publish", "flow": 0, "tracks": [opus(10)]}),
            409,
            "flow_in_use",
        ),
        (
            json!({"type": "subscribe", "flow": 1, "publisher": "000000000000"}),
            404,
            "no_publisher",
        ),
    ];
    for (msg, code, reason) in cases {
        let reply = c.exchange(msg.to_string().as_bytes()).await.unwrap();
        assert_eq!(
            (reply["code"].as_u64(), reply["reason"].as_str()),
            (Some(code), Some(reason)),
            "{msg}: {reply}"
        );
    }

    // Control messages before join are refused, and a join of another version.
    let mut early = raw_connection(r.quic, &r.hash).await;
    let reply = early
        .exchange(
            json!({"type": "join", "v": 2, "room": "r"})
                .to_string()
                .as_bytes(),
        )
        .await
        .unwrap();
    assert_eq!(reply["reason"], "unsupported_version");
    // A name (the identity in dev mode) is at most 64 characters, like a room participant's.
    let long = "ы".repeat(65);
    let reply = early
        .exchange(
            json!({"type": "join", "v": 1, "room": "r", "name": long})
                .to_string()
                .as_bytes(),
        )
        .await
        .unwrap();
    assert_eq!(
        (reply["code"].as_u64(), reply["reason"].as_str()),
        (Some(400), Some("bad_name")),
        "{reply}"
    );
    let reply = early
        .exchange(
            json!({"type": "publish", "flow": 0, "tracks": []})
                .to_string()
                .as_bytes(),
        )
        .await
        .unwrap();
    assert_eq!(reply["reason"], "not_joined");

    // An oversized control frame ends that connection only.
    let mut big = raw_connection(r.quic, &r.hash).await;
    let reply = big.exchange(&vec![b' '; 100_000]).await.unwrap();
    assert_eq!(reply["reason"], "message_too_large");

    let stats: serde_json::Value = serde_json::from_str(&http_get(r.http, "/stats").await).unwrap();
    assert!(stats["junk_datagrams"].as_u64().unwrap() >= 20, "{stats}");
    // The relay still serves a normal client.
    let mut ok = Client::connect(&connect(r.quic, &r.hash, "fine"))
        .await
        .unwrap();
    ok.request(json!({"type": "publish", "flow": 0, "tracks": [{"kind": "audio", "codec": "opus", "payload_type": 111, "clock_rate": 48000, "channels": 2, "ssrc": 5}]})).await.unwrap();

    // A presentation is marked as one to subscribers too.
    let slides = json!({"kind": "video", "codec": "VP8", "payload_type": 96, "clock_rate": 90000, "ssrc": 21, "content": "slides"});
    let mut show = Client::connect(&connect(r.quic, &r.hash, "show"))
        .await
        .unwrap();
    show.request(json!({"type": "publish", "flow": 0, "tracks": [opus(20), slides]}))
        .await
        .unwrap();
    let mut watch = Client::connect(&connect(r.quic, &r.hash, "show"))
        .await
        .unwrap();
    let reply = watch
        .request(json!({"type": "subscribe", "flow": 0}))
        .await
        .unwrap();
    let content: Vec<_> = reply["tracks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["content"].clone())
        .collect();
    assert_eq!(
        content,
        [serde_json::Value::Null, json!("slides")],
        "{reply}"
    );
}

/// One connection cannot open flows without end, nor send control messages without end: past
/// 64 flows it gets `too_many_flows`, past 20 messages a second `rate_limited` (and nothing is
/// done for those), and a QUIC client counts against the room like any member.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flows_and_control_messages_are_limited_per_connection() {
    let mut config = Config::default();
    config.limits.max_participants_per_room = 200;
    let r = relay_with(config).await;
    let mut publisher = Client::connect(&connect(r.quic, &r.hash, "lim"))
        .await
        .unwrap();
    publisher.request(json!({"type": "publish", "flow": 0, "tracks": [{"kind": "audio", "codec": "opus", "payload_type": 111, "clock_rate": 48000, "channels": 2, "ssrc": 5}]})).await.unwrap();
    let mut c = Client::connect(&connect(r.quic, &r.hash, "lim"))
        .await
        .unwrap();
    // Well under the message rate: 64 subscriptions, then the 65th is one flow too many.
    for flow in 0..65u64 {
        tokio::time::sleep(Duration::from_millis(60)).await;
        let reply = c
            .exchange(
                json!({"type": "subscribe", "flow": flow})
                    .to_string()
                    .as_bytes(),
            )
            .await
            .unwrap();
        if flow < 64 {
            assert_eq!(reply["type"], "subscribed", "flow {flow}: {reply}");
        } else {
            assert_eq!(reply["reason"], "too_many_flows", "{reply}");
        }
    }
    // A burst of 30 messages in well under a second: the ones past 20 are refused.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let join_again = json!({"type": "join", "v": 1, "room": "lim"}).to_string();
    let mut limited = 0;
    for _ in 0..30 {
        let reply = c.exchange(join_again.as_bytes()).await.unwrap();
        match reply["reason"].as_str() {
            Some("rate_limited") => limited += 1,
            Some("already_joined") => {}
            other => panic!("unexpected reply {other:?}: {reply}"),
        }
    }
    assert!((10..=11).contains(&limited), "{limited} of 30 refused");
    // The connection goes on once the second is over.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let reply = c.exchange(join_again.as_bytes()).await.unwrap();
    assert_eq!(reply["reason"], "already_joined", "{reply}");

    // The publisher leaves: its 64 subscriptions end, and their flows are free again (the same
    // numbers, and as many), for a publisher that comes back.
    publisher.conn.close(0u32.into(), b"");
    let subscribe = async |c: &mut Client, flow: u64| {
        tokio::time::sleep(Duration::from_millis(60)).await;
        let msg = json!({"type": "subscribe", "flow": flow}).to_string();
        c.exchange(msg.as_bytes()).await.unwrap()
    };
    let mut gone = false;
    for _ in 0..50 {
        if subscribe(&mut c, 0).await["reason"] == "no_room" {
            gone = true;
            break;
        }
    }
    assert!(gone, "the publisher's leaving is seen");
    let mut back = Client::connect(&connect(r.quic, &r.hash, "lim"))
        .await
        .unwrap();
    back.request(json!({"type": "publish", "flow": 0, "tracks": [{"kind": "audio", "codec": "opus", "payload_type": 111, "clock_rate": 48000, "channels": 2, "ssrc": 6}]})).await.unwrap();
    for flow in 0..64u64 {
        let reply = subscribe(&mut c, flow).await;
        assert_eq!(reply["type"], "subscribed", "flow {flow} again: {reply}");
    }
    // A flow id no datagram can carry is refused.
    let reply = subscribe(&mut back, 1 << 62).await;
    assert_eq!(reply["reason"], "bad_message", "{reply}");
}

/// A connection with its control stream open but no `join` sent.
async fn raw_connection(quic: SocketAddr, hash: &str) -> Client {
    // Joining is part of `connect`; a room name the server refuses leaves the stream unjoined.
    let c = connect(quic, hash, "bad room name");
    match Client::connect(&c).await {
        Err(ClientError::Refused(v)) => assert_eq!(v["reason"], "bad_room"),
        _ => panic!("join with a bad room name must be refused"),
    }
    Client::connect_unjoined(&c).await.unwrap()
}

async fn http_get(addr: SocketAddr, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    out.split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default()
}
