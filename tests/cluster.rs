//! Nodes as one cluster, each a real `volna` process, sharing a real Debian `redis-server` that
//! the test starts on loopback: membership and load in `GET /cluster`, a node killed with
//! SIGKILL gone for the others within the TTL, rooms in the directory, drain (HTTP and
//! SIGTERM) with redirects and the exit after the last call, a Redis outage refusing new
//! sessions while calls go on and re-registration when it is back, overload redirects.

mod common;

use std::net::{SocketAddr, TcpListener};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::ws::{connect, expect_type, http, join, recv, send, OFFER};
use serde_json::{json, Value};

/// A free loopback TCP port (bound and let go; the caller binds it next).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct Redis {
    port: u16,
    child: Option<Child>,
}

impl Redis {
    fn start() -> Self {
        let mut r = Redis {
            port: free_port(),
            child: None,
        };
        r.restart();
        r
    }

    /// Starts (again) on the same port, empty, and waits until it answers.
    fn restart(&mut self) {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string()])
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server (Debian package redis-server; scripts/test.sh installs it)");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill().ok();
            c.wait().ok();
        }
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    async fn members(&self, key: &str) -> Vec<String> {
        let client = redis::Client::open(self.url()).unwrap();
        let mut c = client.get_multiplexed_async_connection().await.unwrap();
        let mut m: Vec<String> = redis::cmd("SMEMBERS")
            .arg(key)
            .query_async(&mut c)
            .await
            .unwrap();
        m.sort();
        m
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.stop();
    }
}

struct Node {
    http: SocketAddr,
    /// The relay-link (QUIC) address.
    relay: SocketAddr,
    child: Child,
}

impl Node {
    fn start(redis: &Redis, id: &str, env: &[(&str, &str)]) -> Self {
        let http: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let relay = std::net::UdpSocket::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_volna"));
        cmd.args(["--redis", &redis.url(), "--node-id", id])
            .args(["--http", &http.to_string(), "--relay", &relay.to_string()])
            .args(["--media", "127.0.0.1:0", "--quic", "127.0.0.1:0"])
            .env("VOLNA_CLUSTER_HEARTBEAT_MS", "500")
            .env("VOLNA_CLUSTER_NODE_TTL_MS", "2000")
            .stdout(Stdio::null())
            .stderr(if std::env::var_os("VOLNA_LOG").is_some() {
                Stdio::inherit()
            } else {
                Stdio::null()
            });
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(http).is_err() {
            assert!(Instant::now() < deadline, "node {id} did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        Node { http, relay, child }
    }

    fn signal(&self, sig: libc::c_int) {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.child.id() as libc::pid_t, sig) };
    }

    /// Waits up to `within` for the process to end; its exit code.
    fn exit_code(&mut self, within: Duration) -> Option<i32> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s.code();
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    async fn cluster(&self) -> Value {
        let (status, _, raw) = http(self.http, "GET", "/cluster", "").await;
        assert_eq!(status, 200, "{raw}");
        serde_json::from_str(raw.split("\r\n\r\n").nth(1).unwrap()).unwrap()
    }

    async fn live(&self) -> Vec<String> {
        let c = self.cluster().await;
        c["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n["id"].as_str().unwrap().to_owned())
            .collect()
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.child.kill().ok();
        self.child.wait().ok();
    }
}

/// Polls `f` every 50 ms until it holds, for at most `within`; the time it took.
async fn until<F, Fut>(within: Duration, what: &str, mut f: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    loop {
        if f().await {
            return start.elapsed();
        }
        assert!(start.elapsed() < within, "{what}: not within {within:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn whip(node: &Node, room: &str) -> (u16, String, String) {
    http(node.http, "POST", &format!("/whip/{room}"), OFFER).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_register_show_load_and_a_killed_node_is_gone_within_the_ttl() {
    let redis = Redis::start();
    let n1 = Node::start(&redis, "n1", &[]);
    let n2 = Node::start(&redis, "n2", &[]);
    let n3 = Node::start(&redis, "n3", &[]);
    let all = ["n1", "n2", "n3"];
    until(Duration::from_secs(5), "three nodes seen", || async {
        n1.live().await == all
    })
    .await;
    // One room with participants on two nodes: the directory says so on both.
    let mut a = connect(n1.http, "").await;
    assert_eq!(join(&mut a, "span", "a", None).await["type"], "joined");
    let mut b = connect(n2.http, "").await;
    let joined = join(&mut b, "span", "b", None).await;
    assert_eq!(joined["type"], "joined");
    // Its fallbacks are the other accepting nodes' room-protocol URLs.
    let fallbacks: Vec<&str> = joined["fallbacks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(
        fallbacks,
        [
            format!("ws://{}/rtc", n1.http),
            format!("ws://{}/rtc", n3.http)
        ]
    );
    until(Duration::from_secs(3), "room on n1 and n2", || async {
        n1.cluster().await["rooms"] == json!([{"room": "span", "nodes": ["n1", "n2"]}])
    })
    .await;
    assert_eq!(redis.members("volna:room:span").await, ["n1", "n2"]);
    let view = n2.cluster().await;
    assert_eq!(view["node"]["id"], "n2");
    assert_eq!(view["node"]["load"]["participants"], 1);
    assert_eq!(view["node"]["load"]["rooms"], 1);
    assert_eq!(view["redis"]["connected"], true);
    assert_eq!(view["node"]["http"], n2.http.to_string());

    n3.signal(libc::SIGKILL);
    let gone = until(Duration::from_secs(4), "n3 gone", || async {
        n1.live().await == ["n1", "n2"] && n2.live().await == ["n1", "n2"]
    })
    .await;
    println!("a killed node was dropped by the others after {gone:?} (TTL 2 s)");
    // Whoever read it first removed the stale member.
    until(Duration::from_secs(2), "no stale member", || async {
        redis.members("volna:nodes").await == ["n1", "n2"]
    })
    .await;
    // The room's participants on the other nodes carry on.
    send(&mut a, json!({"type": "leave", "id": 9})).await;
    assert_eq!(recv(&mut a).await["type"], "ok");
    until(Duration::from_secs(3), "room only on n2", || async {
        n2.cluster().await["rooms"] == json!([{"room": "span", "nodes": ["n2"]}])
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_redirects_new_sessions_keeps_calls_and_exits_when_they_end() {
    let redis = Redis::start();
    let mut n1 = Node::start(&redis, "n1", &[]);
    let n2 = Node::start(&redis, "n2", &[]);
    until(Duration::from_secs(5), "both nodes seen", || async {
        n1.live().await == ["n1", "n2"]
    })
    .await;
    let mut call = connect(n1.http, "").await;
    assert_eq!(join(&mut call, "r", "stays", None).await["type"], "joined");
    let (ready, _, _) = http(n1.http, "GET", "/health/ready", "").await;
    assert_eq!(ready, 200);

    let (status, _, body) = http(n1.http, "POST", "/admin/drain", "").await;
    assert_eq!(status, 202, "{body}");
    // At once: not ready, new WHIP and joins sent to n2, liveness still fine.
    let (ready, _, _) = http(n1.http, "GET", "/health/ready", "").await;
    assert_eq!(ready, 503);
    let (live, _, _) = http(n1.http, "GET", "/health", "").await;
    assert_eq!(live, 200);
    let (status, location, raw) = whip(&n1, "r").await;
    assert_eq!(status, 307, "{raw}");
    assert_eq!(location, format!("http://{}/whip/r", n2.http));
    let (status, location, _) = http(n1.http, "POST", "/whep/r/someone?x=1", OFFER).await;
    assert_eq!(status, 307);
    assert_eq!(location, format!("http://{}/whep/r/someone?x=1", n2.http));
    let mut late = connect(n1.http, "").await;
    let m = join(&mut late, "r", "late", None).await;
    assert_eq!(m["type"], "redirect", "{m}");
    assert_eq!(m["url"], format!("ws://{}/rtc", n2.http));
    assert_eq!(m["node"], "n2");
    assert_eq!(m["id"], 1);
    // A resume secret that takes back nobody is a new join: redirected too.
    let mut bogus = connect(n1.http, "").await;
    send(
        &mut bogus,
        json!({"type": "join", "v": 1, "room": "r", "name": "x", "id": 1, "resume": "not-a-secret"}),
    )
    .await;
    assert_eq!(recv(&mut bogus).await["type"], "redirect");
    // Following the redirect works.
    let mut moved = connect(n2.http, "").await;
    assert_eq!(join(&mut moved, "r", "late", None).await["type"], "joined");
    // The others see n1 draining within a beat, and do not list it as a fallback.
    until(Duration::from_secs(3), "n2 sees n1 draining", || async {
        let v = n2.cluster().await;
        v["nodes"][0]["id"] == "n1" && v["nodes"][0]["draining"] == true
    })
    .await;
    // The call in progress goes on: the participant still acts in its room.
    send(&mut call, json!({"type": "ping", "id": 5})).await;
    expect_type(&mut call, "pong").await;
    assert_eq!(
        n1.exit_code(Duration::from_millis(500)),
        None,
        "exited with a call in progress"
    );
    // The last call ends: the node exits 0 and takes itself out of Redis.
    send(&mut call, json!({"type": "leave", "id": 6})).await;
    assert_eq!(n1.exit_code(Duration::from_secs(3)), Some(0));
    assert_eq!(redis.members("volna:nodes").await, ["n2"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_and_a_second_sigterm_exits_at_once() {
    let redis = Redis::start();
    let mut n1 = Node::start(&redis, "n1", &[]);
    until(Duration::from_secs(5), "registered", || async {
        n1.live().await == ["n1"]
    })
    .await;
    let mut call = connect(n1.http, "").await;
    assert_eq!(join(&mut call, "r", "a", None).await["type"], "joined");
    n1.signal(libc::SIGTERM);
    until(Duration::from_secs(2), "not ready", || async {
        http(n1.http, "GET", "/health/ready", "").await.0 == 503
    })
    .await;
    // Alone and draining: nowhere to send a new session.
    let (status, _, raw) = whip(&n1, "r").await;
    assert_eq!(status, 503, "{raw}");
    assert!(raw.contains("draining"), "{raw}");
    assert!(raw.to_ascii_lowercase().contains("retry-after: 2"), "{raw}");
    assert_eq!(n1.exit_code(Duration::from_millis(500)), None);
    n1.signal(libc::SIGTERM);
    assert_eq!(n1.exit_code(Duration::from_secs(2)), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_outage_refuses_new_sessions_keeps_calls_and_nodes_come_back() {
    let mut redis = Redis::start();
    let n1 = Node::start(&redis, "n1", &[]);
    let n2 = Node::start(&redis, "n2", &[]);
    until(Duration::from_secs(5), "both nodes seen", || async {
        n1.live().await == ["n1", "n2"]
    })
    .await;
    let mut call = connect(n1.http, "").await;
    assert_eq!(join(&mut call, "r", "a", None).await["type"], "joined");
    let mut other = connect(n2.http, "").await;
    assert_eq!(join(&mut other, "r", "b", None).await["type"], "joined");

    redis.stop();
    let noticed = until(Duration::from_secs(3), "WHIP refused", || async {
        whip(&n1, "r").await.0 == 503
    })
    .await;
    println!("new sessions refused {noticed:?} after Redis stopped");
    // n2 notices at its own next heartbeat.
    until(Duration::from_secs(3), "WHIP refused on n2", || async {
        let (status, _, raw) = whip(&n2, "r").await;
        status == 503 && raw.contains("cluster_unavailable")
    })
    .await;
    let mut refused = connect(n1.http, "").await;
    let m = join(&mut refused, "r", "c", None).await;
    assert_eq!(
        (m["type"].as_str(), m["code"].as_u64()),
        (Some("error"), Some(503)),
        "{m}"
    );
    assert_eq!(n1.cluster().await["redis"]["connected"], false);
    // Calls in progress go on without Redis.
    send(&mut call, json!({"type": "ping", "id": 5})).await;
    expect_type(&mut call, "pong").await;
    send(&mut other, json!({"type": "ping", "id": 5})).await;
    expect_type(&mut other, "pong").await;

    // Back (empty, as after a Redis restart): both nodes register again by themselves.
    redis.restart();
    let back = until(Duration::from_secs(5), "re-registered", || async {
        redis.members("volna:nodes").await == ["n1", "n2"]
    })
    .await;
    println!("nodes re-registered {back:?} after Redis came back");
    until(Duration::from_secs(3), "WHIP taken", || async {
        whip(&n1, "r").await.0 == 201
    })
    .await;
    let mut again = connect(n2.http, "").await;
    assert_eq!(join(&mut again, "r", "c", None).await["type"], "joined");
    assert_eq!(redis.members("volna:room:r").await, ["n1", "n2"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_over_its_session_limit_redirects_to_the_least_loaded() {
    let redis = Redis::start();
    let n1 = Node::start(&redis, "n1", &[("VOLNA_CLUSTER_MAX_SESSIONS", "1")]);
    let n2 = Node::start(&redis, "n2", &[]);
    let n3 = Node::start(&redis, "n3", &[("VOLNA_CLUSTER_REGION", "far")]);
    until(Duration::from_secs(5), "three nodes seen", || async {
        n1.live().await == ["n1", "n2", "n3"]
    })
    .await;
    let (status, _, raw) = whip(&n1, "r").await;
    assert_eq!(status, 201, "{raw}");
    // The next beat counts the session: n1 is full and sends the next to n2 (n3 is in
    // another region).
    until(Duration::from_secs(3), "n1 full", || async {
        n1.cluster().await["node"]["accepting"] == false
    })
    .await;
    let (status, location, _) = whip(&n1, "r").await;
    assert_eq!(status, 307);
    assert_eq!(location, format!("http://{}/whip/r", n2.http));
    assert_eq!(n3.cluster().await["node"]["region"], "far");
}

#[test]
fn bad_cluster_settings_exit_2_naming_them() {
    let run = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_volna"))
            .args(args)
            .args(["--media", "127.0.0.1:0", "--quic", "127.0.0.1:0"])
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let cases: [(&[&str], &str); 3] = [
        (&["--redis", "nonsense://x"], "cluster.redis"),
        (
            &["--redis", "redis://127.0.0.1:1", "--node-id", "a b"],
            "node_id",
        ),
        (
            &["--redis", "redis://127.0.0.1:1", "--http", "0.0.0.0:0"],
            "advertise_http",
        ),
    ];
    for (args, want) in cases {
        let (code, err) = run(args);
        assert_eq!(code, Some(2), "{args:?}: {err}");
        assert!(err.contains(want), "{args:?}: {err}");
    }
}

/// The first message of `type` on `ws` within `within`, skipping others.
async fn event(ws: &mut common::ws::Ws, t: &str, within: Duration) -> Value {
    tokio::time::timeout(within, expect_type(ws, t))
        .await
        .unwrap_or_else(|_| panic!("{t} within {within:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_room_spans_nodes_over_a_relay_link() {
    let redis = Redis::start();
    let n1 = Node::start(&redis, "n1", &[]);
    let n2 = Node::start(&redis, "n2", &[]);
    let n3 = Node::start(&redis, "n3", &[]);
    until(Duration::from_secs(5), "three nodes seen", || async {
        n1.live().await == ["n1", "n2", "n3"]
    })
    .await;
    let mut b = connect(n2.http, "").await;
    assert_eq!(join(&mut b, "span", "b", None).await["type"], "joined");
    let (status, whip_session, raw) = whip(&n1, "span").await;
    assert_eq!(status, 201, "{raw}");
    let publisher = raw
        .lines()
        .find_map(|l| l.strip_prefix("x-volna-publisher: "))
        .unwrap()
        .trim()
        .to_owned();
    // n2's participant sees n1's publisher join, under the same id, with its two tracks.
    let started = Instant::now();
    let joined = event(&mut b, "participant_joined", Duration::from_secs(6)).await;
    println!(
        "a publisher on n1 reached n2's room after {:?}",
        started.elapsed()
    );
    let p = &joined["participant"];
    assert_eq!(p["id"], publisher.as_str(), "{joined}");
    assert_eq!(p["identity"], "whip");
    assert_eq!(p["tracks"].as_array().unwrap().len(), 2, "{joined}");
    let links = n1.cluster().await["links"].clone();
    assert_eq!(links[0]["peer"], "n2", "{links}");
    assert_eq!(links[0]["rooms"], json!(["span"]), "{links}");
    let (_, _, metrics) = http(n1.http, "GET", "/metrics", "").await;
    for line in [
        "volna_cluster_nodes 3\n",
        "volna_cluster_store_up 1\n",
        "volna_relay_link_rtt_seconds{peer=\"n2\"} ",
        "volna_relay_link_bytes_total{peer=\"n2\",direction=\"sent\"} ",
    ] {
        assert!(metrics.contains(line), "{line} in {metrics}");
    }
    // WHEP on a node with nobody in the room: the publisher is relayed there on demand, and
    // the request may name it by its id on n1.
    let watch = OFFER.replace("a=sendonly", "a=recvonly");
    let (status, location, raw) =
        http(n3.http, "POST", &format!("/whep/span/{publisher}"), &watch).await;
    assert_eq!(status, 201, "{raw}");
    assert!(location.starts_with("/whep/span/session/"), "{location}");
    // The publisher leaves n1: it leaves n2's room too.
    let (status, _, raw) = http(n1.http, "DELETE", &whip_session, "").await;
    assert_eq!(status, 200, "{raw}");
    let left = event(&mut b, "participant_left", Duration::from_secs(4)).await;
    assert_eq!(left["participant"], publisher.as_str(), "{left}");
}

/// A QUIC connection to a node's relay endpoint, its control stream opened, and the
/// connection's exported keying material (what a hello's MAC covers).
async fn relay_client(
    relay: SocketAddr,
) -> (
    quinn::Connection,
    quinn::SendStream,
    quinn::RecvStream,
    Vec<u8>,
) {
    use volna::transport::quic::endpoint::RELAY_ALPN;
    let mut ep = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    let mut config = volna::transport::quic::pin::client_config(None, RELAY_ALPN).unwrap();
    config.transport_config(volna::cluster::links::transport());
    ep.set_default_client_config(config);
    let conn = ep.connect(relay, "volna").unwrap().await.unwrap();
    let (send, recv) = conn.open_bi().await.unwrap();
    let ex = volna::cluster::link::exported(&conn);
    (conn, send, recv, ex)
}

/// How the node ended the connection: its application close code.
async fn closed_with(conn: &quinn::Connection) -> u64 {
    match tokio::time::timeout(Duration::from_secs(8), conn.closed()).await {
        Ok(quinn::ConnectionError::ApplicationClosed(c)) => c.error_code.into_inner(),
        other => panic!("closed by the application within 8 s, not {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_links_refuse_strangers_and_junk_closes_only_that_link() {
    use volna::cluster::link::{self, Message};
    let redis = Redis::start();
    let n1 = Node::start(&redis, "n1", &[]);
    let n2 = Node::start(&redis, "n2", &[]);
    let mut b = connect(n2.http, "").await;
    assert_eq!(join(&mut b, "span", "b", None).await["type"], "joined");
    assert_eq!(whip(&n1, "span").await.0, 201);
    event(&mut b, "participant_joined", Duration::from_secs(8)).await;

    // Without the secret: a hello whose MAC is made with another one.
    let (conn, mut tx, _rx, ex) = relay_client(n1.relay).await;
    let hello = Message::Hello {
        v: 1,
        node: "intruder".into(),
        mac: link::mac("not-the-cluster-secret", "dialer", "intruder", "n1", &ex),
    };
    assert!(link::send(&mut tx, &hello).await);
    assert_eq!(
        closed_with(&conn).await,
        u64::from(link::CLOSE_UNAUTHORIZED)
    );
    // A MAC made for another connection (replayed) is refused as well.
    let (conn2, mut tx2, _rx2, _) = relay_client(n1.relay).await;
    let replayed = Message::Hello {
        v: 1,
        node: "intruder".into(),
        mac: link::mac(
            volna::config::DEV_CLUSTER_SECRET,
            "dialer",
            "intruder",
            "n1",
            &ex,
        ),
    };
    assert!(link::send(&mut tx2, &replayed).await);
    assert_eq!(
        closed_with(&conn2).await,
        u64::from(link::CLOSE_UNAUTHORIZED)
    );
    // Silence: no hello at all.
    let (conn3, _tx3, _rx3, _) = relay_client(n1.relay).await;
    assert_eq!(
        closed_with(&conn3).await,
        u64::from(link::CLOSE_UNAUTHORIZED)
    );
    until(Duration::from_secs(2), "refusals counted", || async {
        n1.cluster().await["links_refused"] == 3
    })
    .await;

    // With the secret, then junk on the control stream: that link only is closed.
    let (conn, mut tx, mut rx, ex) = relay_client(n1.relay).await;
    let secret = volna::config::DEV_CLUSTER_SECRET;
    let hello = Message::Hello {
        v: 1,
        node: "t1".into(),
        mac: link::mac(secret, "dialer", "t1", "n1", &ex),
    };
    assert!(link::send(&mut tx, &hello).await);
    match link::recv(&mut rx).await.unwrap() {
        Some(Message::Welcome { node, mac }) => {
            assert_eq!(node, "n1");
            assert!(link::mac_ok(
                &mac,
                &link::mac(secret, "acceptor", "n1", "t1", &ex)
            ));
        }
        other => panic!("welcome, not {other:?}"),
    }
    tx.write_all(&[0x05, b'j', b'u', b'n', b'k', b'!'])
        .await
        .unwrap();
    assert_eq!(closed_with(&conn).await, u64::from(link::CLOSE_PROTOCOL));
    // n1 and n2 still relay: n2's participant still has n1's publisher, and a ping answers.
    let links = n1.cluster().await["links"].clone();
    assert!(
        links.as_array().unwrap().iter().any(|l| l["peer"] == "n2"),
        "{links}"
    );
    send(&mut b, json!({"type": "ping", "id": 7})).await;
    loop {
        let next = recv(&mut b).await;
        assert_ne!(next["type"], "participant_left", "{next}");
        if next["type"] == "pong" {
            break;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_participants_mute_reaches_the_other_nodes() {
    let redis = Redis::start();
    let n1 = Node::start(&redis, "n1", &[]);
    let n2 = Node::start(&redis, "n2", &[]);
    let mut a = connect(n1.http, "").await;
    let joined = join(&mut a, "m", "Ann", None).await;
    let me = joined["participant"]["id"].as_str().unwrap().to_owned();
    let mut b = connect(n2.http, "").await;
    assert_eq!(join(&mut b, "m", "Bob", None).await["type"], "joined");
    send(&mut a, json!({"type": "publish", "id": 2, "sdp": OFFER})).await;
    expect_type(&mut a, "publish_answer").await;
    // Bob sees Ann (by name) with her two tracks, relayed from n1.
    let seen = event(&mut b, "participant_joined", Duration::from_secs(8)).await;
    let relayed = seen["participant"]["id"].as_str().unwrap().to_owned();
    assert_eq!(seen["participant"]["name"], "Ann", "{seen}");
    assert_eq!(seen["participant"]["tracks"][0]["muted"], false, "{seen}");
    // Ann mutes her microphone on n1: Bob's room shows it within a second or so.
    send(
        &mut a,
        json!({"type": "mute", "id": 3, "track": format!("{me}-0"), "muted": true}),
    )
    .await;
    let started = Instant::now();
    let m = event(&mut b, "mute", Duration::from_secs(3)).await;
    println!("a mute on n1 reached n2 after {:?}", started.elapsed());
    assert_eq!(m["track"], format!("{relayed}-0"), "{m}");
    assert_eq!(m["muted"], true, "{m}");
    send(
        &mut a,
        json!({"type": "mute", "id": 4, "track": format!("{me}-0"), "muted": false}),
    )
    .await;
    let m = event(&mut b, "mute", Duration::from_secs(3)).await;
    assert_eq!(
        (m["track"].as_str(), m["muted"].as_bool()),
        (Some(format!("{relayed}-0").as_str()), Some(false)),
        "{m}"
    );
}
