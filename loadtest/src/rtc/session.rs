//! One running client: its ICE checks, DTLS handshake (as the DTLS client), SRTP keys, the
//! media it sends (stamped RTP, paced per stream, simulcast layers marked with their RID, REMB for
//! a capped receiver) and what it measures of the media it receives.

use super::*;

/// Paces one outgoing stream.
pub(super) struct Sender {
    pub(super) out: Outgoing,
    pub(super) seq: u16,
    pub(super) ts: u32,
    pub(super) counter: u64,
    pub(super) next_due: Option<Instant>,
    pub(super) interval: Duration,
    /// Video: payload bytes per frame.
    pub(super) frame_bytes: usize,
}

impl Sender {
    pub(super) fn new(out: Outgoing, video_kbps: u32) -> Self {
        let video_kbps = if out.rid == Some(LAYERS[0]) {
            video_kbps / 4
        } else {
            video_kbps
        };
        let (interval, frame_bytes) = match out.kind {
            Kind::Audio => (Duration::from_millis(20), AUDIO_PAYLOAD),
            Kind::Video => (
                Duration::from_secs(1) / 30,
                ((video_kbps as usize * 1000 / 8) / 30).max(2 + STAMP),
            ),
        };
        Self {
            out,
            seq: rand::random(),
            ts: rand::random(),
            counter: 0,
            next_due: None,
            interval,
            frame_bytes,
        }
    }
}

pub(super) struct Session {
    pub(super) name: String,
    pub(super) remote: SocketAddr,
    pub(super) ice: Ice,
    pub(super) dtls: Option<Endpoint>,
    pub(super) identity: Identity,
    pub(super) remote_fingerprint: String,
    pub(super) srtp: Option<(Context, Context)>,
    pub(super) senders: Vec<Sender>,
    pub(super) mid_ext: Option<u8>,
    pub(super) rid_ext: Option<u8>,
    /// What to tell the relay the link carries, and when next (REMB).
    pub(super) remb: Option<(u64, Instant)>,
    pub(super) video_pts: Vec<u8>,
    pub(super) state: Arc<AtomicU8>,
    pub(super) error: Arc<Mutex<String>>,
    pub(super) stats: LocalStats,
    pub(super) sent_in_window: Arc<AtomicU64>,
    pub(super) shared: Arc<Shared>,
    /// Datagrams to send after the current step.
    pub(super) out: Vec<bytes::Bytes>,
    /// Kernel arrival stamp of the datagram being handled (ns since [`epoch`]).
    pub(super) rx_ns: Option<u64>,
}

impl Session {
    pub(super) async fn run(&mut self, socket: tokio::net::UdpSocket) {
        let mut buf = vec![0u8; 2048];
        enable_rx_timestamps(&socket);
        // Senders pace media on a 5 ms tick; receive-only clients need the tick only for ICE,
        // DTLS retransmission and flushing samples, and most clients are receivers.
        let period = if self.senders.is_empty() { 50 } else { 5 };
        let mut tick = tokio::time::interval(Duration::from_millis(period));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            tokio::select! {
                r = socket.readable() => {
                    if r.is_ok() {
                        // Drain what is queued: one wake-up for a burst (a video frame).
                        for _ in 0..64 {
                            match recv_stamped(&socket, &mut buf) {
                                Ok((n, from, stamp)) => {
                                    self.rx_ns = stamp;
                                    self.handle_datagram(Instant::now(), from, &buf[..n]);
                                }
                                Err(_) => break,
                            }
                        }
                    }
                }
                _ = tick.tick() => {
                    if self.shared.stop.load(Ordering::Relaxed) {
                        break;
                    }
                    self.handle_tick(Instant::now());
                }
            }
            for d in self.out.drain(..) {
                let _ = socket.send_to(&d, self.remote).await;
            }
        }
        self.stats.flush(&self.shared, true);
    }

    pub(super) fn fail(&self, why: String) {
        fail(&self.name, &self.error, &self.state, why);
    }

    pub(super) fn handle_tick(&mut self, now: Instant) {
        if now >= self.ice.next_check {
            if let Some(req) = self.ice.request(self.identity.provider.crypto()) {
                self.out.push(req.into());
            }
            self.ice.next_check = now
                + if self.ice.succeeded {
                    CHECK_SLOW
                } else {
                    CHECK_FAST
                };
        }
        if let Some(dtls) = self.dtls.as_mut() {
            if self.srtp.is_none() {
                if dtls.poll_timeout(&PEER).is_some_and(|t| t <= now) {
                    if let Err(e) = dtls.handle_timeout(PEER, now) {
                        fail(
                            &self.name,
                            &self.error,
                            &self.state,
                            format!("DTLS timeout: {e}"),
                        );
                    }
                }
                while let Some(t) = dtls.poll_transmit() {
                    self.out.push(t.message.freeze());
                }
            }
        }
        if self.srtp.is_some() {
            self.send_media(now);
            self.send_remb(now);
        }
        if self
            .stats
            .last_flush
            .is_none_or(|t| now.duration_since(t) >= FLUSH_EVERY)
        {
            self.stats.last_flush = Some(now);
            self.stats.flush(&self.shared, false);
        }
    }

    pub(super) fn handle_datagram(&mut self, now: Instant, from: SocketAddr, d: &[u8]) {
        let Some(&first) = d.first() else { return };
        match first {
            0..=3 => self.handle_stun(now, from, d),
            20..=63 => self.handle_dtls(now, d),
            128..=191 => self.handle_srtp(d),
            _ => {}
        }
    }

    pub(super) fn handle_stun(&mut self, now: Instant, from: SocketAddr, d: &[u8]) {
        let crypto = self.identity.provider.crypto();
        if let Some(resp) = self.ice.respond(d, from, crypto) {
            self.out.push(resp.into());
            return;
        }
        let mut msg = Message::new();
        if msg.unmarshal_binary(d).is_err() {
            return;
        }
        if msg.typ == BINDING_SUCCESS && !self.ice.succeeded {
            self.ice.succeeded = true;
            self.ice.next_check = now + CHECK_SLOW;
            self.start_dtls(now);
        } else if msg.typ.class == CLASS_ERROR_RESPONSE && !self.ice.succeeded {
            self.fail("ICE check answered with an error".into());
        }
    }

    pub(super) fn start_dtls(&mut self, now: Instant) {
        let expected = self.remote_fingerprint.clone();
        let provider = self.identity.provider.clone();
        let verify = Arc::new(
            move |certs: &[Vec<u8>],
                  _: &[rustls::pki_types::CertificateDer<'static>]|
                  -> rtc_shared::error::Result<()> {
                match certs.first().and_then(|c| sha256_fingerprint(&provider, c)) {
                    Some(fp) if fp.to_ascii_lowercase() == expected => Ok(()),
                    _ => Err(rtc_shared::error::Error::ErrNoMatchingCertificateFingerprint),
                }
            },
        );
        let verify: rtc_dtls::config::VerifyPeerCertificateFn = verify;
        let config: Result<HandshakeConfig, _> = ConfigBuilder::default()
            .with_crypto_provider(self.identity.provider.clone())
            .with_certificates(vec![self.identity.certificate.clone()])
            .with_srtp_protection_profiles(vec![
                SrtpProtectionProfile::Srtp_Aead_Aes_128_Gcm,
                SrtpProtectionProfile::Srtp_Aes128_Cm_Hmac_Sha1_80,
            ])
            .with_insecure_skip_verify(true)
            .with_verify_peer_certificate(Some(verify))
            .with_extended_master_secret(ExtendedMasterSecretType::Request)
            .build(true, None);
        let config = match config {
            Ok(c) => Arc::new(c),
            Err(e) => return self.fail(format!("DTLS config: {e}")),
        };
        let local: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0);
        let mut ep = Endpoint::new(local, TransportProtocol::UDP, None);
        if let Err(e) = ep.connect(now, PEER, config, None) {
            return self.fail(format!("DTLS connect: {e}"));
        }
        while let Some(t) = ep.poll_transmit() {
            self.out.push(t.message.freeze());
        }
        self.dtls = Some(ep);
    }

    pub(super) fn handle_dtls(&mut self, now: Instant, d: &[u8]) {
        let Some(ep) = self.dtls.as_mut() else { return };
        let events = match ep.read(now, PEER, None, BytesMut::from(d)) {
            Ok(ev) => ev,
            Err(e) => {
                if self.srtp.is_none() {
                    self.fail(format!("DTLS: {e}"));
                }
                return;
            }
        };
        while let Some(t) = ep.poll_transmit() {
            self.out.push(t.message.freeze());
        }
        for ev in events {
            if let EndpointEvent::HandshakeComplete = ev {
                match keys(ep, &self.identity) {
                    Ok(k) => {
                        self.srtp = Some(k);
                        self.state.store(STATE_CONNECTED, Ordering::Relaxed);
                    }
                    Err(e) => fail(&self.name, &self.error, &self.state, e.to_string()),
                }
            }
        }
    }

    pub(super) fn handle_srtp(&mut self, d: &[u8]) {
        // RTCP (payload type 200..=206 with the marker bit folded in) is not measured.
        if d.len() < 12 || (192..=223).contains(&d[1]) {
            return;
        }
        let Some((_, remote)) = self.srtp.as_mut() else {
            return;
        };
        let Ok(plain) = remote.decrypt_rtp(d) else {
            return;
        };
        // The kernel's arrival stamp when there is one: the load generator's own delay is not
        // the relay's.
        let now = self.rx_ns.take().unwrap_or_else(now_ns);
        receive_rtp(&plain, &self.video_pts, now, &self.shared, &mut self.stats);
    }

    /// Tells the relay, four times a second, what this receiver's link carries (REMB).
    pub(super) fn send_remb(&mut self, now: Instant) {
        let (Some((bps, due)), Some((local, _))) = (self.remb.as_mut(), self.srtp.as_mut()) else {
            return;
        };
        if now < *due {
            return;
        }
        *due = now + Duration::from_millis(250);
        let mut packet = [0u8; 64];
        let remb = volna::core::rtcp::Remb {
            sender_ssrc: 1,
            bitrate_bps: *bps,
            ssrc: 0,
        };
        let Ok(n) = remb.write(&mut packet) else {
            return;
        };
        if let Ok(p) = local.encrypt_rtcp(&packet[..n]) {
            self.out.push(p.freeze());
        }
    }

    pub(super) fn send_media(&mut self, now: Instant) {
        let window = self.shared.window();
        let Some((local, _)) = self.srtp.as_mut() else {
            return;
        };
        let mut buf = Vec::with_capacity(1400);
        for s in &mut self.senders {
            let due = s.next_due.get_or_insert(now);
            // After a stall, start again rather than send a burst.
            if now.duration_since(*due) > Duration::from_secs(1) {
                *due = now;
            }
            while *due <= now {
                *due += s.interval;
                let (sizes, kind) = match s.out.kind {
                    Kind::Audio => (vec![AUDIO_PAYLOAD], Kind::Audio),
                    Kind::Video => {
                        let n = s.frame_bytes.div_ceil(MAX_VIDEO_PAYLOAD);
                        let each = (s.frame_bytes / n).max(2 + STAMP);
                        (vec![each; n], Kind::Video)
                    }
                };
                let last = sizes.len() - 1;
                for (i, size) in sizes.into_iter().enumerate() {
                    buf.clear();
                    let marker = kind == Kind::Video && i == last;
                    let exts = (self.mid_ext, self.rid_ext);
                    write_rtp_header(&mut buf, &s.out, marker, (s.seq, s.ts), exts);
                    if kind == Kind::Video {
                        // VP8 descriptor with S set on the first packet, then a key-frame header
                        // byte: every frame can start a viewer.
                        buf.extend_from_slice(if i == 0 { &[0x10, 0x00] } else { &[0x00, 0x00] });
                    }
                    let stamp = now_ns();
                    buf.extend_from_slice(&stamp.to_be_bytes());
                    buf.extend_from_slice(&s.counter.to_be_bytes());
                    let counted = stamp >= window.0 && stamp < window.1;
                    let header_len = if kind == Kind::Video {
                        2 + STAMP
                    } else {
                        STAMP
                    };
                    buf.resize(buf.len() + size.saturating_sub(header_len), 0xa5);
                    s.seq = s.seq.wrapping_add(1);
                    s.counter += 1;
                    match local.encrypt_rtp(&buf) {
                        Ok(p) => {
                            self.out.push(p.freeze());
                            // A simulcast publisher's expected packets are its full layer's.
                            if counted && s.out.rid != Some(LAYERS[0]) {
                                self.sent_in_window.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                        Err(e) => {
                            if let Ok(mut err) = self.error.lock() {
                                *err = format!("{}: SRTP protect: {e}", self.name);
                            }
                        }
                    }
                }
                s.ts = s.ts.wrapping_add(match kind {
                    Kind::Audio => 960,
                    Kind::Video => 3000,
                });
            }
        }
    }
}

/// Marks a client failed with the first reason given.
pub(super) fn fail(name: &str, error: &Mutex<String>, state: &AtomicU8, why: String) {
    if let Ok(mut e) = error.lock() {
        if e.is_empty() {
            *e = format!("{name}: {why}");
        }
    }
    state.store(STATE_FAILED, Ordering::Relaxed);
}

/// An RTP header with the MID extension (and a simulcast layer's RID) where negotiated.
pub(super) fn write_rtp_header(
    buf: &mut Vec<u8>,
    o: &Outgoing,
    marker: bool,
    (seq, ts): (u16, u32),
    (mid_ext, rid_ext): (Option<u8>, Option<u8>),
) {
    let elements: Vec<(u8, &[u8])> = [
        mid_ext.map(|id| (id, o.mid.as_bytes())),
        rid_ext.zip(o.rid).map(|(id, rid)| (id, rid.as_bytes())),
    ]
    .into_iter()
    .flatten()
    .collect();
    buf.push(if elements.is_empty() { 0x80 } else { 0x90 });
    buf.push(o.pt | if marker { 0x80 } else { 0 });
    buf.extend_from_slice(&seq.to_be_bytes());
    buf.extend_from_slice(&ts.to_be_bytes());
    buf.extend_from_slice(&o.ssrc.to_be_bytes());
    if !elements.is_empty() {
        // One-byte header extensions (RFC 8285), padded to whole words.
        let body: usize = elements.iter().map(|(_, d)| 1 + d.len()).sum();
        let words = body.div_ceil(4);
        buf.extend_from_slice(&[0xbe, 0xde]);
        buf.extend_from_slice(&(words as u16).to_be_bytes());
        for (id, data) in elements {
            buf.push((id << 4) | (data.len() as u8 - 1));
            buf.extend_from_slice(data);
        }
        buf.resize(buf.len() + words * 4 - body, 0);
    }
}

/// Reads the stamp of one plain RTP packet into the client's stats.
pub(super) fn receive_rtp(
    p: &[u8],
    video_pts: &[u8],
    now: u64,
    shared: &Shared,
    stats: &mut LocalStats,
) {
    let Some(payload) = rtp_payload(p) else {
        return;
    };
    let pt = p[1] & 0x7f;
    let ssrc = u32::from_be_bytes([p[8], p[9], p[10], p[11]]);
    let at = if video_pts.contains(&pt) { 2 } else { 0 };
    let Some(stamp) = payload.get(at..at + STAMP) else {
        return;
    };
    let mut w = [0u8; 8];
    w.copy_from_slice(&stamp[..8]);
    let sent = u64::from_be_bytes(w);
    w.copy_from_slice(&stamp[8..]);
    let counter = u64::from_be_bytes(w);
    let (start, end) = shared.window();
    if sent < start || sent >= end {
        return;
    }
    let e = stats.streams.entry(ssrc).or_insert(StreamLoss {
        min: counter,
        max: counter,
        received: 0,
        seen: 0,
        duplicates: 0,
    });
    if e.note(counter) {
        stats.pending.push((sent, now.saturating_sub(sent)));
    }
}

/// The payload of a plain RTP packet (after CSRCs and extensions, before padding).
pub(super) fn rtp_payload(p: &[u8]) -> Option<&[u8]> {
    if p.len() < 12 || p[0] >> 6 != 2 {
        return None;
    }
    let cc = (p[0] & 0x0f) as usize;
    let mut at = 12 + 4 * cc;
    if p[0] & 0x10 != 0 {
        let h = p.get(at..at + 4)?;
        at += 4 + 4 * u16::from_be_bytes([h[2], h[3]]) as usize;
    }
    let mut end = p.len();
    if p[0] & 0x20 != 0 {
        end = end.checked_sub(*p.last()? as usize)?;
    }
    p.get(at..end)
}

pub(super) fn keys(ep: &Endpoint, identity: &Identity) -> Result<(Context, Context), RtcError> {
    let state = ep
        .get_connection_state(PEER)
        .ok_or_else(|| RtcError::Dtls("no association".into()))?;
    // The same export as the relay's own DTLS side.
    let (profile, k) = volna::transport::webrtc::dtls::export_srtp_keys(state)
        .map_err(|e| RtcError::Srtp(e.to_string()))?;
    let k = &k;
    contexts(
        profile,
        (&k.local_master_key, &k.local_master_salt),
        (&k.remote_master_key, &k.remote_master_salt),
        identity,
    )
}

pub(super) fn contexts(
    profile: ProtectionProfile,
    local: (&[u8], &[u8]),
    remote: (&[u8], &[u8]),
    identity: &Identity,
) -> Result<(Context, Context), RtcError> {
    let crypto = identity.provider.crypto();
    let l = Context::new(local.0, local.1, profile, None, None, crypto)
        .map_err(|e| RtcError::Srtp(e.to_string()))?;
    let r = Context::new(
        remote.0,
        remote.1,
        profile,
        Some(rtc_srtp::option::srtp_replay_protection(256)),
        Some(rtc_srtp::option::srtcp_replay_protection(128)),
        crypto,
    )
    .map_err(|e| RtcError::Srtp(e.to_string()))?;
    Ok((l, r))
}
