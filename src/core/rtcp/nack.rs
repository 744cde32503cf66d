//! Generic NACK (RFC 4585 §6.2.1).

use super::{check_room, u32_at, write_common_header, RtcpError, PT_RTPFB};

pub const FMT: u8 = 1;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Nack<'a> {
    pub sender_ssrc: u32,
    pub media_ssrc: u32,
    fci: &'a [u8],
}

impl<'a> Nack<'a> {
    pub fn parse(body: &'a [u8]) -> Result<Self, RtcpError> {
        if body.len() < 12 || !body.len().is_multiple_of(4) {
            return Err(RtcpError::TooShort);
        }
        Ok(Self {
            sender_ssrc: u32_at(body, 0),
            media_ssrc: u32_at(body, 4),
            fci: &body[8..],
        })
    }

    /// The (packet id, bitmask of following lost packets) pairs.
    pub fn pairs(&self) -> impl Iterator<Item = (u16, u16)> + 'a {
        self.fci.chunks_exact(4).map(|c| {
            (
                u16::from_be_bytes([c[0], c[1]]),
                u16::from_be_bytes([c[2], c[3]]),
            )
        })
    }

    /// Writes a NACK whose pairs come from `pairs`, rewritten by `map` (used to translate
    /// sequence numbers from a viewer's numbering to the publisher's).
    pub fn write_mapped(
        &self,
        sender_ssrc: u32,
        media_ssrc: u32,
        map: impl Fn(u16) -> u16,
        out: &mut [u8],
    ) -> Result<usize, RtcpError> {
        let total = 12 + self.fci.len();
        check_room(out, total)?;
        write_common_header(out, FMT, PT_RTPFB, total);
        out[4..8].copy_from_slice(&sender_ssrc.to_be_bytes());
        out[8..12].copy_from_slice(&media_ssrc.to_be_bytes());
        for (i, (pid, blp)) in self.pairs().enumerate() {
            let o = 12 + 4 * i;
            out[o..o + 2].copy_from_slice(&map(pid).to_be_bytes());
            out[o + 2..o + 4].copy_from_slice(&blp.to_be_bytes());
        }
        Ok(total)
    }
}

/// Writes a NACK for the given sequence numbers (ascending, or at least grouped), packing each
/// run of up to 17 into one packet id and bitmask.
pub fn write_list(
    sender_ssrc: u32,
    media_ssrc: u32,
    seqs: &[u16],
    out: &mut [u8],
) -> Result<usize, RtcpError> {
    let mut n = 12;
    let mut pid: Option<(u16, u16)> = None;
    let flush = |pair: (u16, u16), n: &mut usize, out: &mut [u8]| -> Result<(), RtcpError> {
        check_room(out, *n + 4)?;
        out[*n..*n + 2].copy_from_slice(&pair.0.to_be_bytes());
        out[*n + 2..*n + 4].copy_from_slice(&pair.1.to_be_bytes());
        *n += 4;
        Ok(())
    };
    for &s in seqs {
        match pid.as_mut() {
            Some((p, blp)) if (1..=16).contains(&s.wrapping_sub(*p)) => {
                *blp |= 1 << (s.wrapping_sub(*p) - 1)
            }
            _ => {
                if let Some(pair) = pid.take() {
                    flush(pair, &mut n, out)?;
                }
                pid = Some((s, 0));
            }
        }
    }
    if let Some(pair) = pid {
        flush(pair, &mut n, out)?;
    }
    if n == 12 {
        return Ok(0);
    }
    check_room(out, 12)?;
    write_common_header(out, FMT, PT_RTPFB, n);
    out[4..8].copy_from_slice(&sender_ssrc.to_be_bytes());
    out[8..12].copy_from_slice(&media_ssrc.to_be_bytes());
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_map() {
        let body = [0, 0, 0, 1, 0, 0, 0, 2, 0, 10, 0, 3, 0xff, 0xff, 0, 0];
        let n = Nack::parse(&body).unwrap();
        assert_eq!(n.pairs().collect::<Vec<_>>(), vec![(10, 3), (0xffff, 0)]);
        let mut out = [0u8; 32];
        let len = n
            .write_mapped(5, 6, |s| s.wrapping_add(2), &mut out)
            .unwrap();
        let back = Nack::parse(&out[4..len]).unwrap();
        assert_eq!((back.sender_ssrc, back.media_ssrc), (5, 6));
        assert_eq!(back.pairs().collect::<Vec<_>>(), vec![(12, 3), (1, 0)]);
        assert_eq!(Nack::parse(&body[..8]), Err(RtcpError::TooShort));
    }

    #[test]
    fn list_table() {
        // (sequence numbers, expected (packet id, bitmask) pairs)
        type Case = (&'static [u16], &'static [(u16, u16)]);
        let cases: &[Case] = &[
            (&[], &[]),
            (&[5], &[(5, 0)]),
            (&[5, 6, 8], &[(5, 0b101)]),
            (&[5, 21, 22], &[(5, 1 << 15), (22, 0)]),
            (&[65535, 0, 1], &[(65535, 0b11)]),
        ];
        for (seqs, want) in cases {
            let mut out = [0u8; 64];
            let n = write_list(1, 2, seqs, &mut out).unwrap();
            if want.is_empty() {
                assert_eq!(n, 0);
                continue;
            }
            let got = Nack::parse(&out[4..n]).unwrap();
            assert_eq!(got.pairs().collect::<Vec<_>>(), want.to_vec(), "{seqs:?}");
        }
    }
}
