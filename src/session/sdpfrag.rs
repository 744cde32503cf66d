//! SDP fragments for trickle ICE and ICE restarts (RFC 8840 `application/trickle-ice-sdpfrag`),
//! as WHIP and WHEP carry them in `PATCH` (RFC 9725 §4.3): reading the client's credentials
//! and writing volna's reply. volna is ICE-lite and needs no remote candidates, so a fragment
//! only matters when its credentials are new, which is an ICE restart.

use std::fmt::Write;
use std::net::SocketAddr;

/// The media type of a fragment.
pub const CONTENT_TYPE: &str = "application/trickle-ice-sdpfrag";

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FragError {
    #[error("the fragment has no a=ice-ufrag and a=ice-pwd")]
    NoCredentials,
    #[error("a=ice-ufrag must be 4-256 ICE characters and a=ice-pwd 22-256 (RFC 8839 §5.4)")]
    BadCredentials,
    #[error("the fragment is not SDP text: line {0:?}")]
    BadLine(String),
}

/// What a client's fragment says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fragment {
    pub ufrag: String,
    pub pwd: String,
    /// The first `a=mid` (the BUNDLE tag the candidates belong to), if any.
    pub mid: Option<String>,
}

/// ICE characters (RFC 8839 §5.4: ALPHA / DIGIT / "+" / "/").
fn ice_chars(s: &str) -> bool {
    s.bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'+' || b == b'/')
}

impl Fragment {
    pub fn parse(text: &str) -> Result<Self, FragError> {
        let (mut ufrag, mut pwd, mut mid) = (None, None, None);
        for line in text.lines().map(str::trim_end).filter(|l| !l.is_empty()) {
            let Some((key, value)) = line.split_once('=') else {
                return Err(FragError::BadLine(line.chars().take(40).collect()));
            };
            if key.len() != 1 {
                return Err(FragError::BadLine(line.chars().take(40).collect()));
            }
            if key != "a" {
                continue;
            }
            if let Some(v) = value.strip_prefix("ice-ufrag:") {
                ufrag.get_or_insert(v.to_owned());
            } else if let Some(v) = value.strip_prefix("ice-pwd:") {
                pwd.get_or_insert(v.to_owned());
            } else if let Some(v) = value.strip_prefix("mid:") {
                mid.get_or_insert(v.to_owned());
            }
        }
        let (Some(ufrag), Some(pwd)) = (ufrag, pwd) else {
            return Err(FragError::NoCredentials);
        };
        let fits = |s: &str, min| (min..=256).contains(&s.len()) && ice_chars(s);
        if !fits(&ufrag, 4) || !fits(&pwd, 22) {
            return Err(FragError::BadCredentials);
        }
        Ok(Self { ufrag, pwd, mid })
    }
}

/// volna's reply to an ICE restart: its new credentials and its candidates, under the client's
/// mid when it named one (RFC 9725 §4.3.2).
pub fn restart_reply(
    ufrag: &str,
    pwd: &str,
    mid: Option<&str>,
    candidates: &[SocketAddr],
    tcp_port: Option<u16>,
) -> String {
    let mut s = format!("a=ice-lite\r\na=ice-ufrag:{ufrag}\r\na=ice-pwd:{pwd}\r\n");
    if let Some(mid) = mid {
        let _ = write!(s, "m=audio 9 UDP/TLS/RTP/SAVPF 0\r\na=mid:{mid}\r\n");
    }
    super::sdp::write_candidates(&mut s, candidates, tcp_port);
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fragments_table() {
        let pwd = "0123456789012345678901";
        /// The ufrag and mid read, or the error.
        type Want<'a> = Result<(&'a str, Option<&'a str>), FragError>;
        let cases: Vec<(&str, String, Want)> = vec![
            (
                "a restart as RFC 9725 shows it",
                format!("a=ice-ufrag:EsAw\r\na=ice-pwd:{pwd}\r\nm=audio 9 UDP/TLS/RTP/AVP 0\r\na=mid:0\r\na=candidate:1 1 udp 1 10.0.0.1 5000 typ host\r\na=end-of-candidates\r\n"),
                Ok(("EsAw", Some("0"))),
            ),
            (
                "credentials inside the media section, LF line ends",
                format!("m=audio 9 UDP/TLS/RTP/SAVPF 0\na=mid:a1\na=ice-ufrag:abcd\na=ice-pwd:{pwd}\n"),
                Ok(("abcd", Some("a1"))),
            ),
            ("candidates only", "a=candidate:1 1 udp 1 10.0.0.1 5000 typ host\r\n".into(), Err(FragError::NoCredentials)),
            ("empty", String::new(), Err(FragError::NoCredentials)),
            ("short ufrag", format!("a=ice-ufrag:ab\r\na=ice-pwd:{pwd}\r\n"), Err(FragError::BadCredentials)),
            ("short pwd", "a=ice-ufrag:abcd\r\na=ice-pwd:short\r\n".into(), Err(FragError::BadCredentials)),
            ("bad characters", format!("a=ice-ufrag:ab d\r\na=ice-pwd:{pwd}\r\n"), Err(FragError::BadCredentials)),
            ("not SDP", "{\"ufrag\": 1}".into(), Err(FragError::BadLine("{\"ufrag\": 1}".into()))),
        ];
        for (name, text, want) in cases {
            let got = Fragment::parse(&text);
            let got = got
                .as_ref()
                .map(|f| (f.ufrag.as_str(), f.mid.as_deref()))
                .map_err(Clone::clone);
            assert_eq!(got, want, "{name}");
        }
    }

    #[test]
    fn reply_carries_credentials_and_candidate() {
        let r = restart_reply(
            "uf12",
            "pw",
            Some("0"),
            &["10.0.0.2:5000".parse().unwrap()],
            None,
        );
        assert_eq!(
            r,
            "a=ice-lite\r\na=ice-ufrag:uf12\r\na=ice-pwd:pw\r\nm=audio 9 UDP/TLS/RTP/SAVPF 0\r\na=mid:0\r\n\
a=candidate:1 1 udp 2130706431 10.0.0.2 5000 typ host\r\na=end-of-candidates\r\n"
        );
    }
}
