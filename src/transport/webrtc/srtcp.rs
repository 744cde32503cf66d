//! SRTCP from a peer: authenticated and decrypted by the webrtc-rs SRTP context, with the two
//! checks volna keeps itself around it, because the library's own are unsafe under
//! AES-CM-HMAC-SHA1-80 (rtc-srtp 0.21):
//! - a packet whose E flag (RFC 3711 §3.4) is clear is refused: the library returns it without
//!   checking its authentication tag. WebRTC always encrypts SRTCP (RFC 8827 §6.5).
//! - the replay window is volna's, moved only by packets that authenticated: the library's is
//!   moved by a forged packet's index, so one forgery with a high index made every genuine RTCP
//!   packet after it a "duplicate".
//!
//! Per peer at most [`MAX_REMOTE_SSRCS`] SSRCs are tracked; packets of more are refused.

use bytes::BytesMut;
use rtc_srtp::context::Context;
use rtc_srtp::protection_profile::ProtectionProfile;

use super::srtp::MAX_REMOTE_SSRCS;

/// Indices remembered behind the highest (RFC 3711 §3.3.2 asks for at least 64).
const WINDOW: u64 = 128;

/// A peer's SRTCP, in.
pub struct SrtcpIn {
    /// Built without replay protection (see the module doc).
    ctx: Context,
    profile: ProtectionProfile,
    /// Per SSRC: the highest authenticated index and the window of those seen behind it.
    seen: Vec<(u32, u64, u128)>,
}

impl SrtcpIn {
    pub fn new(ctx: Context, profile: ProtectionProfile) -> Self {
        SrtcpIn {
            ctx,
            profile,
            seen: Vec::new(),
        }
    }

    /// The packet authenticated and decrypted, or `None`: refused (forged, replayed, not
    /// encrypted, too short, one SSRC too many).
    pub fn decrypt(&mut self, packet: &[u8]) -> Option<BytesMut> {
        // The E flag opens the 4-byte SRTCP index word: last under AEAD-GCM (RFC 7714 §9.1),
        // before the 10-byte tag under AES-CM-HMAC-SHA1-80.
        let tag = match self.profile {
            ProtectionProfile::AeadAes128Gcm | ProtectionProfile::AeadAes256Gcm => 0,
            _ => 10,
        };
        let at = packet.len().checked_sub(tag + 4).filter(|&at| at >= 8)?;
        let word = u32::from_be_bytes([packet[at], packet[at + 1], packet[at + 2], packet[at + 3]]);
        if word & 0x8000_0000 == 0 {
            return None;
        }
        let index = u64::from(word & 0x7fff_ffff);
        let ssrc = u32::from_be_bytes([packet[4], packet[5], packet[6], packet[7]]);
        match self.seen.iter().find(|s| s.0 == ssrc) {
            Some(&(_, top, window)) if index <= top => {
                let age = top - index;
                if age >= WINDOW || window & (1u128 << age) != 0 {
                    return None;
                }
            }
            Some(_) => {}
            None if self.seen.len() >= MAX_REMOTE_SSRCS => return None,
            None => {}
        }
        let plain = self.ctx.decrypt_rtcp(packet).ok()?;
        // Authenticated: now it may move the window.
        match self.seen.iter_mut().find(|s| s.0 == ssrc) {
            Some(s) if index > s.1 => {
                let shift = index - s.1;
                s.2 = if shift >= WINDOW { 0 } else { s.2 << shift } | 1;
                s.1 = index;
            }
            Some(s) => s.2 |= 1u128 << (s.1 - index),
            None => self.seen.push((ssrc, index, 1)),
        }
        Some(plain)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(profile: ProtectionProfile) -> (Context, SrtcpIn) {
        let provider = rtc_crypto::default_provider().unwrap();
        let salt = vec![9u8; profile.salt_len()];
        let ctx =
            || Context::new(&[7u8; 16], &salt, profile, None, None, provider.crypto()).unwrap();
        (ctx(), SrtcpIn::new(ctx(), profile))
    }

    /// A receiver report of `ssrc`.
    fn rr(ssrc: u32) -> Vec<u8> {
        let mut p = vec![0x80, 201, 0, 1];
        p.extend_from_slice(&ssrc.to_be_bytes());
        p
    }

    /// Under both profiles: genuine packets pass once, in any order within the window; a
    /// replay, a packet with the E flag cleared, and a forgery with a high index are refused,
    /// and the forgery does not make later genuine packets look replayed.
    #[test]
    fn forgeries_and_replays_are_refused_and_move_nothing() {
        for profile in [
            ProtectionProfile::AeadAes128Gcm,
            ProtectionProfile::Aes128CmHmacSha1_80,
        ] {
            let (mut tx, mut rx) = pair(profile);
            let first = tx.encrypt_rtcp(&rr(5)).unwrap();
            let second = tx.encrypt_rtcp(&rr(5)).unwrap();
            let third = tx.encrypt_rtcp(&rr(5)).unwrap();
            assert!(rx.decrypt(&second).is_some(), "{profile:?}: genuine");
            assert!(rx.decrypt(&second).is_none(), "{profile:?}: replayed");
            assert!(
                rx.decrypt(&first).is_some(),
                "{profile:?}: late but within the window"
            );
            // A forgery: the genuine packet with its index word set high and its tag broken.
            let tag = if matches!(profile, ProtectionProfile::AeadAes128Gcm) {
                0
            } else {
                10
            };
            let mut forged = third.to_vec();
            let at = forged.len() - tag - 4;
            forged[at..at + 4].copy_from_slice(&0xffff_fff0u32.to_be_bytes());
            assert!(rx.decrypt(&forged).is_none(), "{profile:?}: forged");
            assert!(
                rx.decrypt(&third).is_some(),
                "{profile:?}: the forgery moved nothing"
            );
            // The E flag cleared: refused, whatever the tag.
            let fourth = tx.encrypt_rtcp(&rr(5)).unwrap();
            let mut clear = fourth.to_vec();
            clear[at] &= 0x7f;
            assert!(rx.decrypt(&clear).is_none(), "{profile:?}: not encrypted");
            assert!(rx.decrypt(&fourth).is_some(), "{profile:?}");
        }
    }

    #[test]
    fn ssrcs_per_peer_are_capped() {
        let (mut tx, mut rx) = pair(ProtectionProfile::AeadAes128Gcm);
        for ssrc in 0..MAX_REMOTE_SSRCS as u32 {
            assert!(rx.decrypt(&tx.encrypt_rtcp(&rr(ssrc)).unwrap()).is_some());
        }
        let extra = tx.encrypt_rtcp(&rr(1_000_000)).unwrap();
        assert!(rx.decrypt(&extra).is_none(), "one SSRC too many");
    }
}
