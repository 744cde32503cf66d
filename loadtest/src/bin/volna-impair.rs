//! volna-impair: a UDP proxy that impairs the link between one client and a server: loss,
//! delay, jitter and a bandwidth cap, constant or on a script (`--profile rfc8867-5.1`).
//!
//! `volna-impair --listen 127.0.0.1:6000 --target 127.0.0.1:50000 --loss 0.05 --delay-ms 50`
//! Clients send to the listen address; the first client's address gets the replies. Conditions
//! apply to both directions, each direction a queue of its own. Prints link stats at the end.
//!
//! `--rebind-after SECS` plays a NAT rebinding: from then on the proxy sends to the target from a
//! new source port (as a NAT does when its mapping expires, or a phone that changes network).
//! The stats then count what the target sent to the new port other than STUN before the client's
//! first STUN message (an ICE check, or its answer to the target's own check) went out from there
//! (`media_before_check`: a relay that accepts unauthenticated new addresses sends media first).

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Parser;
use tokio::net::UdpSocket;
use volna_load::impair::{Condition, Link, Schedule};

#[derive(Parser, Debug)]
#[command(about = "UDP link impairment proxy (loss, delay, jitter, bandwidth over time)")]
struct Args {
    #[arg(long)]
    listen: SocketAddr,
    #[arg(long)]
    target: SocketAddr,
    /// Random loss, 0.0 to 1.0.
    #[arg(long, default_value_t = 0.0)]
    loss: f64,
    #[arg(long, default_value_t = 0)]
    delay_ms: u64,
    #[arg(long, default_value_t = 0)]
    jitter_ms: u64,
    /// Bandwidth cap in kbit/s (0: none).
    #[arg(long, default_value_t = 0)]
    rate_kbps: u64,
    /// A scripted profile instead of the constant condition: "rfc8867-5.1".
    #[arg(long)]
    profile: Option<String>,
    /// Stop after this many seconds (0: run until killed).
    #[arg(long, default_value_t = 0.0)]
    seconds: f64,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Move to a new source port towards the target after this many seconds (0: never).
    #[arg(long, default_value_t = 0.0)]
    rebind_after: f64,
}

/// A STUN message (RFC 8489: first two bits zero, the magic cookie at bytes 4..8).
fn is_stun(p: &[u8]) -> bool {
    p.len() >= 20 && p[0] < 2 && p[4..8] == [0x21, 0x12, 0xa4, 0x42]
}

fn stats_json(s: volna_load::impair::LinkStats) -> serde_json::Value {
    serde_json::json!({"packets_in": s.packets_in, "packets_out": s.packets_out, "dropped_loss": s.dropped_loss,
                       "dropped_queue": s.dropped_queue, "bytes_out": s.bytes_out})
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let a = Args::parse();
    if !(0.0..=1.0).contains(&a.loss) {
        eprintln!("volna-impair: --loss must be between 0 and 1");
        return ExitCode::from(2);
    }
    let schedule = match a.profile.as_deref() {
        None => Schedule::constant(Condition {
            loss: a.loss,
            delay: Duration::from_millis(a.delay_ms),
            jitter: Duration::from_millis(a.jitter_ms),
            rate_bps: (a.rate_kbps > 0).then_some(a.rate_kbps * 1000),
        }),
        Some("rfc8867-5.1") => Schedule::rfc8867_5_1(),
        Some(other) => {
            eprintln!("volna-impair: unknown profile {other:?} (known: rfc8867-5.1)");
            return ExitCode::from(2);
        }
    };
    let (front, mut back) = match (
        UdpSocket::bind(a.listen).await,
        UdpSocket::bind(if a.target.is_ipv4() {
            "0.0.0.0:0"
        } else {
            "[::]:0"
        })
        .await,
    ) {
        (Ok(f), Ok(b)) => (f, b),
        (Err(e), _) | (_, Err(e)) => {
            eprintln!("volna-impair: {e}");
            return ExitCode::FAILURE;
        }
    };
    if let Err(e) = back.connect(a.target).await {
        eprintln!("volna-impair: {e}");
        return ExitCode::FAILURE;
    }
    let start = Instant::now();
    // The script's time zero, for whoever lines samples up with it.
    eprintln!("volna-impair: started");
    let mut up = Link::new(schedule.clone(), start, a.seed);
    let mut down = Link::new(schedule, start, a.seed.wrapping_add(1));
    let mut client: Option<SocketAddr> = None;
    let end = (a.seconds > 0.0).then(|| start + Duration::from_secs_f64(a.seconds));
    let mut rebind =
        (a.rebind_after > 0.0).then(|| start + Duration::from_secs_f64(a.rebind_after));
    // After a rebinding: whether the client's STUN went out on the new port yet, and what else
    // than STUN the target sent there before that.
    let mut checked = true;
    let mut media_before_check = 0u64;
    let (mut b1, mut b2) = (vec![0u8; 65536], vec![0u8; 65536]);
    loop {
        let now = Instant::now();
        while let Some(p) = up.poll_release(now) {
            checked |= is_stun(&p);
            let _ = back.send(&p).await;
        }
        while let Some(p) = down.poll_release(now) {
            if let Some(c) = client {
                let _ = front.send_to(&p, c).await;
            }
        }
        if end.is_some_and(|e| now >= e) {
            break;
        }
        if rebind.is_some_and(|t| now >= t) {
            rebind = None;
            let local = if a.target.is_ipv4() {
                "0.0.0.0:0"
            } else {
                "[::]:0"
            };
            match UdpSocket::bind(local).await {
                Ok(s) if s.connect(a.target).await.is_ok() => {
                    back = s;
                    checked = false;
                    eprintln!("volna-impair: rebound to {:?}", back.local_addr().ok());
                }
                _ => eprintln!("volna-impair: rebinding failed"),
            }
        }
        let wake = [up.poll_timeout(), down.poll_timeout(), end, rebind]
            .into_iter()
            .flatten()
            .min()
            .unwrap_or(now + Duration::from_secs(1));
        tokio::select! {
            r = front.recv_from(&mut b1) => if let Ok((n, from)) = r {
                client.get_or_insert(from);
                up.handle_packet(Instant::now(), b1[..n].to_vec());
            },
            r = back.recv(&mut b2) => if let Ok(n) = r {
                if !checked && !is_stun(&b2[..n]) {
                    media_before_check += 1;
                }
                down.handle_packet(Instant::now(), b2[..n].to_vec());
            },
            _ = tokio::time::sleep_until(wake.into()) => {}
        }
    }
    println!(
        "{}",
        serde_json::json!({"up": stats_json(up.stats()), "down": stats_json(down.stats()),
                           "media_before_check": media_before_check})
    );
    ExitCode::SUCCESS
}
