//! Receiver report (RFC 3550 §6.4.2) and its report blocks.

use super::{check_room, u32_at, write_common_header, RtcpError, PT_RR};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReceiverReport<'a> {
    pub ssrc: u32,
    blocks: &'a [u8],
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ReportBlock {
    pub ssrc: u32,
    pub fraction_lost: u8,
    /// 24-bit signed cumulative loss.
    pub cumulative_lost: i32,
    pub highest_sequence: u32,
    pub jitter: u32,
    pub last_sr: u32,
    pub delay_since_last_sr: u32,
}

impl<'a> ReceiverReport<'a> {
    pub fn parse(count: u8, body: &'a [u8]) -> Result<Self, RtcpError> {
        let need = 4 + 24 * count as usize;
        if body.len() < need {
            return Err(RtcpError::TooShort);
        }
        Ok(Self {
            ssrc: u32_at(body, 0),
            blocks: &body[4..need],
        })
    }

    pub fn blocks(&self) -> impl Iterator<Item = ReportBlock> + 'a {
        self.blocks.chunks_exact(24).map(ReportBlock::parse)
    }

    /// Writes an RR from `ssrc` with the given blocks (at most 31).
    pub fn write(ssrc: u32, blocks: &[ReportBlock], out: &mut [u8]) -> Result<usize, RtcpError> {
        let blocks = &blocks[..blocks.len().min(31)];
        let total = 8 + 24 * blocks.len();
        check_room(out, total)?;
        write_common_header(out, blocks.len() as u8, PT_RR, total);
        out[4..8].copy_from_slice(&ssrc.to_be_bytes());
        for (i, b) in blocks.iter().enumerate() {
            b.write(&mut out[8 + 24 * i..]);
        }
        Ok(total)
    }
}

impl ReportBlock {
    fn parse(b: &[u8]) -> Self {
        let lost = u32_at(b, 4) & 0x00ff_ffff;
        // Sign-extend the 24-bit field.
        let cumulative_lost = ((lost << 8) as i32) >> 8;
        Self {
            ssrc: u32_at(b, 0),
            fraction_lost: b[4],
            cumulative_lost,
            highest_sequence: u32_at(b, 8),
            jitter: u32_at(b, 12),
            last_sr: u32_at(b, 16),
            delay_since_last_sr: u32_at(b, 20),
        }
    }

    fn write(&self, out: &mut [u8]) {
        out[0..4].copy_from_slice(&self.ssrc.to_be_bytes());
        let lost = (self.cumulative_lost.clamp(-0x80_0000, 0x7f_ffff) as u32) & 0x00ff_ffff;
        out[4..8].copy_from_slice(&(u32::from(self.fraction_lost) << 24 | lost).to_be_bytes());
        out[8..12].copy_from_slice(&self.highest_sequence.to_be_bytes());
        out[12..16].copy_from_slice(&self.jitter.to_be_bytes());
        out[16..20].copy_from_slice(&self.last_sr.to_be_bytes());
        out[20..24].copy_from_slice(&self.delay_since_last_sr.to_be_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_with_negative_loss() {
        let blocks = [
            ReportBlock {
                ssrc: 9,
                fraction_lost: 25,
                cumulative_lost: -3,
                highest_sequence: 70000,
                jitter: 12,
                last_sr: 5,
                delay_since_last_sr: 6,
            },
            ReportBlock {
                ssrc: 10,
                cumulative_lost: 100,
                ..Default::default()
            },
        ];
        let mut buf = [0u8; 64];
        let n = ReceiverReport::write(77, &blocks, &mut buf).unwrap();
        assert_eq!(n, 56);
        let rr = ReceiverReport::parse(buf[0] & 0x1f, &buf[4..n]).unwrap();
        assert_eq!(rr.ssrc, 77);
        assert_eq!(rr.blocks().collect::<Vec<_>>(), blocks.to_vec());
    }

    #[test]
    fn short_body() {
        assert_eq!(ReceiverReport::parse(1, &[0; 20]), Err(RtcpError::TooShort));
    }
}
