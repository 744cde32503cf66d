//! Goodbye (RFC 3550 §6.6): sent when a forwarded source ends.

use super::{check_room, u32_at, write_common_header, RtcpError, PT_BYE};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bye<'a> {
    ssrcs: &'a [u8],
}

impl<'a> Bye<'a> {
    pub fn parse(count: u8, body: &'a [u8]) -> Result<Self, RtcpError> {
        let need = 4 * count as usize;
        if body.len() < need {
            return Err(RtcpError::TooShort);
        }
        Ok(Self {
            ssrcs: &body[..need],
        })
    }

    pub fn ssrcs(&self) -> impl Iterator<Item = u32> + 'a {
        self.ssrcs.chunks_exact(4).map(|c| u32_at(c, 0))
    }

    pub fn write(ssrcs: &[u32], out: &mut [u8]) -> Result<usize, RtcpError> {
        let ssrcs = &ssrcs[..ssrcs.len().min(31)];
        let total = 4 + 4 * ssrcs.len();
        check_room(out, total)?;
        write_common_header(out, ssrcs.len() as u8, PT_BYE, total);
        for (i, s) in ssrcs.iter().enumerate() {
            out[4 + 4 * i..8 + 4 * i].copy_from_slice(&s.to_be_bytes());
        }
        Ok(total)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let mut buf = [0u8; 16];
        let n = Bye::write(&[1, 2], &mut buf).unwrap();
        let b = Bye::parse(buf[0] & 0x1f, &buf[4..n]).unwrap();
        assert_eq!(b.ssrcs().collect::<Vec<_>>(), vec![1, 2]);
        assert_eq!(Bye::parse(3, &buf[4..n]), Err(RtcpError::TooShort));
    }
}
