//! The client's ICE agent over the relay's one host candidate: connectivity checks signed with
//! the relay's password (the client is controlling when it offered), and answers to the relay's
//! checks, signed with the client's.

use super::*;

pub(super) struct Ice {
    pub(super) local_ufrag: String,
    pub(super) local_pwd: String,
    pub(super) remote_ufrag: String,
    pub(super) remote_pwd: String,
    pub(super) controlling: bool,
    pub(super) tiebreaker: u64,
    pub(super) next_check: Instant,
    pub(super) succeeded: bool,
}

impl Ice {
    pub(super) fn request(&self, crypto: &dyn rtc_crypto::RTCCrypto) -> Option<Vec<u8>> {
        let mut m = Message::new();
        m.write_header();
        let tid = TransactionId::new();
        let user = TextAttribute::new(
            ATTR_USERNAME,
            format!("{}:{}", self.remote_ufrag, self.local_ufrag),
        );
        let head: [&dyn Setter; 3] = [&BINDING_REQUEST, &tid, &user];
        for s in head {
            s.add_to(&mut m).ok()?;
        }
        // Peer-reflexive priority of a host candidate (type preference 110), RFC 8445 §5.1.2.
        m.add(
            ATTR_PRIORITY,
            &((110u32 << 24) | (65535 << 8) | 255).to_be_bytes(),
        );
        if self.controlling {
            m.add(ATTR_ICE_CONTROLLING, &self.tiebreaker.to_be_bytes());
            m.add(ATTR_USE_CANDIDATE, &[]);
        } else {
            m.add(ATTR_ICE_CONTROLLED, &self.tiebreaker.to_be_bytes());
        }
        let integrity = MessageIntegrity::new_short_term_integrity_with_provider(
            self.remote_pwd.clone(),
            crypto,
        );
        integrity.add_to(&mut m).ok()?;
        FINGERPRINT.add_to(&mut m).ok()?;
        Some(m.raw)
    }

    /// A success response to a peer's check, or `None` for anything else.
    pub(super) fn respond(
        &self,
        data: &[u8],
        from: SocketAddr,
        crypto: &dyn rtc_crypto::RTCCrypto,
    ) -> Option<Vec<u8>> {
        let mut msg = Message::new();
        msg.unmarshal_binary(data).ok()?;
        if msg.typ != BINDING_REQUEST {
            return None;
        }
        MessageIntegrity::check(&mut msg, self.local_pwd.as_bytes(), crypto).ok()?;
        let mut out = Message::new();
        out.write_header();
        let integrity = MessageIntegrity::new_short_term_integrity_with_provider(
            self.local_pwd.clone(),
            crypto,
        );
        let mapped = XorMappedAddress {
            ip: from.ip(),
            port: from.port(),
        };
        let setters: [&dyn Setter; 5] = [
            &BINDING_SUCCESS,
            &msg.transaction_id,
            &mapped,
            &integrity,
            &FINGERPRINT,
        ];
        for s in setters {
            s.add_to(&mut out).ok()?;
        }
        Some(out.raw)
    }
}
