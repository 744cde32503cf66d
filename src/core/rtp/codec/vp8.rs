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

#[cfg(test)]
mod tests {
    use super::starts_keyframe;

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
