//! CRC-32C (Castagnoli), the checksum of every log record.
//!
//! From the `crc32c` crate: the CPU's CRC32 instruction (SSE 4.2) where it has one, chosen at
//! run time, and tables otherwise. Recovery checks every byte of every segment at start, and
//! the instruction is several times faster than the slicing-by-8 tables this module had: a
//! restart with a million queued copies spent about a sixth of its store's open in them.

/// The CRC-32C of `data` (reflected polynomial 0x82F63B78, initial and final XOR all ones).
pub(super) fn crc32c(data: &[u8]) -> u32 {
    crc32c::crc32c(data)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The definition, one bit at a time.
    fn bitwise(data: &[u8]) -> u32 {
        let mut c = !0u32;
        for &b in data {
            c ^= u32::from(b);
            for _ in 0..8 {
                c = if c & 1 != 0 {
                    (c >> 1) ^ 0x82F6_3B78
                } else {
                    c >> 1
                };
            }
        }
        !c
    }

    #[test]
    fn crc32c_known_answers() {
        assert_eq!(crc32c(b""), 0);
        assert_eq!(crc32c(b"123456789"), 0xE306_9283);
        assert_eq!(crc32c(&[0; 32]), 0x8A91_36AA);
        // Every length and alignment of the fast paths agrees with the definition.
        let data: Vec<u8> = (0..=255u8).cycle().take(1100).collect();
        for start in 0..9 {
            for end in [start, start + 1, start + 7, start + 64, 300, 1024, 1100] {
                let d = &data[start..end];
                assert_eq!(crc32c(d), bitwise(d), "{start}..{end}");
            }
        }
    }
}
