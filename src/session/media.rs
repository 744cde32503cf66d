//! The packet path of a worker's WebRTC sessions: each datagram demultiplexed by its first byte
//! (RFC 7983) into STUN (ICE-lite checks, consent answers, path moves), DTLS (the handshake that
//! yields SRTP keys) and SRTP (decrypted and handed to the relay core).

use std::net::SocketAddr;
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use rand::Rng;
use tracing::{debug, info, warn};

use super::connection::Role;
use super::shard::{CloseCause, Shard};
use crate::core::room::SessionId;
use crate::core::rtp::{header_len, is_rtcp, RtpView};
use crate::transport::webrtc::dtls::DtlsOutput;
use crate::transport::webrtc::ice::{self, BindingRequest, BindingResponse};
use crate::transport::webrtc::path::Probe;

impl Shard {
    /// One datagram from the media socket.
    ///
    /// The buffer is the datagram's receive slot: SRTP is decrypted in it and the packet, frozen,
    /// is what receivers and the retransmit cache share.
    pub fn handle_datagram(&mut self, now: Instant, from: SocketAddr, buf: BytesMut) {
        self.datagrams_in += 1;
        let Some(&first) = buf.first() else {
            self.junk(from, "empty datagram");
            return;
        };
        match first {
            0..=3 => self.handle_stun(now, from, &buf),
            20..=63 => self.handle_dtls(now, from, &buf),
            128..=191 => self.handle_srtp(now, from, buf),
            _ => self.junk(from, "unknown first byte"),
        }
    }

    /// Counts a dropped datagram (QUIC flows report theirs here).
    pub fn count_junk(&mut self) {
        self.junk += 1;
    }

    pub(super) fn junk(&mut self, from: SocketAddr, why: &str) {
        self.junk += 1;
        debug!(peer = %from, why, "dropped datagram");
    }

    pub(super) fn handle_stun(&mut self, now: Instant, from: SocketAddr, buf: &[u8]) {
        let req = match BindingRequest::parse(buf) {
            Ok(r) => r,
            Err(ice::IceError::NotBindingRequest) => {
                return self.handle_consent_answer(now, from, buf)
            }
            Err(e) => return self.junk(from, &e.to_string()),
        };
        let Some(&id) = self.by_ufrag.get(&req.local_ufrag) else {
            return self.junk(from, "STUN for unknown ufrag");
        };
        let Some(s) = self.sessions.get_mut(&id) else {
            return;
        };
        // A subscriber's checks can arrive before its answer: learn the ufrag from the first
        // authenticated one, and hold the answer to it (see `apply_answer`).
        let learn = s.remote_ufrag.is_empty();
        if !learn && req.remote_ufrag != s.remote_ufrag {
            return self.junk(from, "STUN with wrong remote ufrag");
        }
        let use_candidate = req.use_candidate;
        let remote_ufrag = learn.then(|| req.remote_ufrag.clone());
        let resp = match req.respond(&s.local_pwd, from, self.identity.provider.crypto()) {
            Ok(r) => r,
            Err(e) => return self.junk(from, &e.to_string()),
        };
        if let Some(u) = remote_ufrag {
            s.remote_ufrag = u;
        }
        s.last_rx = now;
        let take_path = use_candidate || !s.nominated;
        s.nominated |= use_candidate;
        self.by_addr.insert(from, id);
        self.send.push(from, &resp);
        if take_path {
            self.take_path(
                now,
                id,
                from,
                if use_candidate { "nominated" } else { "check" },
            );
        }
        // A DTLS client starts its flight once the path exists.
        self.flush_dtls(id);
    }

    /// Media goes to `to` from now on, unless the session moved too often lately. A move of a
    /// connected receiving session asks its video from a key frame.
    pub(super) fn take_path(
        &mut self,
        now: Instant,
        id: SessionId,
        to: SocketAddr,
        why: &'static str,
    ) {
        let Some(s) = self.sessions.get_mut(&id) else {
            return;
        };
        let from = s.remote;
        let connected = s.srtp.is_some();
        match from {
            Some(old) if old == to => return,
            // Before media flows, checks from several candidates may take turns.
            Some(old) if !connected => debug!(session = id, from = %old, to = %to, why, "ICE path"),
            Some(old) => {
                if !s.path.may_move(now) {
                    self.path_switches_refused += 1;
                    // Logged at 1, 2, 4, 8… refusals: a peer that keeps trying cannot flood the log.
                    if self.path_switches_refused.is_power_of_two() {
                        warn!(session = id, from = %old, to = %to, why, refused = self.path_switches_refused, "ICE path move refused: too many moves lately");
                    }
                    return;
                }
                s.path.moved(now);
                self.path_switches += 1;
                info!(session = id, from = %old, to = %to, why, "ICE path moved");
            }
            None => debug!(session = id, peer = %to, why, "ICE path"),
        }
        s.remote = Some(to);
        self.by_addr.insert(to, id);
        self.paths.set(id, from, to);
        if from.is_some() && connected {
            let (relay, mut out) = self.relay_and_out();
            relay.viewer_moved(now, id, &mut out);
        }
    }

    /// SRTP from an address no session has: if sessions have their peer at that IP (a NAT that
    /// gave the peer a new port), each gets one consent check there; the datagram is dropped.
    pub(super) fn check_new_address(&mut self, now: Instant, from: SocketAddr) {
        let crypto = self.identity.provider.crypto();
        let ids: Vec<SessionId> = self.paths.sessions_at(from.ip()).collect();
        for id in ids {
            if !self.paths.has_room() {
                return;
            }
            let Some(s) = self.sessions.get_mut(&id) else {
                continue;
            };
            if s.srtp.is_none() || s.remote_pwd.is_empty() || s.remote_ufrag.is_empty() {
                continue;
            }
            if !s.path.take_probe(now) {
                continue;
            }
            let transaction: [u8; 12] = self.rng.gen();
            let req = match ice::consent_request(
                transaction,
                &s.remote_ufrag,
                &s.local_ufrag,
                &s.remote_pwd,
                self.tie_breaker,
                crypto,
            ) {
                Ok(r) => r,
                Err(e) => {
                    warn!(session = id, error = %e, "consent check not built");
                    continue;
                }
            };
            debug!(session = id, to = %from, "consent check to a new address");
            self.paths.sent(
                transaction,
                Probe {
                    session: id,
                    to: from,
                    sent: now,
                },
            );
            self.consent_checks += 1;
            self.send.push(from, &req);
        }
    }

    /// A Binding success response: the answer to a consent check moves the session there.
    pub(super) fn handle_consent_answer(&mut self, now: Instant, from: SocketAddr, buf: &[u8]) {
        let resp = match BindingResponse::parse(buf) {
            Ok(r) => r,
            Err(e) => return self.junk(from, &e.to_string()),
        };
        let probe = match self.paths.answered(now, &resp.transaction, from) {
            Ok(p) => p,
            Err(e) => return self.junk(from, &e.to_string()),
        };
        let Some(s) = self.sessions.get_mut(&probe.session) else {
            return;
        };
        let transaction = resp.transaction;
        if let Err(e) = resp.verify(&s.remote_pwd, self.identity.provider.crypto()) {
            return self.junk(from, &e.to_string());
        }
        s.last_rx = now;
        self.paths.settle(&transaction);
        self.take_path(now, probe.session, from, "consent");
    }

    pub(super) fn flush_dtls(&mut self, id: SessionId) {
        let Some(s) = self.sessions.get_mut(&id) else {
            return;
        };
        let (Some(addr), Some(d)) = (s.remote, s.dtls.as_mut()) else {
            return;
        };
        while let Some(data) = d.poll_transmit() {
            self.send.push(addr, &data);
        }
    }

    pub(super) fn handle_dtls(&mut self, now: Instant, from: SocketAddr, buf: &[u8]) {
        let Some(&id) = self.by_addr.get(&from) else {
            return self.junk(from, "DTLS from unknown address");
        };
        self.feed_dtls(now, id, from, buf);
    }

    /// One DTLS datagram for session `id`.
    pub(super) fn feed_dtls(&mut self, now: Instant, id: SessionId, from: SocketAddr, buf: &[u8]) {
        let Some(s) = self.sessions.get_mut(&id) else {
            return;
        };
        s.last_rx = now;
        let Some(dtls) = s.dtls.as_mut() else {
            // Before a subscriber's answer: keep a few datagrams for when it comes.
            if s.negotiation.early_dtls.len() < 8 {
                s.negotiation.early_dtls.push(buf.to_vec());
            }
            return;
        };
        let result = dtls.handle_datagram(now, buf);
        self.flush_dtls(id);
        match result {
            Ok(Some(DtlsOutput::Connected(keys))) => {
                let Some(s) = self.sessions.get_mut(&id) else {
                    return;
                };
                info!(session = id, room = %s.room, peer = %from, profile = ?keys.profile, elapsed_ms = now.duration_since(s.created).as_millis() as u64, "DTLS connected");
                s.srtp = Some(*keys);
                // Drained by the worker every loop; the bound only matters without one.
                if self.connected_paths.len() < 1024 {
                    self.connected_paths.push(from);
                }
                self.on_connected(now, id);
            }
            Ok(Some(DtlsOutput::PeerClosed)) => self.close(now, id, CloseCause::PeerClosed),
            Ok(None) => {}
            Err(e) => {
                self.junk += 1;
                self.dtls_errors += 1;
                // Logged at 1, 2, 4, 8… errors: a peer sending bad records cannot flood the log.
                if self.dtls_errors.is_power_of_two() {
                    warn!(session = id, peer = %from, error = %e, errors = self.dtls_errors, "DTLS error");
                } else {
                    debug!(session = id, peer = %from, error = %e, "DTLS error");
                }
            }
        }
    }

    /// SRTP is up: a viewer starts receiving; a subscriber gets the tracks its answer accepted.
    pub(super) fn on_connected(&mut self, now: Instant, id: SessionId) {
        let Some(s) = self.sessions.get_mut(&id) else {
            return;
        };
        match s.role {
            Role::Viewer => {
                let tracks = s.pending_viewer.take().unwrap_or_default();
                self.start_viewing(now, id, tracks);
                if self.relay.live_viewer_tracks(id) == 0 {
                    self.close(now, id, CloseCause::PublisherLeft);
                }
            }
            Role::Subscriber => self.attach_accepted_lines(now, id),
            Role::Publisher => {}
        }
    }

    pub(super) fn handle_srtp(&mut self, now: Instant, from: SocketAddr, mut buf: BytesMut) {
        let Some(&id) = self.by_addr.get(&from) else {
            self.check_new_address(now, from);
            return self.junk(from, "SRTP from unknown address");
        };
        let Some(s) = self.sessions.get_mut(&id) else {
            return;
        };
        let role = s.role;
        let Some(keys) = s.srtp.as_mut() else {
            return self.junk(from, "SRTP before DTLS");
        };
        if is_rtcp(&buf) {
            let Some(plain) = keys.decrypt_rtcp(&buf) else {
                return self.junk(from, "SRTCP unprotect failed");
            };
            s.last_rx = now;
            self.relay_rtcp(now, id, role, &plain);
            return;
        }
        if role != Role::Publisher {
            return self.junk(from, "RTP from a receiving session");
        }
        // The header is authenticated but not encrypted: its length comes from the packet itself.
        let Ok(header_len) = header_len(&buf) else {
            return self.junk(from, "malformed RTP");
        };
        let len = match keys.rtp_in.unprotect(&mut buf, header_len) {
            Ok(n) => n,
            Err(_) => return self.junk(from, "SRTP unprotect failed"),
        };
        s.last_rx = now;
        buf.truncate(len);
        // Frozen, the decrypted slot is shared by the forward path and the retransmit cache.
        let plain = buf.freeze();
        let view = match RtpView::parse(&plain) {
            Ok(v) => v,
            Err(_) => return self.junk(from, "malformed RTP"),
        };
        self.relay_rtp(now, id, &plain, &view);
    }

    /// Plain RTCP from a session (whatever its transport), to the relay.
    pub(super) fn relay_rtcp(&mut self, now: Instant, id: SessionId, role: Role, packet: &[u8]) {
        let (relay, mut out) = self.relay_and_out();
        match role {
            Role::Publisher => relay.handle_publisher_rtcp(now, id, packet, &mut out),
            Role::Viewer | Role::Subscriber => relay.handle_viewer_rtcp(now, id, packet, &mut out),
        }
    }

    /// A plain RTP packet from a publisher session (whatever its transport), to the relay.
    pub(super) fn relay_rtp(
        &mut self,
        now: Instant,
        id: SessionId,
        packet: &Bytes,
        view: &RtpView,
    ) {
        let (relay, mut out) = self.relay_and_out();
        relay.handle_rtp(now, id, packet, view, &mut out);
        self.drain_relay_events();
    }
}
