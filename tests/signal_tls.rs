//! HTTPS and WSS on the signalling port (`[http] tls_cert`, `tls_key`), against an in-process
//! relay with a self-signed certificate: the health check and a WHIP offer over HTTPS, a room
//! joined over WSS; a plain-HTTP client or a silent one gets nothing and the listener goes on;
//! files that cannot be used stop the start with a reason.

use std::net::SocketAddr;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use volna::config::Config;

mod common;
use common::ws::OFFER;

fn write(name: &str, text: &str) -> String {
    let path = std::env::temp_dir().join(format!("volna-tls-{}-{name}", std::process::id()));
    std::fs::write(&path, text).unwrap();
    path.display().to_string()
}

fn config(cert: String, key: String) -> Config {
    let mut config = Config::default();
    config.http.listen = "127.0.0.1:0".parse().unwrap();
    config.media.listen = "127.0.0.1:0".parse().unwrap();
    config.quic.listen = "127.0.0.1:0".parse().unwrap();
    config.http.header_timeout_secs = 1;
    config.http.tls_cert = cert;
    config.http.tls_key = key;
    config
}

/// A TLS connection to `addr` that trusts only `cert_der`, as `localhost`.
async fn connect(addr: SocketAddr, cert_der: &[u8]) -> tokio_rustls::client::TlsStream<TcpStream> {
    let tcp = TcpStream::connect(addr).await.unwrap();
    common::tls_client(cert_der, b"http/1.1")
        .connect("localhost".try_into().unwrap(), tcp)
        .await
        .unwrap()
}

async fn https(
    addr: SocketAddr,
    cert: &[u8],
    method: &str,
    path: &str,
    ct: &str,
    body: &str,
) -> String {
    let mut s = connect(addr, cert).await;
    let req = format!("{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nContent-Type: {ct}\r\nContent-Length: {}\r\n\r\n{body}", body.len());
    s.write_all(req.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    // A TLS peer may close without close_notify after `Connection: close`; what came counts.
    let _ = s.read_to_end(&mut raw).await;
    String::from_utf8_lossy(&raw).into_owned()
}

#[tokio::test]
async fn https_and_wss_serve_what_http_does() {
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    let der = ck.cert.der().to_vec();
    let cert = write("cert.pem", &ck.cert.pem());
    let key = write("key.pem", &ck.signing_key.serialize_pem());
    let addr = volna::server::start(&config(cert.clone(), key.clone()))
        .await
        .unwrap()
        .http_addr;

    let health = https(addr, &der, "GET", "/health", "text/plain", "").await;
    assert!(
        health.starts_with("HTTP/1.1 200") && health.ends_with("ok\n"),
        "{health}"
    );
    let whip = https(addr, &der, "POST", "/whip/secure", "application/sdp", OFFER).await;
    assert!(whip.starts_with("HTTP/1.1 201"), "{whip}");

    // A plain-HTTP client, and one that opens and says nothing: no answer, the listener goes on.
    let mut plain = TcpStream::connect(addr).await.unwrap();
    plain
        .write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut got = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(3), plain.read_to_end(&mut got)).await;
    assert!(
        !String::from_utf8_lossy(&got).contains("ok"),
        "no plain HTTP answer"
    );
    let mut silent = TcpStream::connect(addr).await.unwrap();
    let mut buf = [0u8; 16];
    let n = tokio::time::timeout(Duration::from_secs(3), silent.read(&mut buf)).await;
    assert!(
        matches!(n, Ok(Ok(0)) | Ok(Err(_))),
        "a silent client is cut off after the header timeout: {n:?}"
    );

    // The room protocol over WSS.
    let tls = connect(addr, &der).await;
    let (mut ws, _) = tokio_tungstenite::client_async("wss://localhost/rtc", tls)
        .await
        .unwrap();
    let join = json!({"type": "join", "v": 1, "room": "secure", "name": "Ann", "id": 1});
    ws.send(Message::Text(join.to_string().into()))
        .await
        .unwrap();
    let joined = loop {
        let m = tokio::time::timeout(Duration::from_secs(5), ws.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        if let Message::Text(t) = m {
            break serde_json::from_str::<Value>(&t).unwrap();
        }
    };
    assert_eq!(joined["type"], "joined", "{joined}");
    // The WHIP publisher is in the room.
    assert_eq!(joined["participants"][0]["identity"], "whip", "{joined}");

    // Files that cannot be used: the start is refused, naming what is wrong.
    let missing = config("/nonexistent/cert.pem".into(), key.clone());
    let err = volna::server::start(&missing)
        .await
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("HTTPS certificate: /nonexistent/cert.pem"),
        "{err}"
    );
    let swapped = config(key.clone(), cert.clone());
    let err = volna::server::start(&swapped)
        .await
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("tls_cert: no CERTIFICATE"), "{err}");
    std::fs::remove_file(cert).ok();
    std::fs::remove_file(key).ok();
}
