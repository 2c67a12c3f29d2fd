//! Reading a log directory (see [`crate::audit`]): the one place its files are opened for
//! reading, by the node's queries and by `enlace log` offline.

use std::fs;
use std::io::{self, BufRead, BufReader};
use std::path::{Path, PathBuf};

use super::{
    BASE, Base, CHECKPOINTS, CheckpointEntry, Filter, KEYS, KeyEntry, Record, records_file_seq,
};

/// The records files of a log directory, by their first record, in order.
pub fn record_files(dir: &Path) -> io::Result<Vec<(u64, PathBuf)>> {
    let mut out = Vec::new();
    for e in fs::read_dir(dir)? {
        let e = e?;
        if let Some(seq) = e.file_name().to_str().and_then(records_file_seq) {
            out.push((seq, e.path()));
        }
    }
    out.sort();
    Ok(out)
}

/// The lines of a JSON-lines file, each parsed or with its error; nothing when it is absent.
fn json_lines<T: serde::de::DeserializeOwned>(path: &Path) -> io::Result<Vec<Result<T, String>>> {
    let text = match fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    Ok(text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).map_err(|e| e.to_string()))
        .collect())
}

/// The entries of `checkpoints.jsonl`, in order.
pub fn checkpoints(dir: &Path) -> io::Result<Vec<Result<CheckpointEntry, String>>> {
    json_lines(&dir.join(CHECKPOINTS))
}

/// The entries of `keys.jsonl`.
pub fn keys(dir: &Path) -> io::Result<Vec<Result<KeyEntry, String>>> {
    json_lines(&dir.join(KEYS))
}

/// The entries of `witnessed.jsonl`: peers' checkpoints this node cosigned.
pub fn witnessed(dir: &Path) -> io::Result<Vec<Result<super::Witnessed, String>>> {
    json_lines(&dir.join(super::WITNESSED))
}

/// `base.json`, if the log was pruned.
pub fn base(dir: &Path) -> io::Result<Option<Result<Base, String>>> {
    match fs::read_to_string(dir.join(BASE)) {
        Ok(t) => Ok(Some(serde_json::from_str(&t).map_err(|e| e.to_string()))),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Calls `each` with every record (and its line) that `filter` matches, oldest first, until it
/// returns `false`. Lines that are not records are skipped.
pub fn scan(
    dir: &Path,
    filter: &Filter,
    mut each: impl FnMut(&str, Record) -> bool,
) -> io::Result<()> {
    for (_, path) in &record_files(dir)? {
        let f = match fs::File::open(path) {
            Ok(f) => f,
            // Pruned while we read.
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        for line in BufReader::new(f).lines() {
            let line = line?;
            let Ok(r) = serde_json::from_str::<Record>(&line) else {
                continue;
            };
            if filter.matches(&r) && !each(&line, r) {
                return Ok(());
            }
        }
    }
    Ok(())
}
