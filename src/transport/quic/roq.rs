//! RTP over QUIC framing (draft-ietf-avtcore-rtp-over-quic): a datagram is a QUIC variable-length
//! integer flow identifier (RFC 9000 §16) followed by one RTP or RTCP packet. The control stream
//! carries messages each prefixed by its length as a varint.

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RoqError {
    #[error("truncated varint")]
    Truncated,
    #[error("value too large for a varint")]
    TooLarge,
    #[error("output buffer too small")]
    BufferTooSmall,
}

/// Largest value a QUIC varint holds (2^62 - 1).
pub const VARINT_MAX: u64 = (1 << 62) - 1;

/// Decodes a varint; returns the value and the bytes it took.
pub fn read_varint(b: &[u8]) -> Result<(u64, usize), RoqError> {
    let first = *b.first().ok_or(RoqError::Truncated)?;
    let len = 1usize << (first >> 6);
    if b.len() < len {
        return Err(RoqError::Truncated);
    }
    let mut v = u64::from(first & 0x3f);
    for x in &b[1..len] {
        v = (v << 8) | u64::from(*x);
    }
    Ok((v, len))
}

/// Bytes a varint of `v` takes.
pub fn varint_len(v: u64) -> usize {
    match v {
        0..=63 => 1,
        64..=16_383 => 2,
        16_384..=1_073_741_823 => 4,
        _ => 8,
    }
}

/// Encodes `v` into `out`; returns the bytes written.
pub fn write_varint(v: u64, out: &mut [u8]) -> Result<usize, RoqError> {
    if v > VARINT_MAX {
        return Err(RoqError::TooLarge);
    }
    let len = varint_len(v);
    if out.len() < len {
        return Err(RoqError::BufferTooSmall);
    }
    let tag: u8 = match len {
        1 => 0x00,
        2 => 0x40,
        4 => 0x80,
        _ => 0xc0,
    };
    for (i, byte) in out[..len].iter_mut().enumerate() {
        *byte = (v >> (8 * (len - 1 - i))) as u8;
    }
    out[0] |= tag;
    Ok(len)
}

/// Splits a datagram into its flow id and packet.
pub fn split_datagram(d: &[u8]) -> Result<(u64, &[u8]), RoqError> {
    let (flow, n) = read_varint(d)?;
    Ok((flow, &d[n..]))
}

/// Builds a datagram: flow id, then the packet parts (header and payload, say) in order.
pub fn datagram(flow: u64, parts: &[&[u8]]) -> Vec<u8> {
    let mut out = Vec::with_capacity(8 + parts.iter().map(|p| p.len()).sum::<usize>());
    let mut v = [0u8; 8];
    let n = write_varint(flow, &mut v).unwrap_or(0);
    out.extend_from_slice(&v[..n]);
    for p in parts {
        out.extend_from_slice(p);
    }
    out
}

/// Frames one control message: varint length, then the bytes.
pub fn frame(message: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(message.len() + 8);
    let mut v = [0u8; 8];
    let n = write_varint(message.len() as u64, &mut v).unwrap_or(0);
    out.extend_from_slice(&v[..n]);
    out.extend_from_slice(message);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varint_table() {
        // RFC 9000 Appendix A.1 examples, and the edges of each length.
        let cases: &[(u64, &[u8])] = &[
            (0, &[0x00]),
            (37, &[0x25]),
            (63, &[0x3f]),
            (64, &[0x40, 0x40]),
            (15_293, &[0x7b, 0xbd]),
            (16_383, &[0x7f, 0xff]),
            (494_878_333, &[0x9d, 0x7f, 0x3e, 0x7d]),
            (
                151_288_809_941_952_652,
                &[0xc2, 0x19, 0x7c, 0x5e, 0xff, 0x14, 0xe8, 0x8c],
            ),
        ];
        for (v, bytes) in cases {
            let mut buf = [0u8; 8];
            let n = write_varint(*v, &mut buf).unwrap();
            assert_eq!(&buf[..n], *bytes, "encode {v}");
            assert_eq!(read_varint(bytes), Ok((*v, bytes.len())), "decode {v}");
        }
        assert_eq!(read_varint(&[]), Err(RoqError::Truncated));
        assert_eq!(read_varint(&[0x40]), Err(RoqError::Truncated));
        assert_eq!(
            write_varint(VARINT_MAX + 1, &mut [0u8; 8]),
            Err(RoqError::TooLarge)
        );
        assert_eq!(
            write_varint(64, &mut [0u8; 1]),
            Err(RoqError::BufferTooSmall)
        );
    }

    #[test]
    fn datagram_round_trip() {
        let d = datagram(300, &[&[0x80, 111], &[1, 2, 3]]);
        assert_eq!(split_datagram(&d), Ok((300, &[0x80, 111, 1, 2, 3][..])));
        let f = frame(b"{}");
        assert_eq!(read_varint(&f), Ok((2, 1)));
    }
}
