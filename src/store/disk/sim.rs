//! A simulated disk for power-cut tests: files in memory, and a record of what was made durable.
//!
//! Each file keeps two contents: what the store sees (the page cache, in effect) and what a
//! power cut leaves (its contents as of its last `fdatasync` or durable truncate). The directory
//! likewise keeps its current entries and those of its last `fsync`. [`SimDisk::crash`] builds
//! the disk a power cut leaves: the durable entries with their durable contents, and optionally
//! part of each file's unsynced tail, cut at a sector boundary (a torn write).
//!
//! [`SimDisk::cut_after`] makes the power fail at a chosen operation: that call and every later
//! one fail with an I/O error, as if the machine stopped there. Switches make the next write or
//! fdatasync fail (the fault tests), or make `sync_data` do nothing: a disk that lies, for
//! checking that the power-cut test notices a missing fdatasync.

use std::any::Any;
use std::collections::{BTreeMap, HashMap};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use super::{Append, Disk, ReadAt};

/// Bytes per sector: a torn write keeps whole sectors of its file.
pub(crate) const SECTOR: usize = 512;

/// See the module docs. Clones share the disk.
#[derive(Debug, Clone, Default)]
pub(crate) struct SimDisk {
    state: Arc<Mutex<State>>,
    pub flags: Arc<Flags>,
}

/// Switches; each stays on until turned off.
#[derive(Debug, Default)]
pub(crate) struct Flags {
    pub fail_write: AtomicBool,
    pub short_write: AtomicBool,
    pub fail_sync: AtomicBool,
    /// `sync_data` returns success without making anything durable.
    pub lie_about_sync: AtomicBool,
}

#[derive(Debug, Default)]
struct State {
    /// Current entries: path to inode.
    names: BTreeMap<PathBuf, u64>,
    /// Entries as of the last fsync of their directory.
    durable_names: BTreeMap<PathBuf, u64>,
    inodes: HashMap<u64, Inode>,
    next_inode: u64,
    locked: Vec<PathBuf>,
    /// Operations left before the power fails (`None`: it never does).
    ops_left: Option<u64>,
    /// Operations done, all told.
    ops: u64,
    /// Bytes the disk holds, if limited.
    space: Option<u64>,
}

#[derive(Debug, Default, Clone)]
struct Inode {
    data: Vec<u8>,
    durable: Vec<u8>,
    /// Space reserved ahead ([`Append::allocate`]).
    allocated: u64,
}

impl Inode {
    fn size_on_disk(&self) -> u64 {
        (self.data.len() as u64).max(self.allocated)
    }
}

/// The directory a path is in.
fn parent(path: &Path) -> PathBuf {
    path.parent().map(Path::to_owned).unwrap_or_default()
}

fn power_off() -> io::Error {
    io::Error::other("simulated power cut")
}

fn not_found(path: &Path) -> io::Error {
    io::Error::new(io::ErrorKind::NotFound, format!("{}", path.display()))
}

impl State {
    /// Counts one operation; fails once the power is off.
    fn step(&mut self) -> io::Result<()> {
        self.ops += 1;
        match &mut self.ops_left {
            Some(0) => Err(power_off()),
            Some(n) => {
                *n -= 1;
                if *n == 0 {
                    return Err(power_off());
                }
                Ok(())
            }
            None => Ok(()),
        }
    }

    /// Whether the disk has room for inode `ino` to take `len` bytes on disk.
    fn room_for(&self, ino: u64, len: u64) -> io::Result<()> {
        let Some(space) = self.space else {
            return Ok(());
        };
        let others: u64 = self
            .names
            .values()
            .filter(|&&i| i != ino)
            .map(|i| self.inodes[i].size_on_disk())
            .sum();
        match others + len.max(self.inodes[&ino].size_on_disk()) <= space {
            true => Ok(()),
            false => Err(io::Error::from(io::ErrorKind::StorageFull)),
        }
    }

    fn inode(&mut self, path: &Path) -> io::Result<&mut Inode> {
        let ino = *self.names.get(path).ok_or_else(|| not_found(path))?;
        Ok(self.inodes.get_mut(&ino).expect("an entry's inode exists"))
    }
}

impl SimDisk {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().expect("sim disk lock")
    }

    /// A file's contents (an operation, as [`Disk::read_into`] is).
    pub fn read(&self, path: &Path) -> io::Result<Vec<u8>> {
        let mut buf = Vec::new();
        self.read_into(path, &mut buf)?;
        Ok(buf)
    }

    /// The power fails at the `n`th operation from now (1: the next one).
    pub fn cut_after(&self, n: u64) {
        self.state().ops_left = Some(n.max(1));
    }

    /// Limits the disk to `bytes` (`None`: no limit). Files over it keep what they hold.
    pub fn set_space(&self, bytes: Option<u64>) {
        self.state().space = bytes;
    }

    /// The bytes the disk's files take (written or reserved).
    pub fn used(&self) -> u64 {
        let s = self.state();
        s.names.values().map(|i| s.inodes[i].size_on_disk()).sum()
    }

    /// Whether the power has failed.
    pub fn is_off(&self) -> bool {
        self.state().ops_left == Some(0)
    }

    /// The disk as a power cut now leaves it: durable entries and contents. `tear` picks, for
    /// each file with an unsynced tail, how many of that tail's sectors survive (given the
    /// number of sectors, it returns at most that many); the last may be partial only where
    /// the file ends.
    pub fn crash(&self, mut tear: impl FnMut(usize) -> usize) -> SimDisk {
        let old = self.state();
        let mut inodes = HashMap::new();
        for ino in old.durable_names.values() {
            let inode = &old.inodes[ino];
            let mut data = inode.durable.clone();
            if inode.data.len() > data.len() && inode.data.starts_with(&data) {
                let tail = &inode.data[data.len()..];
                // Sectors are counted from the file's start, as the disk writes them.
                let first = SECTOR - data.len() % SECTOR;
                let sectors = 1 + tail.len().saturating_sub(first).div_ceil(SECTOR);
                let keep = tear(sectors).min(sectors);
                let bytes = match keep {
                    0 => 0,
                    k => (first + (k - 1) * SECTOR).min(tail.len()),
                };
                data.extend_from_slice(&tail[..bytes]);
            }
            let inode = Inode {
                durable: data.clone(),
                data,
                allocated: 0,
            };
            inodes.insert(*ino, inode);
        }
        let state = State {
            names: old.durable_names.clone(),
            durable_names: old.durable_names.clone(),
            inodes,
            next_inode: old.next_inode,
            ..State::default()
        };
        SimDisk {
            state: Arc::new(Mutex::new(state)),
            flags: Arc::default(),
        }
    }
}

impl Disk for SimDisk {
    fn create_dir_all(&self, _dir: &Path) -> io::Result<()> {
        self.state().step()
    }

    fn lock(&self, dir: &Path) -> io::Result<Option<Box<dyn Any + Send>>> {
        let mut s = self.state();
        s.step()?;
        if s.locked.iter().any(|d| d == dir) {
            return Ok(None);
        }
        s.locked.push(dir.to_owned());
        let unlock = Unlock {
            disk: self.clone(),
            dir: dir.to_owned(),
        };
        Ok(Some(Box::new(unlock)))
    }

    fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        let mut s = self.state();
        s.step()?;
        let names = s.names.keys().filter(|p| parent(p) == dir);
        Ok(names
            .filter_map(|p| p.file_name()?.to_str().map(str::to_owned))
            .collect())
    }

    fn read_into(&self, path: &Path, buf: &mut Vec<u8>) -> io::Result<()> {
        let mut s = self.state();
        s.step()?;
        buf.clear();
        buf.extend_from_slice(&s.inode(path)?.data);
        Ok(())
    }

    fn open_read(&self, path: &Path) -> io::Result<Box<dyn ReadAt>> {
        let mut s = self.state();
        s.step()?;
        let ino = *s.names.get(path).ok_or_else(|| not_found(path))?;
        Ok(Box::new(SimFile {
            disk: self.clone(),
            ino,
        }))
    }

    fn len(&self, path: &Path) -> io::Result<u64> {
        let mut s = self.state();
        s.step()?;
        Ok(s.inode(path)?.data.len() as u64)
    }

    fn create(&self, path: &Path) -> io::Result<Box<dyn Append>> {
        let mut s = self.state();
        s.step()?;
        if s.names.contains_key(path) {
            return Err(io::Error::new(io::ErrorKind::AlreadyExists, "file exists"));
        }
        let ino = s.next_inode;
        s.next_inode += 1;
        s.inodes.insert(ino, Inode::default());
        s.names.insert(path.to_owned(), ino);
        Ok(Box::new(SimFile {
            disk: self.clone(),
            ino,
        }))
    }

    fn truncate(&self, path: &Path, len: u64) -> io::Result<()> {
        let mut s = self.state();
        s.step()?;
        let inode = s.inode(path)?;
        inode.data.truncate(len as usize);
        inode.durable = inode.data.clone();
        Ok(())
    }

    fn remove(&self, path: &Path) -> io::Result<()> {
        let mut s = self.state();
        s.step()?;
        s.names.remove(path).ok_or_else(|| not_found(path))?;
        Ok(())
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        let mut s = self.state();
        s.step()?;
        if s.names.contains_key(to) {
            return Err(io::Error::new(io::ErrorKind::AlreadyExists, "file exists"));
        }
        let ino = s.names.remove(from).ok_or_else(|| not_found(from))?;
        s.names.insert(to.to_owned(), ino);
        Ok(())
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        let mut s = self.state();
        s.step()?;
        let s = &mut *s;
        s.durable_names.retain(|p, _| parent(p) != dir);
        for (p, ino) in &s.names {
            if parent(p) == dir {
                s.durable_names.insert(p.clone(), *ino);
            }
        }
        Ok(())
    }
}

/// Gives a directory's lock back when dropped.
struct Unlock {
    disk: SimDisk,
    dir: PathBuf,
}

impl Drop for Unlock {
    fn drop(&mut self) {
        self.disk.state().locked.retain(|d| d != &self.dir);
    }
}

/// An open file of a [`SimDisk`]: it follows the inode, as an open file descriptor does.
struct SimFile {
    disk: SimDisk,
    ino: u64,
}

impl SimFile {
    /// Runs `f` on the file's inode, after checking the power, and, with `grow_to`, that the
    /// disk has room for the file to take that many bytes.
    fn with<T>(
        &self,
        grow_to: Option<u64>,
        f: impl FnOnce(&mut Inode) -> io::Result<T>,
    ) -> io::Result<T> {
        let mut s = self.disk.state();
        s.step()?;
        if let Some(len) = grow_to {
            s.room_for(self.ino, len)?;
        }
        f(s.inodes
            .get_mut(&self.ino)
            .expect("an open file's inode exists"))
    }

    fn len(&self) -> u64 {
        self.disk.state().inodes[&self.ino].data.len() as u64
    }
}

impl Append for SimFile {
    fn allocate(&mut self, len: u64) -> io::Result<()> {
        self.with(Some(len), |inode| {
            inode.allocated = inode.allocated.max(len);
            Ok(())
        })
    }

    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        let flags = &self.disk.flags;
        let (short, fail) = (
            flags.short_write.load(Ordering::SeqCst),
            flags.fail_write.load(Ordering::SeqCst),
        );
        let grow_to = self.len() + buf.len() as u64;
        self.with(Some(grow_to), |inode| {
            if short {
                inode.data.extend_from_slice(&buf[..buf.len() / 2]);
                return Err(io::Error::other("injected fault: short write"));
            }
            if fail {
                return Err(io::Error::other("injected fault: write failed"));
            }
            inode.data.extend_from_slice(buf);
            Ok(())
        })
    }

    fn sync_data(&mut self) -> io::Result<()> {
        let flags = &self.disk.flags;
        let (fail, lie) = (
            flags.fail_sync.load(Ordering::SeqCst),
            flags.lie_about_sync.load(Ordering::SeqCst),
        );
        self.with(None, |inode| {
            if fail {
                return Err(io::Error::other("injected fault: fdatasync failed"));
            }
            if !lie {
                inode.durable = inode.data.clone();
            }
            Ok(())
        })
    }
}

impl ReadAt for SimFile {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.with(None, |inode| {
            let start = offset as usize;
            let part = inode
                .data
                .get(start..start + buf.len())
                .ok_or_else(|| io::Error::from(io::ErrorKind::UnexpectedEof))?;
            buf.copy_from_slice(part);
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir() -> PathBuf {
        PathBuf::from("/store")
    }

    #[test]
    fn a_power_cut_keeps_only_what_was_synced() {
        let disk = SimDisk::default();
        let a = dir().join("a");
        let mut f = disk.create(&a).unwrap();
        f.write_all(b"synced").unwrap();
        // Not durable yet: the directory entry was never synced.
        assert!(disk.crash(|n| n).list(&dir()).unwrap().is_empty());
        disk.sync_dir(&dir()).unwrap();
        assert_eq!(disk.crash(|_| 0).read(&a).unwrap(), b"");
        f.sync_data().unwrap();
        f.write_all(&[7; 2000]).unwrap();
        // Without tearing, the unsynced tail is lost; with every sector kept, it survives.
        assert_eq!(disk.crash(|_| 0).read(&a).unwrap(), b"synced");
        assert_eq!(disk.crash(|n| n).read(&a).unwrap().len(), 2006);
        // One sector kept: up to the first sector boundary of the file.
        assert_eq!(disk.crash(|_| 1).read(&a).unwrap().len(), SECTOR);
        assert_eq!(disk.crash(|_| 2).read(&a).unwrap().len(), 2 * SECTOR);
        // A removal not made durable is undone by the cut.
        disk.remove(&a).unwrap();
        assert_eq!(disk.crash(|_| 0).read(&a).unwrap(), b"synced");
        disk.sync_dir(&dir()).unwrap();
        assert!(disk.crash(|_| 0).read(&a).is_err());
    }

    #[test]
    fn the_power_fails_at_the_chosen_operation_and_stays_off() {
        let disk = SimDisk::default();
        let mut f = disk.create(&dir().join("a")).unwrap();
        disk.cut_after(2);
        f.write_all(b"x").unwrap();
        assert!(f.sync_data().is_err());
        assert!(disk.is_off());
        assert!(disk.list(&dir()).is_err());
        let lying = SimDisk::default();
        lying.flags.lie_about_sync.store(true, Ordering::SeqCst);
        let mut f = lying.create(&dir().join("a")).unwrap();
        lying.sync_dir(&dir()).unwrap();
        f.write_all(b"x").unwrap();
        f.sync_data().unwrap();
        assert_eq!(lying.crash(|_| 0).read(&dir().join("a")).unwrap(), b"");
    }
}
