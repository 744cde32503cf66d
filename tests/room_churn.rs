//! Room churn over the real room protocol: participants join, leave, republish and change tracks
//! in every order while each subscriber answers volna's offers the way a JSEP browser applies
//! them. The answerer refuses what a browser refuses: no BUNDLE group, a tag line that is stopped
//! or moves (the transport would restart), an m-line whose mid changes without having been
//! stopped first (only stopped lines may be recycled), a line whose kind changes, fewer m-lines
//! than before. The browser end of this is in tests/browser/churn.test.mjs.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use volna::config::Config;

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

const OFFER: &str = "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\na=group:BUNDLE 0 1\r\n\
m=audio 9 UDP/TLS/RTP/SAVPF 111\r\nc=IN IP4 0.0.0.0\r\na=ice-ufrag:abcd\r\na=ice-pwd:0123456789012345678901\r\n\
a=fingerprint:sha-256 AA:BB:CC\r\na=setup:actpass\r\na=mid:0\r\na=sendonly\r\na=rtcp-mux\r\n\
a=rtpmap:111 opus/48000/2\r\na=fmtp:111 minptime=10;useinbandfec=1\r\n\
m=video 9 UDP/TLS/RTP/SAVPF 96\r\nc=IN IP4 0.0.0.0\r\na=ice-ufrag:abcd\r\na=ice-pwd:0123456789012345678901\r\n\
a=fingerprint:sha-256 AA:BB:CC\r\na=setup:actpass\r\na=mid:1\r\na=sendonly\r\na=rtcp-mux\r\na=rtpmap:96 VP8/90000\r\na=rtcp-fb:96 nack pli\r\n";

/// An m-line as the answerer sees it.
#[derive(Debug, Clone, PartialEq)]
struct Line {
    kind: String,
    mid: String,
    stopped: bool,
    sends: bool,
}

fn parse_offer(sdp: &str) -> (Vec<String>, Vec<Line>) {
    let mut group = Vec::new();
    let mut lines: Vec<Line> = Vec::new();
    for l in sdp.split("\r\n") {
        if let Some(g) = l.strip_prefix("a=group:BUNDLE ") {
            group = g.split(' ').map(str::to_owned).collect();
        } else if let Some(m) = l.strip_prefix("m=") {
            let mut parts = m.split(' ');
            lines.push(Line {
                kind: parts.next().unwrap().to_owned(),
                stopped: parts.next() == Some("0"),
                mid: String::new(),
                sends: false,
            });
        } else if let Some(mid) = l.strip_prefix("a=mid:") {
            lines.last_mut().unwrap().mid = mid.to_owned();
        } else if l == "a=sendonly" {
            lines.last_mut().unwrap().sends = true;
        }
    }
    (group, lines)
}

/// One participant: its socket and what its receiving connection has applied.
struct Peer {
    name: &'static str,
    ws: Ws,
    id: String,
    applied: Vec<Line>,
    tag: Option<String>,
    /// Track ids the receiving connection carries now (from the last applied offer).
    receiving: Vec<String>,
    /// The most tracks it ever received at once.
    peak: usize,
    offers: usize,
    last_offer: String,
    publish_answer: String,
    /// Answer offers at once (a browser); when off, offers queue in `held`.
    answering: bool,
    held: Vec<Value>,
}

impl Peer {
    async fn join(addr: SocketAddr, room: &str, name: &'static str) -> Peer {
        let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/rtc"))
            .await
            .unwrap();
        let m = json!({"type": "join", "v": 1, "room": room, "name": name, "id": 0});
        ws.send(Message::Text(m.to_string().into())).await.unwrap();
        let mut p = Peer {
            name,
            ws,
            id: String::new(),
            applied: Vec::new(),
            tag: None,
            receiving: Vec::new(),
            peak: 0,
            offers: 0,
            last_offer: String::new(),
            publish_answer: String::new(),
            answering: true,
            held: Vec::new(),
        };
        let joined = p.until("joined").await;
        p.id = joined["participant"]["id"].as_str().unwrap().to_owned();
        p
    }

    async fn send(&mut self, v: Value) {
        self.ws
            .send(Message::Text(v.to_string().into()))
            .await
            .unwrap();
    }

    async fn publish(&mut self) {
        self.send(json!({"type": "publish", "id": 1, "sdp": OFFER}))
            .await;
        let a = self.until("publish_answer").await;
        self.publish_answer = a["sdp"].as_str().unwrap().to_owned();
    }

    async fn leave(mut self) {
        self.send(json!({"type": "leave", "id": 9})).await;
        let _ = self.ws.close(None).await;
    }

    /// The next message within `wait`, offers answered on the way (or held).
    async fn next(&mut self, wait: Duration) -> Option<Value> {
        loop {
            let m = tokio::time::timeout(wait, self.ws.next())
                .await
                .ok()??
                .ok()?;
            let Message::Text(t) = m else { continue };
            let v: Value = serde_json::from_str(&t).unwrap();
            match v["type"].as_str() {
                Some("offer") if self.answering => self.apply(&v).await,
                Some("offer") => self.held.push(v.clone()),
                Some("error") if v["id"].is_null() => {
                    panic!("{}: error from the server: {v}", self.name)
                }
                _ => {}
            }
            return Some(v);
        }
    }

    async fn until(&mut self, t: &str) -> Value {
        loop {
            let v = self
                .next(Duration::from_secs(5))
                .await
                .unwrap_or_else(|| panic!("{}: no {t} within 5 s", self.name));
            if v["type"] == t {
                return v;
            }
        }
    }

    /// Handles whatever arrives until the socket is quiet for 200 ms.
    async fn settle(&mut self) {
        while self.next(Duration::from_millis(200)).await.is_some() {}
    }

    /// Applies an offer as a JSEP browser would, or panics with what a browser would say.
    async fn apply(&mut self, offer: &Value) {
        let sdp = offer["sdp"].as_str().unwrap();
        let (group, lines) = parse_offer(sdp);
        let who = self.name;
        assert!(
            !group.is_empty(),
            "{who}: max-bundle is used but no bundle group found\n{sdp}"
        );
        let tag = lines
            .iter()
            .find(|l| l.mid == group[0])
            .unwrap_or_else(|| panic!("{who}: BUNDLE tag {} has no m-line", group[0]));
        assert!(!tag.stopped, "{who}: the BUNDLE tag is stopped\n{sdp}");
        if let Some(old) = &self.tag {
            assert_eq!(
                old, &group[0],
                "{who}: the BUNDLE tag moved (transport restart)"
            );
        }
        for l in lines.iter().filter(|l| l.stopped) {
            assert!(
                !group.contains(&l.mid),
                "{who}: stopped {} in BUNDLE",
                l.mid
            );
        }
        assert!(
            lines.len() >= self.applied.len(),
            "{who}: m-lines removed\n{sdp}"
        );
        for (old, new) in self.applied.iter().zip(&lines) {
            if old.mid != new.mid {
                assert!(
                    old.stopped,
                    "{who}: mid {} became {} without being stopped first\n{sdp}",
                    old.mid, new.mid
                );
            } else {
                assert_eq!(old.kind, new.kind, "{who}: mid {} changed kind", old.mid);
            }
        }
        let tracks: BTreeMap<String, String> =
            serde_json::from_value(offer["tracks"].clone()).unwrap();
        for l in &lines {
            assert_eq!(
                l.sends,
                tracks.contains_key(&l.mid),
                "{who}: mid {} sends iff it is in `tracks`",
                l.mid
            );
        }
        // The answer: the same m-lines, stopped ones stopped, the rest received.
        let mut answer = format!(
            "v=0\r\no=- 9 {} IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\na=group:BUNDLE {}\r\n",
            self.offers + 2,
            group.join(" ")
        );
        for l in &lines {
            let (port, dir) = match (l.stopped, l.sends) {
                (true, _) => (0, "inactive"),
                (false, true) => (9, "recvonly"),
                (false, false) => (9, "inactive"),
            };
            let (pt, codec) = if l.kind == "audio" {
                (111, "opus/48000/2")
            } else {
                (96, "VP8/90000")
            };
            answer.push_str(&format!(
                "m={} {port} UDP/TLS/RTP/SAVPF {pt}\r\nc=IN IP4 0.0.0.0\r\na=ice-ufrag:bbbb\r\n\
a=ice-pwd:0123456789012345678901\r\na=fingerprint:sha-256 AA:BB:CC\r\na=setup:active\r\n\
a=mid:{}\r\na={dir}\r\na=rtcp-mux\r\na=rtpmap:{pt} {codec}\r\n",
                l.kind, l.mid
            ));
        }
        self.offers += 1;
        self.last_offer = sdp.to_owned();
        self.tag = Some(group[0].clone());
        self.applied = lines;
        self.receiving = tracks.into_values().collect();
        self.peak = self.peak.max(self.receiving.len());
        self.send(json!({"type": "answer", "sdp": answer})).await;
    }

    /// How many of this peer's received tracks belong to `other`.
    fn receives_from(&self, other: &Peer) -> usize {
        self.receiving
            .iter()
            .filter(|t| t.starts_with(&format!("{}-", other.id)))
            .count()
    }
}

async fn start() -> SocketAddr {
    let mut config = Config::default();
    // Nobody sends media here: connections must not time out during the test.
    config.media.consent_timeout_secs = 600;
    config.http.listen = "127.0.0.1:0".parse().unwrap();
    config.media.listen = "127.0.0.1:0".parse().unwrap();
    config.quic.listen = "127.0.0.1:0".parse().unwrap();
    volna::server::start(&config).await.unwrap().http_addr
}

async fn settle_all(peers: &mut [Peer]) {
    // Two rounds: an answer from one can release the next offer to it.
    for _ in 0..2 {
        for p in peers.iter_mut() {
            p.settle().await;
        }
    }
}

/// Everyone receives exactly the others' two tracks each.
fn assert_full_mesh(peers: &[Peer], when: &str) {
    for p in peers {
        for o in peers.iter().filter(|o| o.id != p.id) {
            assert_eq!(
                p.receives_from(o),
                2,
                "{when}: {} receives {}'s audio and video; has {:?}",
                p.name,
                o.name,
                p.receiving
            );
        }
        assert_eq!(
            p.receiving.len(),
            2 * (peers.len() - 1),
            "{when}: {}",
            p.name
        );
        // Bounded: ended lines are recycled, so the lines never exceed the most tracks
        // received at once plus the tag line and one line per kind in transit.
        assert!(
            p.applied.len() <= p.peak + 3,
            "{when}: {} has {} m-lines, at most {} tracks at once",
            p.name,
            p.applied.len(),
            p.peak
        );
    }
}

#[tokio::test]
async fn first_middle_and_last_joiners_leave_three_times() {
    let addr = start().await;
    let names = [
        "A", "B", "C", "D", "E", "F", "G", "H", "I", "J", "K", "L", "M", "N", "O", "P",
    ];
    let mut names = names.into_iter();
    let mut peers = Vec::new();
    for _ in 0..4 {
        let mut p = Peer::join(addr, "churn", names.next().unwrap()).await;
        p.publish().await;
        peers.push(p);
    }
    settle_all(&mut peers).await;
    assert_full_mesh(&peers, "four joined");
    for cycle in 0..3 {
        // The first joiner leaves.
        peers.remove(0).leave().await;
        settle_all(&mut peers).await;
        assert_full_mesh(&peers, &format!("cycle {cycle}: the first left"));
        // Someone joins.
        let mut p = Peer::join(addr, "churn", names.next().unwrap()).await;
        p.publish().await;
        peers.push(p);
        settle_all(&mut peers).await;
        assert_full_mesh(&peers, &format!("cycle {cycle}: one joined"));
        // A middle joiner leaves, then another; two join.
        peers.remove(1).leave().await;
        settle_all(&mut peers).await;
        peers.remove(1).leave().await;
        settle_all(&mut peers).await;
        assert_full_mesh(&peers, &format!("cycle {cycle}: two in the middle left"));
        for _ in 0..2 {
            let mut p = Peer::join(addr, "churn", names.next().unwrap()).await;
            p.publish().await;
            peers.push(p);
        }
        settle_all(&mut peers).await;
        assert_full_mesh(&peers, &format!("cycle {cycle}: two joined"));
    }
}

#[tokio::test]
async fn two_in_a_call_one_leaves_and_a_third_joins() {
    let addr = start().await;
    let mut a = Peer::join(addr, "pair", "A").await;
    a.publish().await;
    let mut b = Peer::join(addr, "pair", "B").await;
    b.publish().await;
    let mut peers = vec![a, b];
    settle_all(&mut peers).await;
    peers.remove(0).leave().await;
    settle_all(&mut peers).await;
    assert!(peers[0].receiving.is_empty());
    let mut c = Peer::join(addr, "pair", "C").await;
    c.publish().await;
    peers.push(c);
    settle_all(&mut peers).await;
    assert_full_mesh(&peers, "B stayed, C joined");
}

#[tokio::test]
async fn republish_with_subscribers_of_only_that_publisher_and_a_change_during_an_offer() {
    let addr = start().await;
    let mut a = Peer::join(addr, "re", "A").await;
    a.publish().await;
    // B watches only A (it publishes nothing); C watches everyone and publishes.
    let b = Peer::join(addr, "re", "B").await;
    let mut c = Peer::join(addr, "re", "C").await;
    c.publish().await;
    let mut peers = vec![a, b, c];
    settle_all(&mut peers).await;
    let [a, b, c] = &mut peers[..] else {
        unreachable!()
    };
    assert_eq!(b.receives_from(a), 2);
    // A publishes again (a new connection, e.g. after adding a screen share): B's offer then
    // holds only ended lines for a moment, and the new tracks come next.
    a.publish().await;
    for p in [&mut *a, &mut *b, &mut *c] {
        p.settle().await;
        p.settle().await;
    }
    assert_eq!(
        b.receives_from(a),
        2,
        "B sees A's new tracks: {:?}",
        b.receiving
    );
    assert_eq!(
        c.receives_from(a),
        2,
        "C sees A's new tracks: {:?}",
        c.receiving
    );
    // A track change while an offer is outstanding: B holds its answer while A republishes.
    b.answering = false;
    a.publish().await;
    b.settle().await;
    assert_eq!(b.held.len(), 1, "one offer outstanding, later changes wait");
    a.publish().await;
    b.settle().await;
    assert_eq!(b.held.len(), 1, "still one offer outstanding");
    b.answering = true;
    let held = b.held.pop().unwrap();
    b.apply(&held).await;
    b.settle().await;
    assert_eq!(
        b.receives_from(a),
        2,
        "after the answer, the next offer brings A's latest tracks: {:?}",
        b.receiving
    );
    assert!(b.applied.len() <= 2 + 3, "{} m-lines", b.applied.len());
}

#[tokio::test]
async fn fifty_join_leave_cycles_keep_one_subscriber_offer_small() {
    let addr = start().await;
    let mut stay = Peer::join(addr, "fifty", "Stay").await;
    stay.publish().await;
    for _ in 0..50 {
        let mut p = Peer::join(addr, "fifty", "Visitor").await;
        p.publish().await;
        stay.until("offer").await;
        assert_eq!(stay.receives_from(&p), 2);
        p.leave().await;
        stay.until("offer").await;
        assert!(stay.receiving.is_empty());
    }
    assert!(stay.receiving.is_empty());
    assert!(
        stay.applied.len() <= 3,
        "after 50 cycles the offer has {} m-lines for no live track",
        stay.applied.len()
    );
}

#[tokio::test]
async fn an_offer_the_client_cannot_apply_gets_a_new_connection() {
    let addr = start().await;
    let mut a = Peer::join(addr, "fail", "A").await;
    a.publish().await;
    let mut b = Peer::join(addr, "fail", "B").await;
    b.answering = false;
    b.settle().await;
    let first = b.held.pop().expect("an offer");
    let ufrag = |o: &Value| {
        o["sdp"]
            .as_str()
            .unwrap()
            .split("\r\n")
            .find_map(|l| l.strip_prefix("a=ice-ufrag:"))
            .unwrap()
            .to_owned()
    };
    b.send(json!({"type": "offer_failed", "id": 5, "reason": "setRemoteDescription failed"}))
        .await;
    let again = b.until("offer").await;
    assert_ne!(
        ufrag(&first),
        ufrag(&again),
        "a new connection: new ICE credentials"
    );
    b.answering = true;
    b.apply(&again).await;
    b.settle().await;
    assert_eq!(b.receives_from(&a), 2);
    // With no offer outstanding, there is nothing to fail.
    b.send(json!({"type": "offer_failed", "id": 6})).await;
    let e = loop {
        let v = b.next(Duration::from_secs(5)).await.expect("a reply");
        if v["id"] == 6 {
            break v;
        }
    };
    assert_eq!(
        (e["code"].as_u64(), e["reason"].as_str()),
        (Some(409), Some("no_offer"))
    );
}

/// `restart_ice`: the publishing connection's offer with new credentials is answered with new
/// ones; the receiving connection gets an offer with new credentials; an offer with the old
/// credentials is refused.
#[tokio::test]
async fn restart_ice_renews_both_connections_credentials() {
    let addr = start().await;
    let mut a = Peer::join(addr, "ice", "A").await;
    a.publish().await;
    let mut b = Peer::join(addr, "ice", "B").await;
    b.publish().await;
    let mut peers = vec![a, b];
    settle_all(&mut peers).await;
    let a = &mut peers[0];
    let ufrag = |sdp: &str| {
        sdp.split("\r\n")
            .find_map(|l| l.strip_prefix("a=ice-ufrag:"))
            .unwrap()
            .to_owned()
    };
    let receiving = ufrag(&a.last_offer);
    let publishing = ufrag(&a.publish_answer);
    a.send(json!({"type": "restart_ice", "id": 20, "sdp": OFFER}))
        .await;
    let e = loop {
        let v = a.next(Duration::from_secs(5)).await.expect("a reply");
        if v["id"] == 20 {
            break v;
        }
    };
    assert_eq!(
        (e["code"].as_u64(), e["reason"].as_str()),
        (Some(400), Some("bad_sdp")),
        "{e}"
    );
    let renewed = OFFER.replace("a=ice-ufrag:abcd", "a=ice-ufrag:efgh");
    a.send(json!({"type": "restart_ice", "id": 21, "sdp": renewed}))
        .await;
    let ans = a.until("publish_answer").await;
    assert_eq!(ans["id"], 21);
    assert_ne!(ufrag(ans["sdp"].as_str().unwrap()), publishing);
    let offer = a.until("offer").await;
    assert_ne!(ufrag(offer["sdp"].as_str().unwrap()), receiving);
    assert_eq!(
        a.receiving.len(),
        2,
        "the same tracks go on: {:?}",
        a.receiving
    );
}
