//! Replacing a file of the node's data directory whole, so that a crash leaves either the
//! old contents or the new ones: written to `<name>.tmp`, synced, renamed over the file, and
//! the directory synced. And appending to one whole, so that a full disk never leaves a torn
//! line that a retry would follow.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// Permissions of a file anyone may read (less the umask).
pub const SHARED: u32 = 0o666;
/// Permissions of a secret: the owner only.
pub const OWNER_ONLY: u32 = 0o600;

/// Appends `bytes` to `file` (opened to append), which holds `end` bytes of whole lines,
/// whole or not at all: a write that fails part-way (a full disk had room for some of it) is
/// cut back to `end`, so that trying again never writes after a torn line. A file longer than
/// `end` (a cut that failed) is cut first, and the write fails if it cannot be.
pub fn append_whole(file: &mut std::fs::File, end: u64, bytes: &[u8]) -> std::io::Result<()> {
    if file.metadata()?.len() != end {
        file.set_len(end)?;
    }
    append_cut_back(file, end, bytes)
}

/// As [`append_whole`], for a file just opened by a caller that keeps no length: it ends
/// where it ends.
pub fn append_whole_at_end(file: &mut std::fs::File, bytes: &[u8]) -> std::io::Result<()> {
    let end = file.metadata()?.len();
    append_cut_back(file, end, bytes)
}

/// Appends `bytes`; a write that fails is cut back to `end`.
fn append_cut_back(file: &mut std::fs::File, end: u64, bytes: &[u8]) -> std::io::Result<()> {
    file.write_all(bytes).inspect_err(|_| {
        if let Err(e) = file.set_len(end) {
            tracing::error!(
                error = %e,
                "a write that failed part-way could not be cut back: a torn line stays"
            );
        }
    })
}

/// Replaces `path` with `bytes` (see the module docs); a new file gets `mode`.
pub fn replace(path: &Path, bytes: &[u8], mode: u32) -> std::io::Result<()> {
    replace_with(path, mode, |f| f.write_all(bytes))
}

/// As [`replace`], with the new contents written by `write` (through a buffer), so that they
/// need not be in memory whole.
pub fn replace_with(
    path: &Path,
    mode: u32,
    write: impl FnOnce(&mut dyn Write) -> std::io::Result<()>,
) -> std::io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)?;
    let mut buffered = std::io::BufWriter::with_capacity(1 << 16, f);
    write(&mut buffered)?;
    let f = buffered
        .into_inner()
        .map_err(std::io::IntoInnerError::into_error)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn a_file_is_replaced_whole_and_a_secret_stays_private() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("reset.key");
        replace(&path, b"old", OWNER_ONLY).unwrap();
        replace(&path, b"new", OWNER_ONLY).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"new");
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert!(!dir.path().join("reset.key.tmp").exists());
    }
}
