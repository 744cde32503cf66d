//! ICE-lite (RFC 8445 §2.5): volna answers the peer's Binding requests with MESSAGE-INTEGRITY and
//! FINGERPRINT (RFC 8489), and takes the address of a valid, nominated request as the path to the
//! peer. The one request volna sends is a consent check (RFC 7675) to a peer's new address after
//! a NAT rebinding (see `path`): built here, with its answer checked here.

use std::net::SocketAddr;

use rtc_crypto::RTCCrypto;
use rtc_stun::attributes::{
    RawAttribute, ATTR_ICE_CONTROLLED, ATTR_PRIORITY, ATTR_USERNAME, ATTR_USE_CANDIDATE,
};
use rtc_stun::fingerprint::FINGERPRINT;
use rtc_stun::integrity::MessageIntegrity;
use rtc_stun::message::{Message, Setter, TransactionId, BINDING_REQUEST, BINDING_SUCCESS};
use rtc_stun::textattrs::TextAttribute;
use rtc_stun::xoraddr::XorMappedAddress;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum IceError {
    #[error("not a STUN message: {0}")]
    Malformed(String),
    #[error("not a Binding request")]
    NotBindingRequest,
    #[error("not a Binding success response")]
    NotBindingSuccess,
    #[error("no USERNAME")]
    NoUsername,
    #[error("bad FINGERPRINT")]
    Fingerprint,
    #[error("bad MESSAGE-INTEGRITY")]
    Integrity,
    #[error("building the response failed: {0}")]
    Build(String),
}

/// A Binding request, decoded far enough to find its session.
pub struct BindingRequest {
    msg: Message,
    /// Our ufrag: the part of USERNAME before the colon.
    pub local_ufrag: String,
    pub remote_ufrag: String,
    pub use_candidate: bool,
}

impl BindingRequest {
    pub fn parse(buf: &[u8]) -> Result<Self, IceError> {
        let mut msg = Message::new();
        msg.unmarshal_binary(buf)
            .map_err(|e| IceError::Malformed(e.to_string()))?;
        if msg.typ != BINDING_REQUEST {
            return Err(IceError::NotBindingRequest);
        }
        FINGERPRINT.check(&msg).map_err(|_| IceError::Fingerprint)?;
        let username = TextAttribute::get_from_as(&msg, ATTR_USERNAME)
            .map_err(|_| IceError::NoUsername)?
            .text;
        let (local, remote) = username.split_once(':').ok_or(IceError::NoUsername)?;
        Ok(Self {
            local_ufrag: local.to_owned(),
            remote_ufrag: remote.to_owned(),
            use_candidate: msg.contains(ATTR_USE_CANDIDATE),
            msg,
        })
    }

    /// Checks MESSAGE-INTEGRITY with our password and builds the success response.
    pub fn respond(
        mut self,
        local_pwd: &str,
        from: SocketAddr,
        crypto: &dyn RTCCrypto,
    ) -> Result<Vec<u8>, IceError> {
        MessageIntegrity::check(&mut self.msg, local_pwd.as_bytes(), crypto)
            .map_err(|_| IceError::Integrity)?;
        let mut out = Message::new();
        out.write_header();
        let integrity =
            MessageIntegrity::new_short_term_integrity_with_provider(local_pwd.to_owned(), crypto);
        let mapped = XorMappedAddress {
            ip: from.ip(),
            port: from.port(),
        };
        let setters: [&dyn Setter; 5] = [
            &BINDING_SUCCESS,
            &self.msg.transaction_id,
            &mapped,
            &integrity,
            &FINGERPRINT,
        ];
        for s in setters {
            s.add_to(&mut out)
                .map_err(|e| IceError::Build(e.to_string()))?;
        }
        Ok(out.raw)
    }
}

/// A consent check to the peer at a new address (RFC 7675 §5.1): USERNAME is the peer's ufrag
/// then ours, MESSAGE-INTEGRITY uses the peer's password, and volna says it is the controlled
/// agent. Only the peer that holds that password can answer it.
pub fn consent_request(
    transaction: [u8; 12],
    remote_ufrag: &str,
    local_ufrag: &str,
    remote_pwd: &str,
    tie_breaker: u64,
    crypto: &dyn RTCCrypto,
) -> Result<Vec<u8>, IceError> {
    let mut m = Message::new();
    m.write_header();
    let tid = TransactionId(transaction);
    let user = TextAttribute::new(ATTR_USERNAME, format!("{remote_ufrag}:{local_ufrag}"));
    // A peer-reflexive candidate's priority (type preference 110, RFC 8445 §5.1.2.1).
    let priority = RawAttribute {
        typ: ATTR_PRIORITY,
        length: 4,
        value: ((110u32 << 24) | (65535 << 8) | 255).to_be_bytes().to_vec(),
    };
    let controlled = RawAttribute {
        typ: ATTR_ICE_CONTROLLED,
        length: 8,
        value: tie_breaker.to_be_bytes().to_vec(),
    };
    let integrity =
        MessageIntegrity::new_short_term_integrity_with_provider(remote_pwd.to_owned(), crypto);
    let setters: [&dyn Setter; 7] = [
        &BINDING_REQUEST,
        &tid,
        &user,
        &priority,
        &controlled,
        &integrity,
        &FINGERPRINT,
    ];
    for s in setters {
        s.add_to(&mut m)
            .map_err(|e| IceError::Build(e.to_string()))?;
    }
    Ok(m.raw)
}

/// A Binding success response, decoded far enough to find the check it answers.
pub struct BindingResponse {
    msg: Message,
    pub transaction: [u8; 12],
}

impl BindingResponse {
    pub fn parse(buf: &[u8]) -> Result<Self, IceError> {
        let mut msg = Message::new();
        msg.unmarshal_binary(buf)
            .map_err(|e| IceError::Malformed(e.to_string()))?;
        if msg.typ != BINDING_SUCCESS {
            return Err(IceError::NotBindingSuccess);
        }
        FINGERPRINT.check(&msg).map_err(|_| IceError::Fingerprint)?;
        Ok(Self {
            transaction: msg.transaction_id.0,
            msg,
        })
    }

    /// Checks MESSAGE-INTEGRITY with the password the check was signed with (the peer's).
    pub fn verify(mut self, remote_pwd: &str, crypto: &dyn RTCCrypto) -> Result<(), IceError> {
        MessageIntegrity::check(&mut self.msg, remote_pwd.as_bytes(), crypto)
            .map_err(|_| IceError::Integrity)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rtc_stun::message::TransactionId;

    fn request(username: &str, pwd: &str, nominate: bool) -> Vec<u8> {
        let provider = rtc_crypto::default_provider().unwrap();
        let mut m = Message::new();
        m.write_header();
        let user = TextAttribute::new(ATTR_USERNAME, username.to_owned());
        let integrity = MessageIntegrity::new_short_term_integrity_with_provider(
            pwd.to_owned(),
            provider.crypto(),
        );
        let tid = TransactionId::new();
        let mut setters: Vec<&dyn Setter> = vec![&BINDING_REQUEST, &tid, &user];
        let flag = rtc_stun::attributes::RawAttribute {
            typ: ATTR_USE_CANDIDATE,
            length: 0,
            value: vec![],
        };
        if nominate {
            setters.push(&flag);
        }
        setters.push(&integrity);
        setters.push(&FINGERPRINT);
        for s in setters {
            s.add_to(&mut m).unwrap();
        }
        m.raw
    }

    #[test]
    fn answers_valid_request() {
        let provider = rtc_crypto::default_provider().unwrap();
        let from: SocketAddr = "127.0.0.1:40000".parse().unwrap();
        let req = BindingRequest::parse(&request("ours:theirs", "secretpassword", true)).unwrap();
        assert_eq!(
            (
                req.local_ufrag.as_str(),
                req.remote_ufrag.as_str(),
                req.use_candidate
            ),
            ("ours", "theirs", true)
        );
        let resp = req
            .respond("secretpassword", from, provider.crypto())
            .unwrap();
        let mut m = Message::new();
        m.unmarshal_binary(&resp).unwrap();
        assert_eq!(m.typ, BINDING_SUCCESS);
        let mut mapped = XorMappedAddress::default();
        mapped
            .get_from_as(&m, rtc_stun::attributes::ATTR_XORMAPPED_ADDRESS)
            .unwrap();
        assert_eq!(SocketAddr::new(mapped.ip, mapped.port), from);
        MessageIntegrity::check(&mut m, b"secretpassword", provider.crypto()).unwrap();
        FINGERPRINT.check(&m).unwrap();
    }

    #[test]
    fn rejects_bad_requests() {
        let provider = rtc_crypto::default_provider().unwrap();
        let from: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let wrong_pwd = BindingRequest::parse(&request("a:b", "otherpassword", false)).unwrap();
        assert_eq!(
            wrong_pwd
                .respond("secretpassword", from, provider.crypto())
                .err(),
            Some(IceError::Integrity)
        );
        assert!(matches!(
            BindingRequest::parse(&[0, 1, 0, 0]),
            Err(IceError::Malformed(_))
        ));
        assert_eq!(
            BindingRequest::parse(&request("nocolon", "p", false)).err(),
            Some(IceError::NoUsername)
        );
        let mut tampered = request("a:b", "p", false);
        let n = tampered.len();
        tampered[n - 1] ^= 1;
        assert_eq!(
            BindingRequest::parse(&tampered).err(),
            Some(IceError::Fingerprint)
        );
    }

    #[test]
    fn consent_check_round_trip() {
        let provider = rtc_crypto::default_provider().unwrap();
        let crypto = provider.crypto();
        let volna: SocketAddr = "10.0.0.1:3478".parse().unwrap();
        let req = consent_request([7; 12], "peer", "ours", "peerpassword", 42, crypto).unwrap();
        // The peer sees a request to its ufrag from ours, controlled, with a priority.
        let seen = BindingRequest::parse(&req).unwrap();
        assert_eq!(
            (
                seen.local_ufrag.as_str(),
                seen.remote_ufrag.as_str(),
                seen.use_candidate
            ),
            ("peer", "ours", false)
        );
        assert!(seen.msg.contains(ATTR_ICE_CONTROLLED) && seen.msg.contains(ATTR_PRIORITY));
        let answer = seen.respond("peerpassword", volna, crypto).unwrap();
        let resp = BindingResponse::parse(&answer).unwrap();
        assert_eq!(resp.transaction, [7; 12]);
        assert_eq!(resp.verify("peerpassword", crypto), Ok(()));
        // Signed with another password (not the peer's), or not a success response: refused.
        let other = consent_request([7; 12], "peer", "ours", "otherpassword", 42, crypto).unwrap();
        let forged = BindingRequest::parse(&other)
            .unwrap()
            .respond("otherpassword", volna, crypto)
            .unwrap();
        assert_eq!(
            BindingResponse::parse(&forged)
                .unwrap()
                .verify("peerpassword", crypto),
            Err(IceError::Integrity)
        );
        assert_eq!(
            BindingResponse::parse(&req).err(),
            Some(IceError::NotBindingSuccess)
        );
    }
}
