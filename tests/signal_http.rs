//! WHIP/WHEP over real HTTP against a relay started in-process on ephemeral ports: the success
//! path's headers and every bad-input case the signalling must refuse with a reason.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use volna::config::Config;

mod common;

const OFFER: &str = "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\na=group:BUNDLE 0 1\r\n\
m=audio 9 UDP/TLS/RTP/SAVPF 111\r\nc=IN IP4 0.0.0.0\r\na=ice-ufrag:abcd\r\na=ice-pwd:0123456789012345678901\r\n\
a=fingerprint:sha-256 AA:BB:CC\r\na=setup:actpass\r\na=mid:0\r\na=extmap:4 urn:ietf:params:rtp-hdrext:sdes:mid\r\nDIR_A\r\na=rtcp-mux\r\n\
a=rtpmap:111 opus/48000/2\r\na=fmtp:111 minptime=10;useinbandfec=1\r\n\
m=video 9 UDP/TLS/RTP/SAVPF 96\r\nc=IN IP4 0.0.0.0\r\na=ice-ufrag:abcd\r\na=ice-pwd:0123456789012345678901\r\n\
a=fingerprint:sha-256 AA:BB:CC\r\na=setup:actpass\r\na=mid:1\r\nDIR_V\r\na=rtcp-mux\r\na=rtpmap:96 VP8/90000\r\na=rtcp-fb:96 nack pli\r\n";

fn offer(dir: &str) -> String {
    OFFER.replace("DIR_A", dir).replace("DIR_V", dir)
}

struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

async fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    content_type: Option<&str>,
    body: &[u8],
) -> Reply {
    request_with(addr, method, path, content_type, None, body).await
}

async fn request_with(
    addr: SocketAddr,
    method: &str,
    path: &str,
    content_type: Option<&str>,
    bearer: Option<&str>,
    body: &[u8],
) -> Reply {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nOrigin: http://example.test\r\nConnection: close\r\nContent-Length: {}\r\n", body.len());
    if let Some(ct) = content_type {
        req.push_str(&format!("Content-Type: {ct}\r\n"));
    }
    if let Some(t) = bearer {
        req.push_str(&format!("Authorization: Bearer {t}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    // A server may answer (413) before reading the whole body; a failed write is fine then.
    let _ = s.write_all(body).await;
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut raw))
        .await
        .unwrap()
        .unwrap();
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let mut lines = head.lines();
    let status = lines
        .next()
        .unwrap()
        .split_whitespace()
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect();
    Reply {
        status,
        headers,
        body: body.to_owned(),
    }
}

async fn start() -> (SocketAddr, Vec<SocketAddr>) {
    start_with(Config::default()).await
}

async fn start_with(mut config: Config) -> (SocketAddr, Vec<SocketAddr>) {
    config.http.listen = "127.0.0.1:0".parse().unwrap();
    config.media.listen = "127.0.0.1:0".parse().unwrap();
    config.quic.listen = "127.0.0.1:0".parse().unwrap();
    config.http.max_body_bytes = 8192;
    let r = volna::server::start(&config).await.unwrap();
    (r.http_addr, r.media_addrs)
}

#[tokio::test]
async fn whip_and_whep_success_path() {
    let (http, media) = start().await;
    let r = request(
        http,
        "POST",
        "/whip/room1",
        Some("application/sdp"),
        offer("a=sendonly").as_bytes(),
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.body);
    assert_eq!(r.header("content-type"), Some("application/sdp"));
    let location = r.header("location").unwrap().to_owned();
    assert!(location.starts_with("/whip/room1/session/"), "{location}");
    assert_eq!(r.header("access-control-allow-origin"), Some("*"));
    assert!(r
        .header("access-control-expose-headers")
        .unwrap()
        .contains("Location"));
    assert!(r.body.contains("a=ice-lite\r\n"));
    let candidate = candidate_port(&r.body);
    assert!(
        media.iter().any(|m| m.port() == candidate),
        "candidate port {candidate} is one of the workers' {media:?}"
    );
    assert!(r.body.contains("a=recvonly\r\n"));
    let publisher = r.header("x-volna-publisher").unwrap().to_owned();
    // Opus in-band FEC passes through: the publisher is told it may send it...
    assert!(
        r.body.contains("a=fmtp:111 minptime=10;useinbandfec=1\r\n"),
        "{}",
        r.body
    );

    let v = request(
        http,
        "POST",
        &format!("/whep/room1/{publisher}"),
        Some("application/sdp"),
        offer("a=recvonly").as_bytes(),
    )
    .await;
    assert_eq!(v.status, 201, "{}", v.body);
    assert!(v.body.contains("a=sendonly\r\n"));
    assert!(
        v.body.contains("a=ssrc:"),
        "viewer answer announces the SSRCs it will receive"
    );
    // ...and the viewer's decoder is told it will come.
    assert!(
        v.body.contains("a=fmtp:111 minptime=10;useinbandfec=1\r\n"),
        "{}",
        v.body
    );
    let latest = request(
        http,
        "POST",
        "/whep/room1",
        Some("application/sdp; charset=utf-8"),
        offer("a=recvonly").as_bytes(),
    )
    .await;
    assert_eq!(latest.status, 201, "{}", latest.body);

    // PATCH (RFC 9725 §4.3): trickled candidates with the same credentials change nothing;
    // new credentials restart ICE and get volna's new ones; bad fragments get 400 with a
    // reason, unknown sessions 404, other media types 415.
    const FRAG: &str = "application/trickle-ice-sdpfrag";
    let patch = |path: String, ct: &'static str, body: &'static str| async move {
        request(http, "PATCH", &path, Some(ct), body.as_bytes()).await
    };
    let trickle = patch(location.clone(), FRAG, "a=ice-ufrag:abcd\r\na=ice-pwd:0123456789012345678901\r\na=candidate:1 1 udp 1 10.0.0.9 9 typ host\r\n").await;
    assert_eq!(trickle.status, 204, "{}", trickle.body);
    let restart = patch(location.clone(), FRAG, "a=ice-ufrag:wxyz\r\na=ice-pwd:ABCDEFGHIJKLMNOPQRSTUVWX\r\nm=audio 9 UDP/TLS/RTP/SAVPF 0\r\na=mid:0\r\n").await;
    assert_eq!(restart.status, 200, "{}", restart.body);
    assert_eq!(restart.header("content-type"), Some(FRAG));
    let old_ufrag = r
        .body
        .split("\r\n")
        .find_map(|l| l.strip_prefix("a=ice-ufrag:"))
        .unwrap();
    let new_ufrag = restart
        .body
        .split("\r\n")
        .find_map(|l| l.strip_prefix("a=ice-ufrag:"))
        .expect("new credentials");
    assert_ne!(old_ufrag, new_ufrag);
    assert!(
        restart.body.contains("a=mid:0\r\n") && restart.body.contains(" typ host\r\n"),
        "{}",
        restart.body
    );
    let again = patch(
        location.clone(),
        FRAG,
        "a=ice-ufrag:wxyz\r\na=ice-pwd:ABCDEFGHIJKLMNOPQRSTUVWX\r\n",
    )
    .await;
    assert_eq!(again.status, 204, "the restart took the new credentials");
    let bad = patch(location.clone(), FRAG, "a=end-of-candidates\r\n").await;
    assert_eq!(bad.status, 400);
    assert!(bad.body.contains("ice-ufrag"), "{}", bad.body);
    let json = patch(location.clone(), "application/json", "{}").await;
    assert_eq!(json.status, 415);
    let unknown = patch(
        "/whip/room1/session/0123456789abcdef".into(),
        FRAG,
        "a=ice-ufrag:wxyz\r\na=ice-pwd:ABCDEFGHIJKLMNOPQRSTUVWX\r\n",
    )
    .await;
    assert_eq!(unknown.status, 404);

    let pre = request(http, "OPTIONS", "/whip/room1", None, b"").await;
    assert_eq!(pre.status, 204);
    assert_eq!(pre.header("accept-post"), Some("application/sdp"));
    assert!(pre
        .header("access-control-allow-methods")
        .unwrap()
        .contains("DELETE"));

    // The WHEP URL cannot end a WHIP session, and each session ends once.
    let wrong = request(
        http,
        "DELETE",
        &location.replace("/whip/", "/whep/"),
        None,
        b"",
    )
    .await;
    assert_eq!(wrong.status, 404);
    assert_eq!(
        request(http, "DELETE", &location, None, b"").await.status,
        200
    );
    assert_eq!(
        request(http, "DELETE", &location, None, b"").await.status,
        404
    );

    // Its viewers were ended with it: the room is gone.
    let stats = request(http, "GET", "/stats", None, b"").await;
    let json: serde_json::Value = serde_json::from_str(&stats.body).unwrap();
    assert_eq!(json["sessions"], 0, "{json}");
    assert_eq!(json["rooms"], 0, "{json}");
}

/// (name, path, content type, body, expected status, text the reason must contain)
type BadCase = (
    &'static str,
    &'static str,
    Option<&'static str>,
    Vec<u8>,
    u16,
    &'static str,
);

/// The port of the answer's host candidate.
fn candidate_port(sdp: &str) -> u16 {
    let line = sdp
        .lines()
        .find(|l| l.starts_with("a=candidate:1 1 udp 2130706431 127.0.0.1 "))
        .unwrap_or_else(|| panic!("no host candidate in {sdp}"));
    line.split(' ')
        .nth(5)
        .and_then(|p| p.parse().ok())
        .expect("port")
}

/// With several workers, rooms spread over them: each room's sessions get its worker's port as
/// their candidate, publisher and viewers alike, and a viewer finds a publisher of its room.
#[tokio::test]
async fn rooms_are_placed_on_workers() {
    let mut config = Config::default();
    config.media.workers = 4;
    let (http, media) = start_with(config).await;
    assert_eq!(media.len(), 4);
    let mut used = std::collections::HashSet::new();
    for i in 0..16 {
        let room = format!("placed{i}");
        let p = request(
            http,
            "POST",
            &format!("/whip/{room}"),
            Some("application/sdp"),
            offer("a=sendonly").as_bytes(),
        )
        .await;
        assert_eq!(p.status, 201, "{}", p.body);
        let v = request(
            http,
            "POST",
            &format!("/whep/{room}"),
            Some("application/sdp"),
            offer("a=recvonly").as_bytes(),
        )
        .await;
        assert_eq!(v.status, 201, "{}", v.body);
        let (pp, vp) = (candidate_port(&p.body), candidate_port(&v.body));
        assert_eq!(pp, vp, "room {room}: publisher and viewer on one worker");
        assert!(media.iter().any(|m| m.port() == pp));
        used.insert(pp);
    }
    assert!(
        used.len() >= 2,
        "16 rooms over 4 workers use more than one: {used:?}"
    );
    let stats = request(http, "GET", "/stats", None, b"").await;
    let json: serde_json::Value = serde_json::from_str(&stats.body).unwrap();
    assert_eq!(json["rooms"], 16, "{json}");
    assert_eq!(json["publishers"], 16, "{json}");
}

#[tokio::test]
async fn bad_input_gets_clear_errors() {
    let (http, media) = start().await;
    let sendonly = offer("a=sendonly");
    let big = vec![b'a'; 20_000];
    let cases: Vec<BadCase> = vec![
        (
            "wrong media type",
            "/whip/r",
            Some("text/plain"),
            sendonly.clone().into_bytes(),
            415,
            "application/sdp",
        ),
        (
            "no media type",
            "/whip/r",
            None,
            sendonly.clone().into_bytes(),
            415,
            "application/sdp",
        ),
        (
            "garbage SDP",
            "/whip/r",
            Some("application/sdp"),
            b"hello world".to_vec(),
            400,
            "bad offer",
        ),
        (
            "not UTF-8",
            "/whip/r",
            Some("application/sdp"),
            vec![0xff, 0xfe, 0x00],
            400,
            "UTF-8",
        ),
        (
            "no fingerprint",
            "/whip/r",
            Some("application/sdp"),
            sendonly
                .replace("a=fingerprint:sha-256 AA:BB:CC\r\n", "")
                .into_bytes(),
            400,
            "fingerprint",
        ),
        (
            "receive-only WHIP offer",
            "/whip/r",
            Some("application/sdp"),
            offer("a=recvonly").into_bytes(),
            400,
            "sends no audio or video",
        ),
        (
            "too large",
            "/whip/r",
            Some("application/sdp"),
            big,
            413,
            "",
        ),
        (
            "bad room name",
            "/whip/no%20spaces",
            Some("application/sdp"),
            sendonly.clone().into_bytes(),
            400,
            "room",
        ),
        (
            "unknown room",
            "/whep/nobody-here",
            Some("application/sdp"),
            offer("a=recvonly").into_bytes(),
            404,
            "room not found",
        ),
        (
            "unknown endpoint",
            "/whatever",
            Some("application/sdp"),
            Vec::new(),
            404,
            "no such endpoint",
        ),
        (
            "unknown session",
            "/whip/r/session/0123",
            None,
            Vec::new(),
            404,
            "session not found",
        ),
    ];
    for (name, path, ct, body, status, reason) in cases {
        let method = if name == "unknown session" {
            "DELETE"
        } else {
            "POST"
        };
        let r = request(http, method, path, ct, &body).await;
        assert_eq!(r.status, status, "{name}: {}", r.body);
        assert!(
            r.body.contains(reason),
            "{name}: body {:?} lacks {reason:?}",
            r.body
        );
    }
    // A publisher exists; WHEP for a publisher id that is not there is 404.
    assert_eq!(
        request(
            http,
            "POST",
            "/whip/r",
            Some("application/sdp"),
            sendonly.as_bytes()
        )
        .await
        .status,
        201
    );
    let r = request(
        http,
        "POST",
        "/whep/r/nosuchpublisher",
        Some("application/sdp"),
        offer("a=recvonly").as_bytes(),
    )
    .await;
    assert_eq!(r.status, 404);
    assert!(r.body.contains("publisher not found"), "{}", r.body);

    // Junk on the media port is counted, and signalling keeps working.
    let udp = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    for junk in [
        &[][..],
        &[0xff; 40][..],
        &[0, 1, 0, 0][..],
        &[22, 0xfe, 0xfd, 1][..],
        &[0x80, 96, 0, 1, 2, 3][..],
    ] {
        udp.send_to(junk, media[0]).await.unwrap();
    }
    let mut counted = 0;
    for _ in 0..50 {
        let s = request(http, "GET", "/stats", None, b"").await;
        let json: serde_json::Value = serde_json::from_str(&s.body).unwrap();
        counted = json["junk_datagrams"].as_u64().unwrap();
        if counted >= 5 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(counted, 5);
    assert_eq!(request(http, "GET", "/health", None, b"").await.status, 200);
    // The same counter for Prometheus.
    let m = request(http, "GET", "/metrics", None, b"").await;
    assert_eq!(m.status, 200);
    assert!(
        m.body
            .contains("# TYPE volna_junk_datagrams_total counter\nvolna_junk_datagrams_total 5\n"),
        "{}",
        m.body
    );
    assert!(m.body.contains("\nvolna_publishers 1\n"), "{}", m.body);
}

#[tokio::test]
async fn silent_sessions_are_closed_after_the_consent_timeout() {
    let mut config = Config::default();
    config.media.consent_timeout_secs = 1;
    let (http, _) = start_with(config).await;
    let r = request(
        http,
        "POST",
        "/whip/quiet",
        Some("application/sdp"),
        offer("a=sendonly").as_bytes(),
    )
    .await;
    assert_eq!(r.status, 201);
    let stats = |body: String| serde_json::from_str::<serde_json::Value>(&body).unwrap();
    let s = stats(request(http, "GET", "/stats", None, b"").await.body);
    assert_eq!(s["sessions"], 1);
    // The peer never sends a packet: after the timeout (checked once a second) the session is gone.
    let mut gone = false;
    for _ in 0..40 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let s = stats(request(http, "GET", "/stats", None, b"").await.body);
        if s["sessions"] == 0 && s["rooms"] == 0 && s["sessions_closed"] == 1 {
            gone = true;
            break;
        }
    }
    assert!(gone, "session freed after the consent timeout");
    let location = r.header("location").unwrap();
    assert_eq!(
        request(http, "DELETE", location, None, b"").await.status,
        404
    );
}

#[tokio::test]
async fn whip_and_whep_require_tokens_when_auth_is_on() {
    use volna::signal::auth::{unix_now, Auth, Claims};
    const KEY: &str = "whip-test-key-0123456789";
    let mut config = Config::default();
    config.auth.keys = vec![KEY.into()];
    let (http, _) = start_with(config).await;
    let sign_as = |sub: &str, room: &str, publish: bool, subscribe: bool, exp: u64| {
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
    };
    let sign = |room: &str, publish: bool, subscribe: bool, exp: u64| {
        sign_as("t", room, publish, subscribe, exp)
    };
    let now = unix_now();
    let publisher = sign("a", true, false, now + 60);
    let viewer = sign("a", false, true, now + 60);
    // (name, path, token, body, expected status, text the reason must contain)
    type AuthCase = (
        &'static str,
        &'static str,
        Option<String>,
        String,
        u16,
        &'static str,
    );
    let cases: Vec<AuthCase> = vec![
        (
            "no token",
            "/whip/a",
            None,
            offer("a=sendonly"),
            401,
            "missing token",
        ),
        (
            "expired",
            "/whip/a",
            Some(sign("a", true, true, now - 5)),
            offer("a=sendonly"),
            401,
            "expired",
        ),
        (
            "garbage",
            "/whip/a",
            Some("x.y.z".into()),
            offer("a=sendonly"),
            401,
            "invalid token",
        ),
        (
            "other room",
            "/whip/b",
            Some(publisher.clone()),
            offer("a=sendonly"),
            403,
            "room",
        ),
        (
            "viewer publishing",
            "/whip/a",
            Some(viewer.clone()),
            offer("a=sendonly"),
            403,
            "publishing",
        ),
        (
            "publisher publishing",
            "/whip/a",
            Some(publisher.clone()),
            offer("a=sendonly"),
            201,
            "",
        ),
        (
            "publisher watching",
            "/whep/a",
            Some(publisher.clone()),
            offer("a=recvonly"),
            403,
            "subscribing",
        ),
        (
            "viewer watching",
            "/whep/a",
            Some(viewer.clone()),
            offer("a=recvonly"),
            201,
            "",
        ),
    ];
    for (name, path, token, body, status, reason) in cases {
        let r = request_with(
            http,
            "POST",
            path,
            Some("application/sdp"),
            token.as_deref(),
            body.as_bytes(),
        )
        .await;
        assert_eq!(r.status, status, "{name}: {}", r.body);
        assert!(
            r.body.contains(reason),
            "{name}: {:?} lacks {reason:?}",
            r.body
        );
        if status == 401 {
            assert!(
                r.header("www-authenticate")
                    .is_some_and(|v| v.starts_with("Bearer")),
                "{name}: a 401 says how to authenticate"
            );
        }
    }

    // A session may be ended or restarted only by the identity that made it, or an admin; its
    // URL alone is not enough.
    let made = request_with(
        http,
        "POST",
        "/whep/a",
        Some("application/sdp"),
        Some(&viewer),
        offer("a=recvonly").as_bytes(),
    )
    .await;
    assert_eq!(made.status, 201, "{}", made.body);
    let location = made.header("location").unwrap().to_owned();
    let mallory = sign_as("mallory", "a", true, true, now + 60);
    let admin = Auth::new(vec![KEY.into()])
        .sign(&Claims {
            room: "*".into(),
            sub: "ops".into(),
            publish: false,
            subscribe: false,
            exp: now + 60,
            admin: true,
        })
        .unwrap();
    let frag = "a=ice-ufrag:EsAw\r\na=ice-pwd:0123456789012345678901\r\n";
    let sdpfrag = Some("application/trickle-ice-sdpfrag");
    // (what, method, token, expected status)
    let steps: [(&str, &str, Option<&str>, u16); 5] = [
        ("PATCH without a token", "PATCH", None, 401),
        ("PATCH by another identity", "PATCH", Some(&mallory), 403),
        ("DELETE without a token", "DELETE", None, 401),
        ("DELETE by another identity", "DELETE", Some(&mallory), 403),
        ("DELETE by its creator", "DELETE", Some(&viewer), 200),
    ];
    for (what, method, token, status) in steps {
        let ct = (method == "PATCH").then_some(sdpfrag).flatten();
        let r = request_with(http, method, &location, ct, token, frag.as_bytes()).await;
        assert_eq!(r.status, status, "{what}: {}", r.body);
    }
    // An admin may end anyone's session.
    let made = request_with(
        http,
        "POST",
        "/whip/a",
        Some("application/sdp"),
        Some(&publisher),
        offer("a=sendonly").as_bytes(),
    )
    .await;
    let location = made.header("location").unwrap().to_owned();
    let r = request_with(http, "DELETE", &location, None, Some(&admin), b"").await;
    assert_eq!(r.status, 200, "an admin ends it: {}", r.body);

    // /stats and /metrics (session ids, room names) are for operators only.
    for path in ["/stats", "/metrics"] {
        for (who, token, status) in [
            ("no token", None, 401),
            ("a participant", Some(viewer.as_str()), 403),
            ("an admin", Some(admin.as_str()), 200),
        ] {
            let r = request_with(http, "GET", path, None, token, b"").await;
            assert_eq!(r.status, status, "{path} for {who}: {}", r.body);
        }
    }
}

/// With `pin_workers`, each worker thread may run on one CPU only, and the workers use
/// different CPUs when there are enough.
#[cfg(target_os = "linux")]
#[tokio::test]
async fn pinned_workers_each_run_on_one_cpu() {
    let mut config = Config::default();
    config.media.workers = 2;
    config.media.pin_workers = true;
    let _ = start_with(config).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut cpus = Vec::new();
    for task in std::fs::read_dir("/proc/self/task").unwrap() {
        let dir = task.unwrap().path();
        let comm = std::fs::read_to_string(dir.join("comm")).unwrap_or_default();
        if !comm.starts_with("volna-worker-") {
            continue;
        }
        let status = std::fs::read_to_string(dir.join("status")).unwrap();
        let list = status
            .lines()
            .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
            .unwrap()
            .trim()
            .to_owned();
        // Other tests in this process (under `cargo test`) run unpinned workers too: only the
        // pinned ones are ours.
        if !list.contains(',') && !list.contains('-') {
            cpus.push(list);
        }
    }
    assert!(
        cpus.len() >= 2,
        "both workers pinned to one CPU each: {cpus:?}"
    );
    let available = std::thread::available_parallelism().map_or(1, |n| n.get());
    if available >= 2 {
        cpus.sort();
        cpus.dedup();
        assert!(cpus.len() >= 2, "two workers on two CPUs: {cpus:?}");
    }
}

/// A client that opens connections and sends headers slowly (or never) cannot hold the
/// listener: unfinished headers are cut off after `header_timeout_secs`, and connections past
/// `max_connections` are closed as they arrive; once the slow ones are gone, requests are served.
#[tokio::test]
async fn slow_headers_are_cut_off_and_connections_are_capped() {
    let mut config = Config::default();
    config.http.header_timeout_secs = 1;
    config.http.max_connections = 4;
    let (http, _) = start_with(config).await;
    let mut slow = Vec::new();
    for _ in 0..4 {
        let mut s = TcpStream::connect(http).await.unwrap();
        s.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n")
            .await
            .unwrap();
        slow.push(s);
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    // A fifth connection is closed without an answer.
    let mut extra = TcpStream::connect(http).await.unwrap();
    let _ = extra
        .write_all(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await;
    let mut buf = Vec::new();
    let n = tokio::time::timeout(Duration::from_secs(2), extra.read_to_end(&mut buf))
        .await
        .expect("closed at once, not left waiting");
    assert!(
        n.is_err() || buf.is_empty(),
        "no answer past the cap: {:?}",
        String::from_utf8_lossy(&buf)
    );
    // The slow ones are closed within about the header timeout.
    let started = std::time::Instant::now();
    for s in &mut slow {
        let mut buf = Vec::new();
        let r = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut buf)).await;
        assert!(r.is_ok(), "unfinished headers are cut off");
        assert!(!String::from_utf8_lossy(&buf).contains("200 OK"));
    }
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    // And the listener serves again.
    assert_eq!(request(http, "GET", "/health", None, b"").await.status, 200);
}

/// A relay bound to the wildcard address advertises the addresses `media.advertise` names, each
/// with the worker's bound port, in order; a client that checks connectivity at the first gets
/// its answer from the wildcard-bound socket.
#[tokio::test]
async fn advertised_addresses_are_the_candidates() {
    let mut config = Config::default();
    config.http.listen = "127.0.0.1:0".parse().unwrap();
    config.media.listen = "0.0.0.0:0".parse().unwrap();
    config.media.advertise = vec!["127.0.0.1".into(), "::1".into()];
    config.media.workers = 1;
    config.quic.enabled = false;
    let running = volna::server::start(&config).await.unwrap();
    assert!(running.media_addr.ip().is_unspecified());
    let port = running.media_addr.port();
    let r = request(
        running.http_addr,
        "POST",
        "/whip/room1",
        Some("application/sdp"),
        offer("a=sendonly").as_bytes(),
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.body);
    let candidates: Vec<&str> = r
        .body
        .lines()
        .filter(|l| l.starts_with("a=candidate:"))
        .take(2)
        .collect();
    assert_eq!(
        candidates,
        [
            format!("a=candidate:1 1 udp 2130706431 127.0.0.1 {port} typ host"),
            format!("a=candidate:2 1 udp 2130706430 ::1 {port} typ host"),
        ],
        "{}",
        r.body
    );
    assert!(r.body.contains("c=IN IP4 127.0.0.1\r\n"), "{}", r.body);
    // An ICE check at the first candidate is answered.
    let attr = |name: &str| {
        r.body
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .unwrap()
            .trim()
            .to_owned()
    };
    let (ufrag, pwd) = (attr("a=ice-ufrag:"), attr("a=ice-pwd:"));
    let client = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let check = common::binding_request(&format!("{ufrag}:abcd"), &pwd);
    client.send_to(&check, ("127.0.0.1", port)).await.unwrap();
    let mut buf = [0u8; 1500];
    let (n, from) = tokio::time::timeout(Duration::from_secs(2), client.recv_from(&mut buf))
        .await
        .expect("an answer to the check")
        .unwrap();
    assert_eq!(from.port(), port);
    assert_eq!(
        &buf[..2],
        &[0x01, 0x01],
        "a Binding success response ({n} bytes)"
    );
}
