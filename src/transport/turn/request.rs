//! TURN messages as a client writes them (requests signed with long-term credentials, Send
//! indications, ChannelData), and a reply's error code: what the tests and the fuzz target speak
//! to the server with.

use std::net::SocketAddr;

use rtc_crypto::RTCCryptoProvider;
use rtc_stun::attributes::*;
use rtc_stun::error_code::ErrorCodeAttribute;
use rtc_stun::integrity::MessageIntegrity;
use rtc_stun::message::*;
use rtc_stun::textattrs::TextAttribute;
use rtc_stun::xoraddr::XorMappedAddress;

/// Long-term credentials with the realm and nonce the server gave.
pub struct Creds<'a> {
    pub username: &'a str,
    pub password: &'a str,
    pub realm: &'a str,
    pub nonce: &'a str,
}

/// An attribute's value: XOR-PEER-ADDRESS for `peer` (the transaction id does not enter it).
pub fn peer_value(peer: SocketAddr) -> Vec<u8> {
    let mut m = Message::new();
    m.write_header();
    let x = XorMappedAddress {
        ip: peer.ip(),
        port: peer.port(),
    };
    match x.add_to_as(&mut m, ATTR_XOR_PEER_ADDRESS) {
        Ok(()) => m.get(ATTR_XOR_PEER_ADDRESS).unwrap_or_default(),
        Err(_) => Vec::new(),
    }
}

/// A message of `typ` with `attrs`, its transaction id `txn`, signed with `creds` when given
/// (USERNAME, REALM, NONCE, then MESSAGE-INTEGRITY last).
pub fn message(
    typ: MessageType,
    txn: [u8; 12],
    attrs: &[(AttrType, Vec<u8>)],
    creds: Option<&Creds<'_>>,
    crypto: &dyn RTCCryptoProvider,
) -> Message {
    let mut m = Message::new();
    m.typ = typ;
    m.transaction_id = TransactionId(txn);
    m.write_header();
    for (t, v) in attrs {
        m.add(*t, v);
    }
    if let Some(c) = creds {
        let text = [
            (ATTR_USERNAME, c.username),
            (ATTR_REALM, c.realm),
            (ATTR_NONCE, c.nonce),
        ];
        for (t, v) in text {
            let _ = TextAttribute::new(t, v.to_owned()).add_to(&mut m);
        }
        if let Ok(mi) = MessageIntegrity::new_long_term_integrity_with_provider(
            c.username.to_owned(),
            c.realm.to_owned(),
            c.password.to_owned(),
            crypto.crypto(),
        ) {
            let _ = mi.add_to(&mut m);
        }
    }
    m
}

/// A reply's error code (0 for a success), with its NONCE if it has one; `None` when it is not
/// a STUN response.
pub fn outcome(reply: &[u8]) -> Option<(u16, Option<String>)> {
    let mut m = Message::new();
    m.unmarshal_binary(reply).ok()?;
    let nonce = TextAttribute::get_from_as(&m, ATTR_NONCE)
        .ok()
        .map(|t| t.text);
    match m.typ.class {
        CLASS_SUCCESS_RESPONSE => Some((0, nonce)),
        CLASS_ERROR_RESPONSE => {
            let mut e = ErrorCodeAttribute::default();
            e.get_from(&m).ok()?;
            Some((e.code.0, nonce))
        }
        _ => None,
    }
}
