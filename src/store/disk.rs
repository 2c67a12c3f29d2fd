//! Every file operation of the store, behind one narrow seam: [`Disk`].
//!
//! The store touches its directory only through these calls: list, read, length, create, append,
//! fdatasync, truncate, rename, remove and fsync of the directory. In a node they go straight to the
//! file system ([`Std`]). In tests, `sim::SimDisk` keeps the files in memory and remembers which
//! bytes and which directory entries were made durable, so that a simulated power cut can drop
//! everything else (see `sim`).

use std::any::Any;
use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::Path;

#[cfg(test)]
pub(crate) mod sim;

/// The file system as the store uses it. Paths name files in the store's directory.
pub(super) trait Disk: Send + Sync + fmt::Debug {
    fn create_dir_all(&self, dir: &Path) -> io::Result<()>;
    /// An exclusive lock on `dir`, held while the returned value lives; `Ok(None)` when another
    /// holder has it.
    fn lock(&self, dir: &Path) -> io::Result<Option<Box<dyn Any + Send>>>;
    /// The names of the files in `dir`.
    fn list(&self, dir: &Path) -> io::Result<Vec<String>>;
    /// Replaces `buf`'s contents with the file's. Recovery reads every segment into one
    /// buffer, so its pages are allocated and faulted in once, not once per segment.
    fn read_into(&self, path: &Path, buf: &mut Vec<u8>) -> io::Result<()>;
    fn open_read(&self, path: &Path) -> io::Result<Box<dyn ReadAt>>;
    /// The file's length in bytes.
    fn len(&self, path: &Path) -> io::Result<u64>;
    /// Creates a new, empty file to append to (it must not exist).
    fn create(&self, path: &Path) -> io::Result<Box<dyn Append>>;
    /// Shortens a file to `len` bytes, durably.
    fn truncate(&self, path: &Path, len: u64) -> io::Result<()>;
    fn remove(&self, path: &Path) -> io::Result<()>;
    /// Gives file `from` the name `to` (which must not exist); a file open under the old name
    /// stays open, with the space it reserved. Durable once its directory is synced.
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;
    /// Makes the creations and removals of entries in `dir` durable.
    fn sync_dir(&self, dir: &Path) -> io::Result<()>;
}

/// A file the store appends to.
pub(super) trait Append: Send {
    /// Reserves disk space for the file to grow to `len` bytes, without changing its size, so
    /// appends up to there cannot fail for want of space. A file system that cannot reserve
    /// space ahead is not an error (appends may then find the disk full).
    fn allocate(&mut self, len: u64) -> io::Result<()>;
    fn write_all(&mut self, buf: &[u8]) -> io::Result<()>;
    /// `fdatasync`: the file's data, and the metadata needed to read it back, reach the disk.
    fn sync_data(&mut self) -> io::Result<()>;
}

/// A file the store reads records back from.
pub(super) trait ReadAt: Send {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()>;
}

/// Whether an I/O error means the disk (or the user's quota) is full.
pub(super) fn is_full(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded
    )
}

/// The real file system.
#[derive(Debug, Default)]
pub(super) struct Std;

impl Disk for Std {
    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        fs::create_dir_all(dir)
    }

    fn lock(&self, dir: &Path) -> io::Result<Option<Box<dyn Any + Send>>> {
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(dir.join("LOCK"))?;
        match file.try_lock() {
            Ok(()) => Ok(Some(Box::new(file))),
            Err(fs::TryLockError::WouldBlock) => Ok(None),
            Err(fs::TryLockError::Error(e)) => Err(e),
        }
    }

    fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        let mut names = Vec::new();
        for entry in fs::read_dir(dir)? {
            if let Ok(name) = entry?.file_name().into_string() {
                names.push(name);
            }
        }
        Ok(names)
    }

    fn read_into(&self, path: &Path, buf: &mut Vec<u8>) -> io::Result<()> {
        buf.clear();
        File::open(path)?.read_to_end(buf).map(drop)
    }

    fn open_read(&self, path: &Path) -> io::Result<Box<dyn ReadAt>> {
        Ok(Box::new(File::open(path)?))
    }

    fn len(&self, path: &Path) -> io::Result<u64> {
        Ok(fs::metadata(path)?.len())
    }

    fn create(&self, path: &Path) -> io::Result<Box<dyn Append>> {
        let file = OpenOptions::new()
            .create_new(true)
            .append(true)
            .open(path)?;
        Ok(Box::new(file))
    }

    fn truncate(&self, path: &Path, len: u64) -> io::Result<()> {
        let file = OpenOptions::new().write(true).open(path)?;
        file.set_len(len)?;
        file.sync_all()
    }

    fn remove(&self, path: &Path) -> io::Result<()> {
        fs::remove_file(path)
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        if fs::exists(to)? {
            return Err(io::Error::new(io::ErrorKind::AlreadyExists, "file exists"));
        }
        fs::rename(from, to)
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        File::open(dir)?.sync_all()
    }
}

impl Append for File {
    fn allocate(&mut self, len: u64) -> io::Result<()> {
        use rustix::fs::{FallocateFlags, fallocate};
        match fallocate(&*self, FallocateFlags::KEEP_SIZE, 0, len) {
            Err(e) if e == rustix::io::Errno::OPNOTSUPP => Ok(()),
            r => r.map_err(io::Error::from),
        }
    }

    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        Write::write_all(self, buf)
    }

    fn sync_data(&mut self) -> io::Result<()> {
        File::sync_data(self)
    }
}

impl ReadAt for File {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        FileExt::read_exact_at(self, buf, offset)
    }
}
