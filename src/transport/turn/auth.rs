//! TURN credentials without state (the TURN REST scheme): the relay hands a client the username
//! `expiry:identity` (expiry in Unix seconds) and the password base64(HMAC-SHA1(secret,
//! username)); the TURN server recomputes the password from the username alone, so any node with
//! the same secret takes them. Nonces are stateless too: the time they were made and an HMAC of it
//! with the client's address under a key of this process, so no table grows with requests.

use std::net::SocketAddr;

use base64::Engine;
use ring::hmac;

/// How long a nonce is taken; after that the client is answered 438 and retries with a new one.
pub const NONCE_SECS: u64 = 600;

/// A username and password a client gives its ICE agent for this node's TURN server.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Credentials {
    pub username: String,
    pub credential: String,
}

/// Makes and checks TURN REST credentials with one shared secret.
#[derive(Clone)]
pub struct Secret(hmac::Key);

impl Secret {
    pub fn new(secret: &[u8]) -> Self {
        Self(hmac::Key::new(hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, secret))
    }

    /// Credentials for `identity` valid until `expiry` (Unix seconds). A colon in the identity
    /// is kept: only the first colon splits the username.
    pub fn mint(&self, identity: &str, expiry: u64) -> Credentials {
        let username = format!("{expiry}:{identity}");
        Credentials {
            credential: self.password(&username),
            username,
        }
    }

    /// The password for `username`.
    pub fn password(&self, username: &str) -> String {
        base64::engine::general_purpose::STANDARD.encode(hmac::sign(&self.0, username.as_bytes()))
    }
}

/// Why a username is refused.
#[derive(Debug, PartialEq, Eq, Clone, Copy)]
pub enum UsernameError {
    /// Not `expiry:identity` with a decimal expiry and a non-empty identity.
    Malformed,
    Expired,
}

/// The identity in `username` if it has not expired at `unix` (Unix seconds).
pub fn identity(username: &str, unix: u64) -> Result<&str, UsernameError> {
    let (expiry, identity) = username.split_once(':').ok_or(UsernameError::Malformed)?;
    let expiry: u64 = expiry.parse().map_err(|_| UsernameError::Malformed)?;
    if identity.is_empty() {
        return Err(UsernameError::Malformed);
    }
    if expiry <= unix {
        return Err(UsernameError::Expired);
    }
    Ok(identity)
}

/// Makes and checks nonces bound to a client address and a time.
pub struct Nonces(hmac::Key);

/// What a nonce turned out to be.
#[derive(Debug, PartialEq, Eq)]
pub enum NonceCheck {
    Fresh,
    /// Ours but older than [`NONCE_SECS`] (or from the future): 438.
    Stale,
    /// Not one we made for this client: 401 with a new one.
    Bad,
}

impl Nonces {
    pub fn new(key: &[u8]) -> Self {
        Self(hmac::Key::new(hmac::HMAC_SHA256, key))
    }

    /// A nonce for `client` made at `unix`: 16 hex digits of time, then 16 of MAC.
    pub fn make(&self, client: SocketAddr, unix: u64) -> String {
        format!("{unix:016x}{}", self.mac(client, unix))
    }

    pub fn check(&self, nonce: &str, client: SocketAddr, unix: u64) -> NonceCheck {
        if nonce.len() != 32 || !nonce.is_ascii() {
            return NonceCheck::Bad;
        }
        let Ok(made) = u64::from_str_radix(&nonce[..16], 16) else {
            return NonceCheck::Bad;
        };
        // Compared in constant time: the MAC is what an attacker cannot compute.
        let want = self.mac(client, made);
        let diff = nonce[16..]
            .bytes()
            .zip(want.bytes())
            .fold(0u8, |d, (a, b)| d | (a ^ b));
        if diff != 0 {
            return NonceCheck::Bad;
        }
        if made > unix || unix - made >= NONCE_SECS {
            return NonceCheck::Stale;
        }
        NonceCheck::Fresh
    }

    fn mac(&self, client: SocketAddr, unix: u64) -> String {
        let mut ctx = hmac::Context::with_key(&self.0);
        ctx.update(&unix.to_be_bytes());
        ctx.update(client.to_string().as_bytes());
        let tag = ctx.sign();
        tag.as_ref()[..8]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rest_credentials() {
        // The TURN REST scheme's password, as coturn's use-auth-secret computes it:
        // base64(HMAC-SHA1("secret", "1700000000:alice")).
        let s = Secret::new(b"secret");
        let c = s.mint("alice", 1_700_000_000);
        assert_eq!(c.username, "1700000000:alice");
        let want = base64::engine::general_purpose::STANDARD.encode(hmac::sign(
            &hmac::Key::new(hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, b"secret"),
            b"1700000000:alice",
        ));
        assert_eq!(c.credential, want);
        assert_eq!(c.credential.len(), 28, "20 bytes of SHA-1 in base64");
        assert_ne!(Secret::new(b"other").password(&c.username), c.credential);
    }

    #[test]
    fn usernames() {
        let cases: [(&str, u64, Result<&str, UsernameError>); 7] = [
            ("200:alice", 100, Ok("alice")),
            ("200:a:b", 100, Ok("a:b")),
            ("200:alice", 200, Err(UsernameError::Expired)),
            ("100:alice", 200, Err(UsernameError::Expired)),
            ("alice", 100, Err(UsernameError::Malformed)),
            ("x:alice", 100, Err(UsernameError::Malformed)),
            ("200:", 100, Err(UsernameError::Malformed)),
        ];
        for (u, now, want) in cases {
            assert_eq!(identity(u, now), want, "{u} at {now}");
        }
    }

    #[test]
    fn nonces() {
        let n = Nonces::new(b"k");
        let a: SocketAddr = "10.0.0.1:1000".parse().unwrap();
        let b: SocketAddr = "10.0.0.1:1001".parse().unwrap();
        let nonce = n.make(a, 1000);
        let cases: [(&str, SocketAddr, u64, NonceCheck); 7] = [
            (&nonce, a, 1000, NonceCheck::Fresh),
            (&nonce, a, 1000 + NONCE_SECS - 1, NonceCheck::Fresh),
            (&nonce, a, 1000 + NONCE_SECS, NonceCheck::Stale),
            (&nonce, a, 999, NonceCheck::Stale),
            (&nonce, b, 1000, NonceCheck::Bad),
            ("short", a, 1000, NonceCheck::Bad),
            (
                &nonce.replace(&nonce[..16], &format!("{:016x}", 1001)),
                a,
                1001,
                NonceCheck::Bad,
            ),
        ];
        for (nonce, client, now, want) in cases {
            assert_eq!(n.check(nonce, client, now), want, "{nonce} {client} {now}");
        }
        assert_eq!(
            Nonces::new(b"other").check(&n.make(a, 5), a, 5),
            NonceCheck::Bad
        );
    }
}
