//! The writer's two durability-critical calls (append a write, fdatasync it), behind a seam that
//! tests can make fail.
//!
//! In non-test builds [`Faults`] is an empty type whose methods call straight through to std. In
//! tests, flags make the next write fail (whole, or after half of it reached the file) or the next
//! fdatasync fail, to check that the store treats either as fatal.

use std::fs::File;
use std::io::{self, Write};

/// See the module docs.
#[derive(Debug, Clone, Default)]
pub(super) struct Faults {
    #[cfg(test)]
    pub flags: std::sync::Arc<Flags>,
}

/// Test-only switches; each stays on until turned off.
#[cfg(test)]
#[derive(Debug, Default)]
pub(super) struct Flags {
    pub fail_write: std::sync::atomic::AtomicBool,
    pub short_write: std::sync::atomic::AtomicBool,
    pub fail_sync: std::sync::atomic::AtomicBool,
}

#[cfg(test)]
fn on(flag: &std::sync::atomic::AtomicBool) -> bool {
    flag.load(std::sync::atomic::Ordering::SeqCst)
}

impl Faults {
    /// Appends `buf` to the file.
    pub(super) fn write_all(&self, file: &mut File, buf: &[u8]) -> io::Result<()> {
        #[cfg(test)]
        {
            if on(&self.flags.short_write) {
                file.write_all(&buf[..buf.len() / 2])?;
                return Err(io::Error::other("injected fault: short write"));
            }
            if on(&self.flags.fail_write) {
                return Err(io::Error::other("injected fault: write failed"));
            }
        }
        file.write_all(buf)
    }

    /// `fdatasync`: the file's data, and the metadata needed to read it back, reach the disk.
    pub(super) fn sync_data(&self, file: &File) -> io::Result<()> {
        #[cfg(test)]
        if on(&self.flags.fail_sync) {
            return Err(io::Error::other("injected fault: fdatasync failed"));
        }
        file.sync_data()
    }
}
