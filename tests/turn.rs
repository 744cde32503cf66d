//! The embedded TURN server against a real node (in process, real sockets), spoken to as a
//! client that knows only RFC 8656 and the WHIP answer would: the `201`'s `Link` headers name
//! TURN over UDP, TCP and TLS with credentials; over UDP an allocation relays an ICE check to the
//! WHIP session's media port and brings its answer back, and the session then counts as
//! TURN/UDP in `/stats`; over TLS (with the configured certificate) and TCP, messages are framed
//! on the stream, a peer outside the node gets 403, bad credentials 401, and junk closes only its
//! own connection. Every refusal is counted.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::ws::{http, OFFER};
use common::{attr, binding_request};
use rtc_stun::attributes::*;
use rtc_stun::message::*;
use rtc_stun::xoraddr::XorMappedAddress;
use serde_json::Value;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};
use volna::config::Config;
use volna::transport::turn::request::{message, outcome, peer_value, Creds};

struct Node {
    http: SocketAddr,
    cert_der: Vec<u8>,
}

async fn start() -> Node {
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    let write = |name: &str, text: String| {
        let p = std::env::temp_dir().join(format!("volna-turn-{}-{name}", std::process::id()));
        std::fs::write(&p, text).unwrap();
        p.display().to_string()
    };
    let mut config = Config::default();
    config.http.listen = "127.0.0.1:0".parse().unwrap();
    config.media.listen = "127.0.0.1:0".parse().unwrap();
    config.media.workers = 1;
    config.quic.enabled = false;
    config.turn.enabled = true;
    config.turn.udp = "127.0.0.1:0".into();
    config.turn.tcp = "127.0.0.1:0".into();
    config.turn.tls = "127.0.0.1:0".into();
    config.turn.host = "localhost".into();
    config.turn.tls_cert = write("cert.pem", ck.cert.pem());
    config.turn.tls_key = write("key.pem", ck.signing_key.serialize_pem());
    let running = volna::server::start(&config).await.unwrap();
    Node {
        http: running.http_addr,
        cert_der: ck.cert.der().to_vec(),
    }
}

async fn stats(http_addr: SocketAddr) -> Value {
    let (status, _, raw) = http(http_addr, "GET", "/stats", "").await;
    assert_eq!(status, 200);
    serde_json::from_str(raw.split("\r\n\r\n").nth(1).unwrap()).unwrap()
}

/// A TURN URL of the Link headers and the credentials they carry.
struct Ice {
    urls: Vec<String>,
    username: String,
    credential: String,
}

fn link_ice(raw: &str) -> Ice {
    let links: Vec<&str> = raw
        .lines()
        .filter_map(|l| l.strip_prefix("link: "))
        .collect();
    let param = |l: &str, k: &str| {
        let start = l.find(&format!("{k}=\"")).unwrap() + k.len() + 2;
        l[start..].split('"').next().unwrap().to_owned()
    };
    assert!(links
        .iter()
        .all(|l| l.contains("rel=\"ice-server\"") && l.contains("credential-type=\"password\"")));
    Ice {
        urls: links
            .iter()
            .map(|l| l[1..l.find('>').unwrap()].to_owned())
            .collect(),
        username: param(links[0], "username"),
        credential: param(links[0], "credential"),
    }
}

/// The `host:port` of the URL with `prefix` (`turn:`, `turns:`) and `transport`.
fn server(ice: &Ice, prefix: &str, transport: &str) -> SocketAddr {
    let url = ice
        .urls
        .iter()
        .find(|u| u.starts_with(prefix) && u.ends_with(&format!("?transport={transport}")))
        .unwrap_or_else(|| panic!("{prefix} {transport} in {:?}", ice.urls));
    let hostport = url[prefix.len()..].split('?').next().unwrap();
    let port: u16 = hostport.rsplit(':').next().unwrap().parse().unwrap();
    SocketAddr::new("127.0.0.1".parse().unwrap(), port)
}

/// A TURN client's requests, signed once it has a nonce.
struct Turn<'a> {
    ice: &'a Ice,
    nonce: String,
}

impl Turn<'_> {
    fn request(
        &self,
        method: Method,
        attrs: &[(AttrType, Vec<u8>)],
        username: Option<&str>,
        password: Option<&str>,
    ) -> Vec<u8> {
        let creds = Creds {
            username: username.unwrap_or(&self.ice.username),
            password: password.unwrap_or(&self.ice.credential),
            realm: "volna",
            nonce: &self.nonce,
        };
        let p = rtc_crypto::default_provider().unwrap();
        let typ = MessageType::new(method, CLASS_REQUEST);
        let signed = !self.nonce.is_empty();
        message(
            typ,
            TransactionId::new().0,
            attrs,
            signed.then_some(&creds),
            p.as_ref(),
        )
        .raw
    }

    /// The reply's code; keeps its nonce.
    fn take(&mut self, reply: &[u8]) -> u16 {
        let (code, nonce) = outcome(reply).expect("a STUN response");
        if let Some(n) = nonce {
            self.nonce = n;
        }
        code
    }
}

fn udp_transport() -> (AttrType, Vec<u8>) {
    (ATTR_REQUESTED_TRANSPORT, vec![17, 0, 0, 0])
}

async fn udp_ask(s: &UdpSocket, to: SocketAddr, msg: &[u8]) -> Vec<u8> {
    s.send_to(msg, to).await.unwrap();
    let mut buf = vec![0u8; 2048];
    let (n, _) = tokio::time::timeout(Duration::from_secs(5), s.recv_from(&mut buf))
        .await
        .expect("an answer")
        .unwrap();
    buf.truncate(n);
    buf
}

/// One STUN message read off a stream (TURN's own framing: the header says the length).
async fn stream_ask<S: AsyncRead + AsyncWrite + Unpin>(s: &mut S, msg: &[u8]) -> Vec<u8> {
    s.write_all(msg).await.unwrap();
    let mut head = [0u8; 20];
    tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut head))
        .await
        .expect("an answer")
        .unwrap();
    let len = usize::from(u16::from_be_bytes([head[2], head[3]]));
    let mut body = vec![0u8; len];
    s.read_exact(&mut body).await.unwrap();
    [head.to_vec(), body].concat()
}

#[tokio::test]
async fn whip_link_headers_lead_to_a_relayed_ice_check() {
    let node = start().await;
    let (status, _, raw) = http(node.http, "POST", "/whip/turn", OFFER).await;
    assert_eq!(status, 201, "{raw}");
    let ice = link_ice(&raw);
    assert_eq!(ice.urls.len(), 3, "{:?}", ice.urls);
    assert!(
        ice.urls[2].starts_with("turns:localhost:"),
        "{:?}",
        ice.urls
    );
    let sdp = raw.split("\r\n\r\n").nth(1).unwrap();
    let (ufrag, pwd) = (attr(sdp, "a=ice-ufrag:"), attr(sdp, "a=ice-pwd:"));
    let media: SocketAddr = {
        let c = sdp
            .lines()
            .find(|l| l.starts_with("a=candidate:") && l.contains(" udp "))
            .unwrap();
        let f: Vec<&str> = c.split_whitespace().collect();
        format!("{}:{}", f[4], f[5]).parse().unwrap()
    };
    // OPTIONS of the endpoint names the same servers (for clients that set them before the offer).
    let (status, _, raw) = http(node.http, "OPTIONS", "/whip/turn", "").await;
    assert_eq!(status, 204);
    assert_eq!(link_ice(&raw).urls, ice.urls);

    let turn_udp = server(&ice, "turn:", "udp");
    let s = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let mut t = Turn {
        ice: &ice,
        nonce: String::new(),
    };
    let r = udp_ask(
        &s,
        turn_udp,
        &t.request(METHOD_ALLOCATE, &[udp_transport()], None, None),
    )
    .await;
    assert_eq!(t.take(&r), 401);
    let r = udp_ask(
        &s,
        turn_udp,
        &t.request(METHOD_ALLOCATE, &[udp_transport()], None, None),
    )
    .await;
    assert_eq!(t.take(&r), 0);
    let peer = (ATTR_XOR_PEER_ADDRESS, peer_value(media));
    let r = udp_ask(
        &s,
        turn_udp,
        &t.request(
            METHOD_CREATE_PERMISSION,
            std::slice::from_ref(&peer),
            None,
            None,
        ),
    )
    .await;
    assert_eq!(t.take(&r), 0);
    // The WHIP session's ICE check, sent through the relay; its answer comes back as Data.
    let check = binding_request(&format!("{ufrag}:abcd"), pwd);
    let p = rtc_crypto::default_provider().unwrap();
    let send = message(
        MessageType::new(METHOD_SEND, CLASS_INDICATION),
        TransactionId::new().0,
        &[peer, (ATTR_DATA, check)],
        None,
        p.as_ref(),
    );
    let r = udp_ask(&s, turn_udp, &send.raw).await;
    let mut data = Message::new();
    data.unmarshal_binary(&r).unwrap();
    assert_eq!(data.typ, MessageType::new(METHOD_DATA, CLASS_INDICATION));
    let mut from = XorMappedAddress::default();
    from.get_from_as(&data, ATTR_XOR_PEER_ADDRESS).unwrap();
    assert_eq!(SocketAddr::new(from.ip, from.port), media);
    let mut answer = Message::new();
    answer
        .unmarshal_binary(&data.get(ATTR_DATA).unwrap())
        .unwrap();
    assert_eq!(answer.typ, BINDING_SUCCESS);
    // The session's path is the relay: it counts as TURN over UDP.
    let st = stats(node.http).await;
    assert_eq!(st["transports"]["turn_udp"], 1, "{}", st["transports"]);
    assert_eq!(st["transports"]["udp"], 0);
}

#[tokio::test]
async fn streams_are_framed_and_refusals_counted() {
    let node = start().await;
    let (status, _, raw) = http(node.http, "OPTIONS", "/whep/any", "").await;
    assert_eq!(status, 204);
    let ice = link_ice(&raw);
    let media_outside: SocketAddr = "192.0.2.1:5000".parse().unwrap();

    // TLS, trusting the configured certificate for the URL's host name.
    let tcp = TcpStream::connect(server(&ice, "turns:", "tcp"))
        .await
        .unwrap();
    let mut s = common::tls_client(&node.cert_der, b"stun.turn")
        .connect("localhost".try_into().unwrap(), tcp)
        .await
        .unwrap();
    let mut t = Turn {
        ice: &ice,
        nonce: String::new(),
    };
    let r = stream_ask(
        &mut s,
        &t.request(METHOD_ALLOCATE, &[udp_transport()], None, None),
    )
    .await;
    assert_eq!(t.take(&r), 401);
    // (username, password, code): expired, then a wrong password, then the real ones.
    let identity = ice.username.split_once(':').unwrap().1.to_owned();
    let expired = format!("1000:{identity}");
    let cases = [
        (Some(expired.as_str()), None, 401),
        (None, Some("guessed"), 401),
        (None, None, 0),
    ];
    for (user, pass, want) in cases {
        let r = stream_ask(
            &mut s,
            &t.request(METHOD_ALLOCATE, &[udp_transport()], user, pass),
        )
        .await;
        assert_eq!(t.take(&r), want, "{user:?} {pass:?}");
    }
    let outside = (ATTR_XOR_PEER_ADDRESS, peer_value(media_outside));
    let r = stream_ask(
        &mut s,
        &t.request(METHOD_CREATE_PERMISSION, &[outside], None, None),
    )
    .await;
    assert_eq!(t.take(&r), 403);

    // TCP: junk closes that connection only; the TLS one still answers.
    let mut junk = TcpStream::connect(server(&ice, "turn:", "tcp"))
        .await
        .unwrap();
    junk.write_all(&[0xff; 64]).await.unwrap();
    let mut buf = [0u8; 16];
    let n = tokio::time::timeout(Duration::from_secs(5), junk.read(&mut buf))
        .await
        .unwrap();
    assert!(matches!(n, Ok(0) | Err(_)), "closed: {n:?}");
    let refresh = (ATTR_LIFETIME, 600u32.to_be_bytes().to_vec());
    let r = stream_ask(&mut s, &t.request(METHOD_REFRESH, &[refresh], None, None)).await;
    assert_eq!(t.take(&r), 0);

    // The figures come out once a second.
    let mut st = Value::Null;
    for _ in 0..30 {
        st = stats(node.http).await;
        if st["turn"]["forbidden_peers"] == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let turn = &st["turn"];
    assert_eq!(
        (
            &turn["expired_credentials"],
            &turn["bad_credentials"],
            &turn["forbidden_peers"],
            &turn["allocations_tls"],
            &turn["allocated_tls"]
        ),
        (&1.into(), &1.into(), &1.into(), &1.into(), &1.into()),
        "{turn}"
    );
    let (_, _, metrics) = http(node.http, "GET", "/metrics", "").await;
    assert!(
        metrics.contains("volna_turn_refused_total{reason=\"forbidden_peer\"} 1"),
        "{metrics}"
    );
    assert!(metrics.contains("volna_turn_allocations{transport=\"tls\"} 1"));
}
