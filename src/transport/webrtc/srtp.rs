//! SRTP for RTP packets, in place (RFC 3711, RFC 7714 for AES-GCM).
//!
//! The forward path protects each receiver's copy of a packet where it already lies, in the
//! worker's send buffer, and unprotects a publisher's packet in its receive buffer, so neither
//! direction allocates. The session keys are derived once per direction and the ciphers are kept:
//! AES-128-GCM is `ring`'s (AES-NI and CLMUL where the CPU has them), AES-CM is the `aes` crate's
//! (AES-NI detected at run time) and HMAC-SHA1 the `hmac`/`sha1` crates' (SHA-NI detected at run
//! time). SRTCP is rare and stays with
//! `rtc-srtp`.

use aes::cipher::{InnerIvInit, KeyInit, StreamCipher};
use hmac::{Hmac, Mac};
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_128_GCM};
use sha1::Sha1;

/// The two SRTP protection profiles WebRTC endpoints negotiate (RFC 5764, RFC 7714).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Profile {
    AeadAes128Gcm,
    Aes128CmHmacSha1_80,
}

impl Profile {
    pub fn master_key_len(self) -> usize {
        16
    }

    pub fn master_salt_len(self) -> usize {
        match self {
            Profile::AeadAes128Gcm => 12,
            Profile::Aes128CmHmacSha1_80 => 14,
        }
    }

    /// Bytes added to each packet: the GCM tag or the truncated HMAC.
    pub fn overhead(self) -> usize {
        match self {
            Profile::AeadAes128Gcm => GCM_TAG,
            Profile::Aes128CmHmacSha1_80 => HMAC_TAG,
        }
    }
}

const GCM_TAG: usize = 16;
const HMAC_TAG: usize = 10;
/// Replay window (RFC 3711 §3.3.2 asks for at least 64).
const REPLAY_WINDOW: u64 = 128;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SrtpError {
    #[error("master key or salt of the wrong length")]
    KeyLength,
    #[error("packet too short for an RTP header")]
    Short,
    #[error("authentication failed")]
    Auth,
    #[error("replayed packet")]
    Replay,
    #[error("more than {MAX_REMOTE_SSRCS} streams from one peer")]
    TooManyStreams,
}

/// Streams (SSRCs) one peer may send on a session: a publisher's tracks, their simulcast layers
/// and repair streams fit many times over. Past it, packets of new SSRCs are refused before any
/// work, so a peer cannot make the per-stream search long or the state large.
pub const MAX_REMOTE_SSRCS: usize = 64;

type Aes128Ctr = ctr::Ctr128BE<aes::Aes128>;

/// AES-CM keystream from a kept key schedule (cloning it copies the round keys, no allocation).
fn keystream(aes: &aes::Aes128, iv: &[u8; 16]) -> Aes128Ctr {
    Aes128Ctr::from_core(ctr::CtrCore::inner_iv_init(aes.clone(), iv.into()))
}

// Two per session, never moved on the packet path: boxing would only add a pointer chase.
#[allow(clippy::large_enum_variant)]
enum Cipher {
    Gcm {
        key: LessSafeKey,
        salt: [u8; 12],
    },
    Cm {
        aes: aes::Aes128,
        salt: [u8; 14],
        /// HMAC-SHA1 keyed once; each packet starts from a copy of this state.
        auth: Hmac<Sha1>,
    },
}

/// Roll-over counter and replay state of one SSRC.
#[derive(Clone, Copy)]
struct SsrcState {
    ssrc: u32,
    roc: u32,
    /// Highest sequence number seen (with `roc`, the highest index).
    seq: u16,
    /// Bit i set: index (highest − i) was accepted.
    window: u128,
}

/// One direction of SRTP for RTP packets.
pub struct SrtpRtp {
    cipher: Cipher,
    profile: Profile,
    ssrcs: Vec<SsrcState>,
}

/// RFC 3711 §4.3.1 key derivation (key derivation rate 0): AES-CM keystream of the master key
/// with IV = (master salt XOR label at byte 7) · 2^16; a 12-byte salt (RFC 7714) is zero-padded.
fn derive(master: &aes::Aes128, salt: &[u8], label: u8, out: &mut [u8]) {
    let mut iv = [0u8; 16];
    iv[..salt.len()].copy_from_slice(salt);
    iv[7] ^= label;
    let mut ctr = keystream(master, &iv);
    out.fill(0);
    ctr.apply_keystream(out);
}

impl SrtpRtp {
    pub fn new(profile: Profile, master_key: &[u8], master_salt: &[u8]) -> Result<Self, SrtpError> {
        if master_key.len() != profile.master_key_len()
            || master_salt.len() != profile.master_salt_len()
        {
            return Err(SrtpError::KeyLength);
        }
        let master = aes::Aes128::new_from_slice(master_key).map_err(|_| SrtpError::KeyLength)?;
        let mut session_key = [0u8; 16];
        derive(&master, master_salt, 0x00, &mut session_key);
        let cipher = match profile {
            Profile::AeadAes128Gcm => {
                let mut salt = [0u8; 12];
                derive(&master, master_salt, 0x02, &mut salt);
                let key = UnboundKey::new(&AES_128_GCM, &session_key)
                    .map_err(|_| SrtpError::KeyLength)?;
                Cipher::Gcm {
                    key: LessSafeKey::new(key),
                    salt,
                }
            }
            Profile::Aes128CmHmacSha1_80 => {
                let mut salt = [0u8; 14];
                derive(&master, master_salt, 0x02, &mut salt);
                let mut auth = [0u8; 20];
                derive(&master, master_salt, 0x01, &mut auth);
                Cipher::Cm {
                    aes: aes::Aes128::new(&session_key.into()),
                    salt,
                    auth: <Hmac<Sha1> as Mac>::new_from_slice(&auth)
                        .map_err(|_| SrtpError::KeyLength)?,
                }
            }
        };
        Ok(SrtpRtp {
            cipher,
            profile,
            // Room for the streams of a typical session; more grow the vector once.
            ssrcs: Vec::with_capacity(8),
        })
    }

    pub fn profile(&self) -> Profile {
        self.profile
    }

    /// The state of `ssrc`, created on first sight.
    fn state(&mut self, ssrc: u32, seq: u16) -> usize {
        if let Some(i) = self.ssrcs.iter().position(|s| s.ssrc == ssrc) {
            return i;
        }
        self.ssrcs.push(SsrcState {
            ssrc,
            roc: 0,
            seq,
            window: 0,
        });
        self.ssrcs.len() - 1
    }

    /// Protects the RTP packet at `buf[start..]` (header of `header_len` bytes, then payload) in
    /// place and appends the tag. `buf` keeps its capacity, so a reused buffer does not allocate.
    pub fn protect(
        &mut self,
        buf: &mut Vec<u8>,
        start: usize,
        header_len: usize,
    ) -> Result<(), SrtpError> {
        let pkt = &buf[start..];
        if pkt.len() < 12 || header_len > pkt.len() || header_len < 12 {
            return Err(SrtpError::Short);
        }
        let seq = u16::from_be_bytes([pkt[2], pkt[3]]);
        let ssrc = u32::from_be_bytes([pkt[8], pkt[9], pkt[10], pkt[11]]);
        let i = self.state(ssrc, seq);
        let st = &mut self.ssrcs[i];
        let roc = estimate_roc(st.roc, st.seq, seq);
        // The sender's own index only moves forward; resends of older packets keep their ROC.
        if roc == st.roc.wrapping_add(1) || (roc == st.roc && seq_after(seq, st.seq)) {
            st.roc = roc;
            st.seq = seq;
        }
        let hstart = start;
        let pstart = start + header_len;
        match &self.cipher {
            Cipher::Gcm { key, salt } => {
                let nonce = gcm_nonce(salt, ssrc, roc, seq);
                let (head, payload) = buf[hstart..].split_at_mut(header_len);
                let tag = key
                    .seal_in_place_separate_tag(nonce, Aad::from(&*head), payload)
                    .map_err(|_| SrtpError::Auth)?;
                buf.extend_from_slice(tag.as_ref());
            }
            Cipher::Cm { aes, salt, auth } => {
                let iv = cm_iv(salt, ssrc, roc, seq);
                let mut ctr = keystream(aes, &iv);
                ctr.apply_keystream(&mut buf[pstart..]);
                let mut mac = auth.clone();
                mac.update(&buf[hstart..]);
                mac.update(&roc.to_be_bytes());
                let tag = mac.finalize().into_bytes();
                buf.extend_from_slice(&tag[..HMAC_TAG]);
            }
        }
        Ok(())
    }

    /// Unprotects an SRTP packet in place: checks the tag and replay window, decrypts, and
    /// returns the length of the plain RTP packet (the tag is left after it).
    pub fn unprotect(&mut self, pkt: &mut [u8], header_len: usize) -> Result<usize, SrtpError> {
        let tag_len = self.profile.overhead();
        if pkt.len() < header_len + tag_len || header_len < 12 {
            return Err(SrtpError::Short);
        }
        let seq = u16::from_be_bytes([pkt[2], pkt[3]]);
        let ssrc = u32::from_be_bytes([pkt[8], pkt[9], pkt[10], pkt[11]]);
        let known_state = self.ssrcs.iter().find(|s| s.ssrc == ssrc);
        if known_state.is_none() && self.ssrcs.len() >= MAX_REMOTE_SSRCS {
            return Err(SrtpError::TooManyStreams);
        }
        let (roc, known) = match known_state {
            Some(st) => {
                let roc = estimate_roc(st.roc, st.seq, seq);
                let index = (u64::from(roc) << 16) | u64::from(seq);
                let top = (u64::from(st.roc) << 16) | u64::from(st.seq);
                if index <= top {
                    let age = top - index;
                    if age >= REPLAY_WINDOW || st.window & (1u128 << age) != 0 {
                        return Err(SrtpError::Replay);
                    }
                }
                (roc, true)
            }
            None => (0, false),
        };
        let plain_len = pkt.len() - tag_len;
        match &self.cipher {
            Cipher::Gcm { key, salt } => {
                let nonce = gcm_nonce(salt, ssrc, roc, seq);
                let (head, rest) = pkt.split_at_mut(header_len);
                key.open_in_place(nonce, Aad::from(&*head), rest)
                    .map_err(|_| SrtpError::Auth)?;
            }
            Cipher::Cm { aes, salt, auth } => {
                let mut mac = auth.clone();
                mac.update(&pkt[..plain_len]);
                mac.update(&roc.to_be_bytes());
                let tag = mac.finalize().into_bytes();
                if !constant_eq(&tag[..HMAC_TAG], &pkt[plain_len..]) {
                    return Err(SrtpError::Auth);
                }
                let iv = cm_iv(salt, ssrc, roc, seq);
                let mut ctr = keystream(aes, &iv);
                ctr.apply_keystream(&mut pkt[header_len..plain_len]);
            }
        }
        // Authenticated: now the packet may move the replay state.
        let i = if known {
            self.state(ssrc, seq)
        } else {
            let i = self.state(ssrc, seq);
            self.ssrcs[i].roc = roc;
            self.ssrcs[i].window = 1;
            return Ok(plain_len);
        };
        let st = &mut self.ssrcs[i];
        let index = (u64::from(roc) << 16) | u64::from(seq);
        let top = (u64::from(st.roc) << 16) | u64::from(st.seq);
        if index > top {
            let shift = index - top;
            st.window = if shift >= 128 { 0 } else { st.window << shift } | 1;
            st.roc = roc;
            st.seq = seq;
        } else {
            st.window |= 1u128 << (top - index);
        }
        Ok(plain_len)
    }
}

/// Whether `a` is after `b` in sequence-number order.
fn seq_after(a: u16, b: u16) -> bool {
    a != b && a.wrapping_sub(b) < 0x8000
}

/// RFC 3711 Appendix A: the roll-over counter of a packet, from the highest sequence number `s_l`
/// seen with counter `roc`.
fn estimate_roc(roc: u32, s_l: u16, seq: u16) -> u32 {
    if s_l < 0x8000 {
        if seq > s_l && seq - s_l > 0x8000 {
            roc.wrapping_sub(1)
        } else {
            roc
        }
    } else if s_l - 0x8000 > seq {
        roc.wrapping_add(1)
    } else {
        roc
    }
}

/// RFC 7714 §8.1: (0 0 | SSRC | ROC | SEQ) XOR salt.
fn gcm_nonce(salt: &[u8; 12], ssrc: u32, roc: u32, seq: u16) -> Nonce {
    let mut iv = [0u8; 12];
    iv[2..6].copy_from_slice(&ssrc.to_be_bytes());
    iv[6..10].copy_from_slice(&roc.to_be_bytes());
    iv[10..12].copy_from_slice(&seq.to_be_bytes());
    for (b, s) in iv.iter_mut().zip(salt) {
        *b ^= s;
    }
    Nonce::assume_unique_for_key(iv)
}

/// RFC 3711 §4.1.1: (salt · 2^16) XOR (SSRC · 2^64) XOR (index · 2^16).
fn cm_iv(salt: &[u8; 14], ssrc: u32, roc: u32, seq: u16) -> [u8; 16] {
    let mut iv = [0u8; 16];
    iv[4..8].copy_from_slice(&ssrc.to_be_bytes());
    iv[8..12].copy_from_slice(&roc.to_be_bytes());
    iv[12..14].copy_from_slice(&seq.to_be_bytes());
    for (b, s) in iv.iter_mut().zip(salt) {
        *b ^= s;
    }
    iv
}

fn constant_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use rtc_srtp::context::Context;
    use rtc_srtp::protection_profile::ProtectionProfile;

    fn rtc(profile: Profile, key: &[u8], salt: &[u8]) -> Context {
        let p = match profile {
            Profile::AeadAes128Gcm => ProtectionProfile::AeadAes128Gcm,
            Profile::Aes128CmHmacSha1_80 => ProtectionProfile::Aes128CmHmacSha1_80,
        };
        let provider = rtc_crypto::default_provider().expect("crypto provider");
        Context::new(key, salt, p, None, None, provider.crypto()).expect("rtc-srtp context")
    }

    fn packet(seq: u16, ssrc: u32, ext: bool, payload: usize) -> (Vec<u8>, usize) {
        let mut p = vec![0x80, 96];
        p.extend_from_slice(&seq.to_be_bytes());
        p.extend_from_slice(&0x1234_5678u32.to_be_bytes());
        p.extend_from_slice(&ssrc.to_be_bytes());
        if ext {
            p[0] |= 0x10;
            p.extend_from_slice(&[0xbe, 0xde, 0, 1, 0x10, 0x31, 0, 0]);
        }
        let h = p.len();
        p.extend((0..payload).map(|i| i as u8));
        (p, h)
    }

    /// Interop both ways with an independent implementation (the one the webrtc-rs stack uses),
    /// across a sequence-number wrap, for both profiles.
    #[test]
    fn matches_rtc_srtp_both_ways() {
        for profile in [Profile::AeadAes128Gcm, Profile::Aes128CmHmacSha1_80] {
            let key: Vec<u8> = (0..16).map(|i| i * 7 + 1).collect();
            let salt: Vec<u8> = (0..profile.master_salt_len() as u8)
                .map(|i| i * 3 + 5)
                .collect();
            let mut ours_out = SrtpRtp::new(profile, &key, &salt).unwrap();
            let mut ours_in = SrtpRtp::new(profile, &key, &salt).unwrap();
            let mut theirs_in = rtc(profile, &key, &salt);
            let mut theirs_out = rtc(profile, &key, &salt);
            for (n, seq) in (65530u16..=65535).chain(0..6).enumerate() {
                let (plain, h) = packet(seq, 0xcafe, n % 2 == 0, 100 + n * 50);
                // Ours protects, theirs unprotects.
                let mut buf = vec![0xee; 3];
                buf.extend_from_slice(&plain);
                ours_out.protect(&mut buf, 3, h).unwrap();
                assert_eq!(buf.len(), 3 + plain.len() + profile.overhead());
                let back = theirs_in
                    .decrypt_rtp(&buf[3..])
                    .expect("rtc-srtp accepts ours");
                assert_eq!(&back[..], &plain[..], "{profile:?} seq {seq}");
                // Theirs protects, ours unprotects in place.
                let mut enc = theirs_out.encrypt_rtp(&plain).unwrap().to_vec();
                let len = ours_in
                    .unprotect(&mut enc, h)
                    .expect("ours accepts rtc-srtp's");
                assert_eq!(&enc[..len], &plain[..], "{profile:?} seq {seq}");
            }
        }
    }

    #[test]
    fn rejects_tampering_replay_and_short() {
        for profile in [Profile::AeadAes128Gcm, Profile::Aes128CmHmacSha1_80] {
            let key = [9u8; 16];
            let salt = vec![4u8; profile.master_salt_len()];
            let mut tx = SrtpRtp::new(profile, &key, &salt).unwrap();
            let mut rx = SrtpRtp::new(profile, &key, &salt).unwrap();
            let protect = |tx: &mut SrtpRtp, seq| {
                let (p, h) = packet(seq, 7, false, 40);
                let mut buf = p;
                tx.protect(&mut buf, 0, h).unwrap();
                buf
            };
            let good = protect(&mut tx, 10);
            let cases: Vec<(&str, Vec<u8>, Result<usize, SrtpError>)> = vec![
                ("good", good.clone(), Ok(52)),
                ("replayed", good.clone(), Err(SrtpError::Replay)),
                (
                    "payload bit flipped",
                    {
                        let mut b = protect(&mut tx, 11);
                        b[20] ^= 1;
                        b
                    },
                    Err(SrtpError::Auth),
                ),
                (
                    "header bit flipped",
                    {
                        let mut b = protect(&mut tx, 12);
                        b[1] ^= 1;
                        b
                    },
                    Err(SrtpError::Auth),
                ),
                ("short", vec![0x80; 14], Err(SrtpError::Short)),
                ("next is fine", protect(&mut tx, 13), Ok(52)),
                ("reordered within window", protect(&mut tx, 5), Ok(52)),
            ];
            for (name, mut pkt, want) in cases {
                assert_eq!(rx.unprotect(&mut pkt, 12), want, "{profile:?}: {name}");
            }
        }
    }

    #[test]
    fn roc_estimate_table() {
        let cases = [
            // (roc, s_l, seq, want)
            (0, 100, 101, 0),
            (0, 65535, 0, 1),
            (1, 2, 65534, 0),
            (0, 40000, 5000, 1),
            (3, 30000, 63000, 2),
            (3, 30000, 31000, 3),
        ];
        for (roc, s_l, seq, want) in cases {
            assert_eq!(estimate_roc(roc, s_l, seq), want, "{roc} {s_l} {seq}");
        }
    }

    #[test]
    fn wrong_key_lengths() {
        assert!(SrtpRtp::new(Profile::AeadAes128Gcm, &[0; 16], &[0; 14]).is_err());
        assert!(SrtpRtp::new(Profile::Aes128CmHmacSha1_80, &[0; 15], &[0; 14]).is_err());
    }

    /// A peer cannot open streams without end: past `MAX_REMOTE_SSRCS` SSRCs, packets of new ones
    /// are refused (those already known go on).
    #[test]
    fn streams_per_peer_are_capped() {
        let profile = Profile::AeadAes128Gcm;
        let key = [1u8; 16];
        let salt = [2u8; 12];
        let mut out = SrtpRtp::new(profile, &key, &salt).unwrap();
        let mut inn = SrtpRtp::new(profile, &key, &salt).unwrap();
        let mut send = |ssrc: u32, seq: u16, inn: &mut SrtpRtp| {
            let (mut p, h) = packet(seq, ssrc, false, 20);
            out.protect(&mut p, 0, h).unwrap();
            inn.unprotect(&mut p, h).map(|_| ())
        };
        for ssrc in 0..MAX_REMOTE_SSRCS as u32 {
            assert_eq!(send(ssrc, 1, &mut inn), Ok(()), "stream {ssrc}");
        }
        assert_eq!(send(9999, 1, &mut inn), Err(SrtpError::TooManyStreams));
        assert_eq!(send(3, 2, &mut inn), Ok(()), "a known stream goes on");
    }
}
