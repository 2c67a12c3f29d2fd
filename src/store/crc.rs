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

/// The CRC-32C of the bytes `crc` was computed over followed by `data`.
pub(super) fn crc32c_append(crc: u32, data: &[u8]) -> u32 {
    crc32c::crc32c_append(crc, data)
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
        // The fast paths agree with the definition at every alignment, in short inputs and
        // around the sizes where the instruction's three-way blocks (3 x 256 and 3 x 8192
        // bytes) begin and end.
        let mut x = 0x9E37_79B9_7F4A_7C15u64;
        let data: Vec<u8> = (0..64 * 1024 + 16)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        for start in 0..9 {
            for len in [
                0, 1, 7, 64, 300, 768, 1100, 24_575, 24_576, 24_583, 49_152, 65_536,
            ] {
                let d = &data[start..start + len];
                assert_eq!(crc32c(d), bitwise(d), "{start}+{len}");
            }
        }
    }
}
