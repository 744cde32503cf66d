//! volna-impair as a process: a UDP echo through it shows the configured delay both ways, and
//! the configured loss.

use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use tokio::net::UdpSocket;

async fn echo_server() -> SocketAddr {
    let s = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = s.local_addr().unwrap();
    tokio::spawn(async move {
        let mut b = vec![0u8; 2048];
        while let Ok((n, from)) = s.recv_from(&mut b).await {
            let _ = s.send_to(&b[..n], from).await;
        }
    });
    addr
}

fn free_port() -> SocketAddr {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

#[tokio::test]
async fn delays_both_ways_and_drops() {
    let target = echo_server().await;
    let listen = free_port();
    let mut proxy = Command::new(env!("CARGO_BIN_EXE_volna-impair"))
        .args([
            "--listen",
            &listen.to_string(),
            "--target",
            &target.to_string(),
        ])
        .args([
            "--delay-ms",
            "40",
            "--loss",
            "0.2",
            "--seconds",
            "60",
            "--seed",
            "3",
        ])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let c = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    c.connect(listen).await.unwrap();
    let (mut answered, mut rtts) = (0, Vec::new());
    let mut buf = [0u8; 64];
    for i in 0..100u32 {
        let t = Instant::now();
        c.send(&i.to_be_bytes()).await.unwrap();
        if let Ok(Ok(_)) = tokio::time::timeout(Duration::from_millis(150), c.recv(&mut buf)).await
        {
            answered += 1;
            rtts.push(t.elapsed());
        }
    }
    let _ = proxy.kill();
    let _ = proxy.wait();
    // 20% loss each way: about 64% of echoes come back.
    assert!((45..85).contains(&answered), "answered {answered} of 100");
    let min = rtts.iter().min().unwrap();
    assert!(
        *min >= Duration::from_millis(80) && *min < Duration::from_millis(150),
        "round trip {min:?}"
    );
}
