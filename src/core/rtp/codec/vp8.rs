//! VP8 payload descriptor (RFC 7741 §4.2) and the key-frame bit of the VP8 payload header.

/// True when the packet starts partition 0 of a key frame.
pub fn starts_keyframe(p: &[u8]) -> bool {
    let Some(&b0) = p.first() else { return false };
    let start_of_partition = b0 & 0x10 != 0;
    let partition_id = b0 & 0x07;
    if !start_of_partition || partition_id != 0 {
        return false;
    }
    let mut off = 1;
    if b0 & 0x80 != 0 {
        // X: extension byte I L T K follows.
        let Some(&x) = p.get(off) else { return false };
        off += 1;
        if x & 0x80 != 0 {
            // I: PictureID, 7 or 15 bits.
            let Some(&pid) = p.get(off) else { return false };
            off += if pid & 0x80 != 0 { 2 } else { 1 };
        }
        if x & 0x40 != 0 {
            off += 1; // L: TL0PICIDX
        }
        if x & 0x30 != 0 {
            off += 1; // T or K: TID/Y/KEYIDX
        }
    }
    // VP8 payload header: bit 0 of the first byte is P, 0 for key frames (RFC 6386 §9.1).
    p.get(off).is_some_and(|h| h & 0x01 == 0)
}

/// The picture size (width × height) a key frame announces, from the first packet of the frame
/// (RFC 6386 §9.1: frame tag, start code, then 14-bit width and height).
pub fn keyframe_pixels(p: &[u8]) -> Option<u32> {
    if !starts_keyframe(p) {
        return None;
    }
    let d = Descriptor::parse(p)?;
    let h = p.get(d.len..d.len + 10)?;
    if h[3..6] != [0x9d, 0x01, 0x2a] {
        return None;
    }
    let w = u32::from(u16::from_le_bytes([h[6], h[7]]) & 0x3fff);
    let ht = u32::from(u16::from_le_bytes([h[8], h[9]]) & 0x3fff);
    Some(w * ht)
}

/// Where the picture id and TL0PICIDX sit in a VP8 payload descriptor (RFC 7741 §4.2), so a
/// forwarder can shift them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Descriptor {
    pub picture_id: Option<u16>,
    /// 15-bit picture id (M bit set), else 7-bit.
    pub long_id: bool,
    pub tl0: Option<u8>,
    picture_id_at: usize,
    tl0_at: usize,
    /// Length of the descriptor in bytes.
    pub len: usize,
}

impl Descriptor {
    pub fn parse(p: &[u8]) -> Option<Self> {
        let b0 = *p.first()?;
        let mut d = Descriptor {
            picture_id: None,
            long_id: false,
            tl0: None,
            picture_id_at: 0,
            tl0_at: 0,
            len: 1,
        };
        if b0 & 0x80 == 0 {
            return Some(d);
        }
        let x = *p.get(1)?;
        let mut off = 2;
        if x & 0x80 != 0 {
            let hi = *p.get(off)?;
            d.picture_id_at = off;
            if hi & 0x80 != 0 {
                d.long_id = true;
                d.picture_id = Some(u16::from_be_bytes([hi & 0x7f, *p.get(off + 1)?]));
                off += 2;
            } else {
                d.picture_id = Some(u16::from(hi));
                off += 1;
            }
        }
        if x & 0x40 != 0 {
            d.tl0 = Some(*p.get(off)?);
            d.tl0_at = off;
            off += 1;
        }
        if x & 0x30 != 0 {
            p.get(off)?;
            off += 1;
        }
        d.len = off;
        Some(d)
    }

    /// The mask of the picture id's width.
    pub fn picture_id_mask(&self) -> u16 {
        if self.long_id {
            0x7fff
        } else {
            0x7f
        }
    }

    /// Writes this packet's descriptor into `out` with the picture id and TL0PICIDX shifted;
    /// returns its length, or `None` when `out` is too small.
    pub fn write_shifted(
        &self,
        p: &[u8],
        picture_id: u16,
        tl0: u8,
        out: &mut [u8],
    ) -> Option<usize> {
        let out = out.get_mut(..self.len)?;
        out.copy_from_slice(p.get(..self.len)?);
        if let Some(id) = self.picture_id {
            let id = id.wrapping_add(picture_id) & self.picture_id_mask();
            if self.long_id {
                out[self.picture_id_at..self.picture_id_at + 2]
                    .copy_from_slice(&(id | 0x8000).to_be_bytes());
            } else {
                out[self.picture_id_at] = id as u8;
            }
        }
        if let Some(t) = self.tl0 {
            out[self.tl0_at] = t.wrapping_add(tl0);
        }
        Some(self.len)
    }
}

#[cfg(test)]
mod tests {
    use super::{keyframe_pixels, starts_keyframe, Descriptor};

    #[test]
    fn keyframe_pixels_table() {
        // Descriptor, frame tag (key), start code, 640 × 360 (scale bits set, ignored).
        let key = [
            0x10, 0x50, 0x2a, 0x01, 0x9d, 0x01, 0x2a, 0x80, 0x42, 0x68, 0x41,
        ];
        assert_eq!(keyframe_pixels(&key), Some(640 * 360));
        let mut delta = key;
        delta[1] |= 1;
        assert_eq!(keyframe_pixels(&delta), None, "not a key frame");
        let mut bad = key;
        bad[4] = 0;
        assert_eq!(keyframe_pixels(&bad), None, "no start code");
        assert_eq!(keyframe_pixels(&key[..8]), None, "truncated");
    }

    #[test]
    fn descriptor_shift_table() {
        // (packet, picture id shift, tl0 shift, expected descriptor)
        let cases: &[(&[u8], u16, u8, &[u8])] = &[
            (&[0x10, 0xaa], 5, 1, &[0x10]),
            // 7-bit id wraps within 7 bits.
            (&[0x90, 0x80, 0x7e, 0xaa], 3, 0, &[0x90, 0x80, 0x01]),
            // 15-bit id keeps its M bit and wraps within 15 bits; TL0PICIDX wraps; TID byte kept.
            (
                &[0x90, 0xe0, 0xff, 0xff, 0xfe, 0x20, 0xaa],
                2,
                3,
                &[0x90, 0xe0, 0x80, 0x01, 0x01, 0x20],
            ),
        ];
        for (p, pid, tl0, want) in cases {
            let d = Descriptor::parse(p).unwrap();
            let mut out = [0u8; 8];
            let n = d.write_shifted(p, *pid, *tl0, &mut out).unwrap();
            assert_eq!(&out[..n], *want, "{p:x?}");
        }
        assert_eq!(Descriptor::parse(&[0x90, 0x80]), None, "truncated");
    }

    #[test]
    fn table() {
        let cases: &[(&str, &[u8], bool)] = &[
            ("key, no ext", &[0x10, 0x00], true),
            ("delta, no ext", &[0x10, 0x01], false),
            ("not start", &[0x00, 0x00], false),
            ("partition 1", &[0x11, 0x00], false),
            (
                "key, 15-bit picture id",
                &[0x90, 0x80, 0x81, 0x23, 0x00],
                true,
            ),
            (
                "delta, 7-bit picture id + tl0",
                &[0x90, 0xc0, 0x12, 0x05, 0x01],
                false,
            ),
            (
                "key, all ext fields",
                &[0x90, 0xf0, 0x81, 0x23, 0x05, 0x20, 0x9c],
                true,
            ),
            ("truncated", &[0x90, 0x80], false),
            ("empty", &[], false),
        ];
        for (name, p, want) in cases {
            assert_eq!(starts_keyframe(p), *want, "{name}");
        }
    }
}
