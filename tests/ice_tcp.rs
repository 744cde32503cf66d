//! ICE over TCP against a real node (in process, real sockets): the answer offers a passive TCP
//! candidate; an ICE check framed as RFC 4571 on that port is answered on the same connection
//! and the session takes the connection as its path; junk, empty, oversized and non-STUN first
//! frames close only their own connection and are counted; a connection that sends nothing is
//! closed; a flood of silent connections does not keep a UDP session's check from being answered.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::ws::{http, OFFER};
use common::{attr, binding_request};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};
use volna::config::Config;

async fn start() -> SocketAddr {
    let mut config = Config::default();
    config.http.listen = "127.0.0.1:0".parse().unwrap();
    config.media.listen = "127.0.0.1:0".parse().unwrap();
    config.media.workers = 1;
    config.quic.enabled = false;
    volna::server::start(&config).await.unwrap().http_addr
}

async fn stats(http_addr: SocketAddr) -> Value {
    let (status, _, raw) = http(http_addr, "GET", "/stats", "").await;
    assert_eq!(status, 200);
    serde_json::from_str(raw.split("\r\n\r\n").nth(1).unwrap()).unwrap()
}

/// A WHIP session: its ICE credentials, its UDP port and its passive TCP candidate's port.
async fn whip(http_addr: SocketAddr) -> (String, String, u16, u16) {
    let (status, _, raw) = http(http_addr, "POST", "/whip/tcp", OFFER).await;
    assert_eq!(status, 201, "{raw}");
    let sdp = raw.split("\r\n\r\n").nth(1).unwrap().to_owned();
    let port = |proto: &str| -> u16 {
        sdp.lines()
            .filter_map(|l| l.strip_prefix("a=candidate:"))
            .map(|l| l.split_whitespace().collect::<Vec<_>>())
            .find(|f| f[2] == proto)
            .map(|f| {
                if proto == "tcp" {
                    assert_eq!(&f[6..], ["typ", "host", "tcptype", "passive"], "{sdp}");
                }
                f[5].parse().unwrap()
            })
            .unwrap_or_else(|| panic!("{proto} candidate in {sdp}"))
    };
    let (udp, tcp) = (port("udp"), port("tcp"));
    let udp_line = sdp.lines().position(|l| l.contains(" udp ")).unwrap();
    let tcp_line = sdp.lines().position(|l| l.contains(" tcp ")).unwrap();
    assert!(udp_line < tcp_line, "UDP first (higher priority)");
    (
        attr(&sdp, "a=ice-ufrag:").to_owned(),
        attr(&sdp, "a=ice-pwd:").to_owned(),
        udp,
        tcp,
    )
}

fn framed(packet: &[u8]) -> Vec<u8> {
    let mut f = (packet.len() as u16).to_be_bytes().to_vec();
    f.extend_from_slice(packet);
    f
}

/// Reads one framed packet, within 2 s.
async fn read_frame(s: &mut TcpStream) -> Vec<u8> {
    let mut len = [0u8; 2];
    tokio::time::timeout(Duration::from_secs(2), s.read_exact(&mut len))
        .await
        .expect("a frame within 2 s")
        .unwrap();
    let mut body = vec![0u8; u16::from_be_bytes(len) as usize];
    s.read_exact(&mut body).await.unwrap();
    body
}

/// Whether the server closes the connection within `within`.
async fn closed_within(s: &mut TcpStream, within: Duration) -> bool {
    let mut buf = [0u8; 64];
    loop {
        match tokio::time::timeout(within, s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => continue,
            Err(_) => return false,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ice_check_over_tcp_is_answered_and_the_connection_becomes_the_path() {
    let http_addr = start().await;
    let (ufrag, pwd, _, tcp_port) = whip(http_addr).await;
    let mut s = TcpStream::connect(("127.0.0.1", tcp_port)).await.unwrap();
    let check = binding_request(&format!("{ufrag}:abcd"), &pwd);
    // Split across writes, as TCP may deliver it: the frame is put back together.
    let f = framed(&check);
    s.write_all(&f[..5]).await.unwrap();
    s.flush().await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    s.write_all(&f[5..]).await.unwrap();
    let reply = read_frame(&mut s).await;
    assert_eq!(&reply[..2], &[0x01, 0x01], "a Binding success response");
    assert_eq!(&reply[8..20], &check[8..20], "same transaction");
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let t = stats(http_addr).await["tcp"].clone();
        if t["in_use"] == 1 {
            assert_eq!(t["accepted"], 1);
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the session took the connection: {t}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The server keeps the connection in use open.
    assert!(!closed_within(&mut s, Duration::from_millis(200)).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_frames_and_silent_connections_are_closed_and_counted_while_calls_go_on() {
    let http_addr = start().await;
    let (ufrag, pwd, udp_port, tcp_port) = whip(http_addr).await;
    let bad: [(&str, Vec<u8>); 4] = [
        ("empty frame", vec![0, 0, 1, 2]),
        ("oversized frame", vec![0xff, 0xff, 0, 1]),
        ("first frame not STUN", framed(&[0x80, 0x60, 0, 1, 2, 3])),
        ("DTLS before ICE", framed(&[22, 254, 253, 0, 0])),
    ];
    for (what, bytes) in &bad {
        let mut s = TcpStream::connect(("127.0.0.1", tcp_port)).await.unwrap();
        s.write_all(bytes).await.unwrap();
        assert!(
            closed_within(&mut s, Duration::from_secs(2)).await,
            "{what}: closed"
        );
    }
    // Silent connections: a flood of them does not keep a UDP check from being answered.
    let mut silent = Vec::new();
    for _ in 0..64 {
        silent.push(TcpStream::connect(("127.0.0.1", tcp_port)).await.unwrap());
    }
    let udp = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    udp.send_to(
        &binding_request(&format!("{ufrag}:abcd"), &pwd),
        ("127.0.0.1", udp_port),
    )
    .await
    .unwrap();
    let mut buf = [0u8; 1500];
    let (n, _) = tokio::time::timeout(Duration::from_secs(2), udp.recv_from(&mut buf))
        .await
        .expect("UDP check answered during the flood")
        .unwrap();
    assert_eq!(&buf[..2], &[0x01, 0x01], "{n} bytes");
    // The worker learns of each connection from its accept task, a moment after the client.
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let t = stats(http_addr).await["tcp"].clone();
        if t["connections"] == 64 {
            assert_eq!(
                (t["junk"].as_u64(), t["accepted"].as_u64()),
                (Some(4), Some(68)),
                "{t}"
            );
            break;
        }
        assert!(Instant::now() < deadline, "64 connections held: {t}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Each silent connection is closed once its first frame is overdue (5 s).
    for s in silent.iter_mut().take(3) {
        assert!(closed_within(s, Duration::from_secs(7)).await);
    }
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let t = stats(http_addr).await["tcp"].clone();
        if t["connections"] == 0 {
            assert_eq!(t["ice_timeouts"], 64, "{t}");
            break;
        }
        assert!(Instant::now() < deadline, "all silent ones closed: {t}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
