//! Access tokens: JWTs signed with HS256 by keys from the config (several, for rotation). A token
//! names one room and an identity, and grants publishing and/or subscribing until it expires; an
//! admin token (`admin: true`, any room) reads /stats and /metrics and may end any session.
//! With no keys configured the node runs in dev mode: everything is allowed.

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{decode, encode, Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use crate::session::Grants;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// The room the token is for.
    pub room: String,
    /// The participant's identity.
    pub sub: String,
    /// May publish media.
    #[serde(default)]
    pub publish: bool,
    /// May receive media.
    #[serde(default)]
    pub subscribe: bool,
    /// Expiry, seconds since the Unix epoch.
    pub exp: u64,
    /// An operator's token: /stats, /metrics, and any session of any room.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub admin: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("missing token (send Authorization: Bearer <token>)")]
    Missing,
    #[error("token expired")]
    Expired,
    #[error("invalid token: {0}")]
    Invalid(String),
    #[error("token is for room {0:?}")]
    WrongRoom(String),
    #[error("token does not allow {0}")]
    NotGranted(&'static str),
}

impl AuthError {
    /// HTTP status: 401 when the token is missing or bad, 403 when it is good but not enough.
    pub fn status(&self) -> u16 {
        match self {
            AuthError::Missing | AuthError::Expired | AuthError::Invalid(_) => 401,
            AuthError::WrongRoom(_) | AuthError::NotGranted(_) => 403,
        }
    }

    pub fn reason(&self) -> &'static str {
        match self {
            AuthError::Missing => "missing_token",
            AuthError::Expired => "token_expired",
            AuthError::Invalid(_) => "invalid_token",
            AuthError::WrongRoom(_) => "wrong_room",
            AuthError::NotGranted(_) => "forbidden",
        }
    }
}

/// Who the caller is and what it may do in a room.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Access {
    pub identity: Option<String>,
    pub grants: Grants,
    /// An admin token (or dev mode).
    pub admin: bool,
}

impl Access {
    /// Whether this caller may end or restart a session created by `owner` (`None`: created in
    /// dev mode, by anyone).
    pub fn may_act_for(&self, owner: Option<&str>) -> bool {
        self.admin || owner.is_none() || self.identity.as_deref() == owner
    }
}

#[derive(Clone)]
pub struct Auth {
    keys: Vec<String>,
}

impl Auth {
    pub fn new(keys: Vec<String>) -> Self {
        Self { keys }
    }

    pub fn dev_mode(&self) -> bool {
        self.keys.is_empty()
    }

    /// Checks `token` for `room` (any room when `None`). In dev mode anything (or nothing)
    /// passes with every grant.
    pub fn check(
        &self,
        token: Option<&str>,
        room: Option<&str>,
        now_secs: u64,
    ) -> Result<Access, AuthError> {
        if self.dev_mode() {
            return Ok(Access {
                identity: None,
                grants: Grants {
                    publish: true,
                    subscribe: true,
                },
                admin: true,
            });
        }
        let token = token.filter(|t| !t.is_empty()).ok_or(AuthError::Missing)?;
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = 0;
        validation.validate_exp = false; // checked below against the caller's clock
        validation.set_required_spec_claims(&["exp", "sub"]);
        let mut last = AuthError::Invalid("no key accepts it".into());
        for key in &self.keys {
            match decode::<Claims>(
                token,
                &DecodingKey::from_secret(key.as_bytes()),
                &validation,
            ) {
                Ok(data) => {
                    let c = data.claims;
                    if c.exp <= now_secs {
                        return Err(AuthError::Expired);
                    }
                    if !c.admin && room.is_some_and(|r| r != c.room) {
                        return Err(AuthError::WrongRoom(c.room));
                    }
                    return Ok(Access {
                        identity: Some(c.sub),
                        grants: Grants {
                            publish: c.publish,
                            subscribe: c.subscribe,
                        },
                        admin: c.admin,
                    });
                }
                Err(e) if matches!(e.kind(), ErrorKind::InvalidSignature) => continue,
                Err(e) => last = AuthError::Invalid(e.to_string()),
            }
        }
        Err(last)
    }

    /// Checks an operator's token (dev mode: anything passes).
    pub fn check_admin(&self, token: Option<&str>, now_secs: u64) -> Result<(), AuthError> {
        let access = self.check(token, None, now_secs)?;
        if access.admin {
            Ok(())
        } else {
            Err(AuthError::NotGranted("admin access"))
        }
    }

    /// Signs a token with the first key.
    pub fn sign(&self, claims: &Claims) -> Result<String, AuthError> {
        let key = self
            .keys
            .first()
            .ok_or_else(|| AuthError::Invalid("no [auth] keys configured".into()))?;
        encode(
            &Header::new(Algorithm::HS256),
            claims,
            &EncodingKey::from_secret(key.as_bytes()),
        )
        .map_err(|e| AuthError::Invalid(e.to_string()))
    }
}

/// Seconds since the Unix epoch.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The token of an `Authorization: Bearer` header.
pub fn bearer(headers: &axum::http::HeaderMap) -> Option<&str> {
    let v = headers
        .get(axum::http::header::AUTHORIZATION)?
        .to_str()
        .ok()?;
    let (scheme, token) = v.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY_A: &str = "first-key-0123456789";
    const KEY_B: &str = "second-key-0123456789";

    fn claims(room: &str, exp: u64) -> Claims {
        Claims {
            room: room.into(),
            sub: "alice".into(),
            publish: true,
            subscribe: false,
            exp,
            admin: false,
        }
    }

    #[test]
    fn table() {
        let old = Auth::new(vec![KEY_B.into()]);
        let auth = Auth::new(vec![KEY_A.into(), KEY_B.into()]);
        let now = 1_000_000;
        let good = auth.sign(&claims("r", now + 60)).unwrap();
        let rotated = old.sign(&claims("r", now + 60)).unwrap();
        let expired = auth.sign(&claims("r", now - 1)).unwrap();
        let other_room = auth.sign(&claims("s", now + 60)).unwrap();
        let foreign = Auth::new(vec!["some-other-key-xyz".into()])
            .sign(&claims("r", now + 60))
            .unwrap();
        let cases: Vec<(&str, Option<&str>, Result<bool, u16>)> = vec![
            ("good", Some(&good), Ok(true)),
            ("signed with the second key", Some(&rotated), Ok(true)),
            ("missing", None, Err(401)),
            ("empty", Some(""), Err(401)),
            ("expired", Some(&expired), Err(401)),
            ("garbage", Some("a.b.c"), Err(401)),
            ("unknown key", Some(&foreign), Err(401)),
            ("other room", Some(&other_room), Err(403)),
        ];
        for (name, token, want) in cases {
            let got = auth
                .check(token, Some("r"), now)
                .map(|a| a.grants.publish)
                .map_err(|e| e.status());
            assert_eq!(got, want, "{name}");
        }
        let a = auth.check(Some(&good), Some("r"), now).unwrap();
        assert_eq!(a.identity.as_deref(), Some("alice"));
        assert!(!a.grants.subscribe);
    }

    #[test]
    fn dev_mode_allows_all() {
        let a = Auth::new(vec![]).check(None, Some("any"), 0).unwrap();
        assert!(a.grants.publish && a.grants.subscribe);
        assert!(Auth::new(vec![]).check_admin(None, 0).is_ok());
    }

    #[test]
    fn admin_tokens_and_who_may_act_for_a_session() {
        let auth = Auth::new(vec![KEY_A.into()]);
        let now = 1_000_000;
        let admin = auth
            .sign(&Claims {
                room: "*".into(),
                sub: "ops".into(),
                admin: true,
                ..claims("*", now + 60)
            })
            .unwrap();
        let user = auth.sign(&claims("r", now + 60)).unwrap();
        // (token, admin check passes)
        let cases = [
            (Some(admin.as_str()), Ok(())),
            (Some(user.as_str()), Err(403)),
            (None, Err(401)),
        ];
        for (token, want) in cases {
            assert_eq!(
                auth.check_admin(token, now).map_err(|e| e.status()),
                want,
                "{token:?}"
            );
        }
        // An admin token is good for any room.
        assert!(
            auth.check(Some(&admin), Some("elsewhere"), now)
                .unwrap()
                .admin
        );
        let alice = auth.check(Some(&user), Some("r"), now).unwrap();
        let ops = auth.check(Some(&admin), Some("r"), now).unwrap();
        // (caller, the session's creator, may act)
        let table = [
            (&alice, Some("alice"), true),
            (&alice, Some("bob"), false),
            (&alice, None, true),
            (&ops, Some("bob"), true),
        ];
        for (caller, owner, want) in table {
            assert_eq!(
                caller.may_act_for(owner),
                want,
                "{:?} for {owner:?}",
                caller.identity
            );
        }
    }
}
