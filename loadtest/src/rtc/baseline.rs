//! The direct loopback latency of the client's own SRTP path, with no relay: what the load
//! test's latency figures are reduced by.

use super::*;

/// Latency of the same SRTP protect → UDP → unprotect path with no relay: two sockets on
/// loopback, one sending stamped audio and video at the role's rates for `duration`.
pub async fn baseline(
    ip: IpAddr,
    identity: &Identity,
    video_kbps: u32,
    duration: Duration,
) -> Result<Histogram, RtcError> {
    let a = std::net::UdpSocket::bind(SocketAddr::new(ip, 0))?;
    let b = std::net::UdpSocket::bind(SocketAddr::new(ip, 0))?;
    let (a_addr, b_addr) = (a.local_addr()?, b.local_addr()?);
    let key = [7u8; 16];
    let salt = [9u8; 12];
    let profile = ProtectionProfile::AeadAes128Gcm;
    let (send_ctx, _) = contexts(profile, (&key, &salt), (&key, &salt), identity)?;
    let (_, recv_ctx) = contexts(profile, (&key, &salt), (&key, &salt), identity)?;
    let shared = Arc::new(Shared::default());
    let start = now_ns();
    shared.set_window(start, start + duration.as_nanos() as u64);
    let make = |sock: std::net::UdpSocket,
                remote: SocketAddr,
                srtp: (Context, Context),
                senders: Vec<Sender>|
     -> Result<(Session, tokio::net::UdpSocket), RtcError> {
        sock.set_nonblocking(true)?;
        let sock = tokio::net::UdpSocket::from_std(sock)?;
        let session = Session {
            name: "baseline".into(),
            remote,
            ice: Ice {
                local_ufrag: String::new(),
                local_pwd: String::new(),
                remote_ufrag: String::new(),
                remote_pwd: String::new(),
                controlling: true,
                tiebreaker: 0,
                // No checks: the path is direct.
                next_check: Instant::now() + Duration::from_secs(3600),
                succeeded: true,
            },
            dtls: None,
            identity: identity.clone(),
            remote_fingerprint: String::new(),
            srtp: Some(srtp),
            senders,
            mid_ext: Some(MID_EXT_ID),
            rid_ext: None,
            remb: None,
            video_pts: vec![VP8_PT],
            state: Arc::new(AtomicU8::new(STATE_CONNECTED)),
            error: Arc::new(Mutex::new(String::new())),
            stats: LocalStats::default(),
            sent_in_window: Arc::new(AtomicU64::new(0)),
            shared: shared.clone(),
            out: Vec::new(),
            rx_ns: None,
        };
        Ok((session, sock))
    };
    let (dummy_a, _) = contexts(profile, (&key, &salt), (&key, &salt), identity)?;
    let (_, dummy_b) = contexts(profile, (&key, &salt), (&key, &salt), identity)?;
    // Five publishers' worth of streams, so that p99.9 rests on a few thousand samples.
    let senders = (0..5u32)
        .flat_map(|i| {
            [
                Sender::new(
                    Outgoing {
                        kind: Kind::Audio,
                        mid: "0".into(),
                        ssrc: 2 * i + 1,
                        pt: OPUS_PT,
                        rid: None,
                    },
                    video_kbps,
                ),
                Sender::new(
                    Outgoing {
                        kind: Kind::Video,
                        mid: "1".into(),
                        ssrc: 2 * i + 2,
                        pt: VP8_PT,
                        rid: None,
                    },
                    video_kbps,
                ),
            ]
        })
        .collect();
    let (mut tx, sa) = make(a, b_addr, (send_ctx, dummy_b), senders)?;
    let (mut rx, sb) = make(b, a_addr, (dummy_a, recv_ctx), Vec::new())?;
    let t1 = tokio::spawn(async move { tx.run(sa).await });
    let t2 = tokio::spawn(async move { rx.run(sb).await });
    tokio::time::sleep(duration + Duration::from_millis(200)).await;
    shared.stop();
    let _ = t1.await;
    let _ = t2.await;
    let inner = shared
        .inner
        .lock()
        .map_err(|_| RtcError::Srtp("recorder poisoned".into()))?;
    Ok(inner.total.clone())
}
