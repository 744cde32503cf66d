//! Picture loss indication (RFC 4585 §6.3.1).

use super::{check_room, u32_at, write_common_header, RtcpError, PT_PSFB};

pub const FMT: u8 = 1;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pli {
    pub sender_ssrc: u32,
    pub media_ssrc: u32,
}

impl Pli {
    pub const LEN: usize = 12;

    pub fn parse(body: &[u8]) -> Result<Self, RtcpError> {
        if body.len() < 8 {
            return Err(RtcpError::TooShort);
        }
        Ok(Self {
            sender_ssrc: u32_at(body, 0),
            media_ssrc: u32_at(body, 4),
        })
    }

    pub fn write(&self, out: &mut [u8]) -> Result<usize, RtcpError> {
        check_room(out, Self::LEN)?;
        write_common_header(out, FMT, PT_PSFB, Self::LEN);
        out[4..8].copy_from_slice(&self.sender_ssrc.to_be_bytes());
        out[8..12].copy_from_slice(&self.media_ssrc.to_be_bytes());
        Ok(Self::LEN)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let p = Pli {
            sender_ssrc: 1,
            media_ssrc: 0xfeed,
        };
        let mut buf = [0u8; 12];
        p.write(&mut buf).unwrap();
        assert_eq!(&buf[..4], &[0x81, 206, 0, 2]);
        assert_eq!(Pli::parse(&buf[4..]), Ok(p));
        assert_eq!(Pli::parse(&buf[4..10]), Err(RtcpError::TooShort));
    }
}
