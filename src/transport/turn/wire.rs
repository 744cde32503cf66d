//! What the TURN server reads from requests and writes in responses: why a request is refused
//! (its error code and reason), the attributes of a success (XOR-RELAYED-ADDRESS, LIFETIME,
//! XOR-MAPPED-ADDRESS), a response signed or not, and the LIFETIME and XOR-PEER-ADDRESS of a
//! request (RFC 8656 §7, §18).

use std::net::SocketAddr;
use std::time::Duration;

use rtc_crypto::RTCCrypto;
use rtc_stun::attributes::*;
use rtc_stun::error_code::*;
use rtc_stun::fingerprint::FINGERPRINT;
use rtc_stun::integrity::MessageIntegrity;
use rtc_stun::message::*;
use rtc_stun::textattrs::TextAttribute;
use rtc_stun::xoraddr::XorMappedAddress;

use super::server::{DEFAULT_LIFETIME, MAX_LIFETIME};

const SOFTWARE: &str = "volna";

/// Why a request was refused; each maps to a STUN error code and a counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Refusal {
    Challenge,
    BadCredentials,
    Expired,
    Stale,
    Forbidden,
    Quota,
    Capacity,
    Mismatch,
    WrongCredentials,
    Transport,
    Family,
    Bad,
}

impl Refusal {
    pub(super) fn code(self) -> ErrorCode {
        match self {
            Self::Challenge | Self::BadCredentials | Self::Expired => CODE_UNAUTHORIZED,
            Self::Stale => CODE_STALE_NONCE,
            Self::Forbidden => CODE_FORBIDDEN,
            Self::Quota => CODE_ALLOC_QUOTA_REACHED,
            Self::Capacity => CODE_INSUFFICIENT_CAPACITY,
            Self::Mismatch => CODE_ALLOC_MISMATCH,
            Self::WrongCredentials => CODE_WRONG_CREDENTIALS,
            Self::Transport => CODE_UNSUPPORTED_TRANS_PROTO,
            Self::Family => CODE_PEER_ADDR_FAMILY_MISMATCH,
            Self::Bad => CODE_BAD_REQUEST,
        }
    }

    pub(super) fn reason(self) -> &'static str {
        match self {
            Self::Challenge => "Unauthorized",
            Self::BadCredentials => "Unauthorized: bad credentials",
            Self::Expired => "Unauthorized: credentials expired",
            Self::Stale => "Stale Nonce",
            Self::Forbidden => "Forbidden: this server relays only to its own media addresses",
            Self::Quota => "Allocation Quota Reached",
            Self::Capacity => "Insufficient Capacity",
            Self::Mismatch => "Allocation Mismatch",
            Self::WrongCredentials => "Wrong Credentials",
            Self::Transport => "Unsupported Transport Protocol: UDP only",
            Self::Family => "Peer Address Family Mismatch",
            Self::Bad => "Bad Request",
        }
    }

    /// Whether the answer carries REALM and a new NONCE (the client may try again).
    pub(super) fn challenges(self) -> bool {
        matches!(
            self,
            Self::Challenge | Self::BadCredentials | Self::Expired | Self::Stale
        )
    }
}

/// A response to `req` of `class` with `attrs`, SOFTWARE first, MESSAGE-INTEGRITY with `key`
/// (for authenticated requests) and FINGERPRINT last.
pub(super) fn response(
    req: &Message,
    class: MessageClass,
    key: Option<&[u8]>,
    attrs: &[&dyn Setter],
    crypto: &dyn RTCCrypto,
) -> Vec<u8> {
    let mut r = Message::new();
    r.typ = MessageType::new(req.typ.method, class);
    r.transaction_id = req.transaction_id;
    r.write_header();
    let software = TextAttribute::new(ATTR_SOFTWARE, SOFTWARE.to_owned());
    let _ = software.add_to(&mut r);
    for a in attrs {
        // Our own attributes are well-formed: a failure here would be a bug, and the
        // response simply goes without that attribute.
        let _ = a.add_to(&mut r);
    }
    if let Some(key) = key {
        let mi = MessageIntegrity::new_raw_integrity_with_provider(key.to_vec(), crypto);
        let _ = mi.add_to(&mut r);
    }
    let _ = FINGERPRINT.add_to(&mut r);
    r.raw
}

/// Attributes of a success response.
pub(super) enum Attr {
    Relayed(SocketAddr),
    Mapped(SocketAddr),
    Lifetime(Duration),
}

impl Setter for Attr {
    fn add_to(&self, m: &mut Message) -> Result<(), rtc_shared::error::Error> {
        match self {
            Attr::Relayed(a) | Attr::Mapped(a) => {
                let x = XorMappedAddress {
                    ip: a.ip(),
                    port: a.port(),
                };
                let t = if matches!(self, Attr::Relayed(_)) {
                    ATTR_XOR_RELAYED_ADDRESS
                } else {
                    ATTR_XORMAPPED_ADDRESS
                };
                x.add_to_as(m, t)
            }
            Attr::Lifetime(d) => {
                m.add(ATTR_LIFETIME, &(d.as_secs() as u32).to_be_bytes());
                Ok(())
            }
        }
    }
}

pub(super) fn allocate_attrs(
    relayed: SocketAddr,
    mapped: SocketAddr,
    lifetime: Duration,
) -> Vec<Attr> {
    vec![
        Attr::Relayed(relayed),
        Attr::Lifetime(lifetime),
        Attr::Mapped(mapped),
    ]
}

/// The lifetime a request asks, within bounds (RFC 8656 §7.2: the default when none).
pub(super) fn lifetime(m: &Message) -> Duration {
    match m.get(ATTR_LIFETIME) {
        Ok(v) if v.len() == 4 => {
            let asked =
                Duration::from_secs(u64::from(u32::from_be_bytes([v[0], v[1], v[2], v[3]])));
            asked.clamp(DEFAULT_LIFETIME, MAX_LIFETIME)
        }
        _ => DEFAULT_LIFETIME,
    }
}

pub(super) fn peer_address(m: &Message) -> Option<SocketAddr> {
    let mut x = XorMappedAddress::default();
    x.get_from_as(m, ATTR_XOR_PEER_ADDRESS).ok()?;
    Some(SocketAddr::new(x.ip, x.port))
}
