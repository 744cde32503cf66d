//! A load-test client over ICE-TCP (RFC 6544): one TCP connection to the relay's passive
//! candidate, each STUN, DTLS, SRTP and SRTCP packet framed by its 16-bit length (RFC 4571). The
//! session is the same as over UDP; arrivals are stamped when read (no kernel stamps on TCP).

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::{now_ns, Session};

/// Largest frame the relay sends (what it takes, too).
const MAX_FRAME: usize = 4096;

/// Takes the first whole frame out of `buf`, if one is there.
fn take_frame(buf: &mut Vec<u8>) -> Option<Vec<u8>> {
    let len = usize::from(u16::from_be_bytes([*buf.first()?, *buf.get(1)?]));
    if buf.len() < 2 + len {
        return None;
    }
    let frame = buf[2..2 + len].to_vec();
    buf.drain(..2 + len);
    Some(frame)
}

/// Runs `session` over a TCP connection to its remote (passive) candidate until the run stops
/// or the connection fails.
pub(super) async fn run(session: &mut Session) {
    let stream = match tokio::net::TcpStream::connect(session.remote).await {
        Ok(s) => s,
        Err(e) => {
            session.fail(format!("TCP connect to {}: {e}", session.remote));
            return;
        }
    };
    let _ = stream.set_nodelay(true);
    let (mut rd, mut wr) = stream.into_split();
    let mut acc: Vec<u8> = Vec::with_capacity(2 * MAX_FRAME);
    let period = if session.senders.is_empty() { 50 } else { 5 };
    let mut tick = tokio::time::interval(Duration::from_millis(period));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut out = Vec::with_capacity(2 * MAX_FRAME);
    loop {
        tokio::select! {
            r = rd.read_buf(&mut acc) => match r {
                Ok(0) | Err(_) => {
                    if !session.shared.stop.load(std::sync::atomic::Ordering::Relaxed) {
                        session.fail("the relay closed the TCP connection".into());
                    }
                    break;
                }
                Ok(_) => {
                    while let Some(frame) = take_frame(&mut acc) {
                        session.rx_ns = Some(now_ns());
                        let from = session.remote;
                        session.handle_datagram(Instant::now(), from, &frame);
                    }
                }
            },
            _ = tick.tick() => {
                if session.shared.stop.load(std::sync::atomic::Ordering::Relaxed) {
                    break;
                }
                session.handle_tick(Instant::now());
            }
        }
        out.clear();
        for d in session.out.drain(..) {
            out.extend_from_slice(&(d.len() as u16).to_be_bytes());
            out.extend_from_slice(&d);
        }
        if !out.is_empty() && wr.write_all(&out).await.is_err() {
            session.fail("writing to the TCP connection failed".into());
            break;
        }
    }
    session.stats.flush(&session.shared, true);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_are_taken_whole_and_in_order() {
        let mut buf = vec![0, 3, 1, 2, 3, 0, 2, 9];
        assert_eq!(take_frame(&mut buf), Some(vec![1, 2, 3]));
        // The second is not all there yet.
        assert_eq!(take_frame(&mut buf), None);
        buf.push(8);
        assert_eq!(take_frame(&mut buf), Some(vec![9, 8]));
        assert!(buf.is_empty());
        assert_eq!(take_frame(&mut vec![0]), None);
        assert_eq!(take_frame(&mut vec![0, 0]), Some(vec![]));
    }
}
