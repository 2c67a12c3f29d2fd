//! What the node remembers for derived products ([`crate::provenance`]), kept on disk so that
//! a restart remembers it: `<data_dir>/provenance.jsonl`, JSON lines.
//!
//! At start the file is replayed (a line cut short by a crash is skipped, and said) and
//! rewritten compacted (only synced when it already is). While the node runs, what it learns
//! is appended every [`FLUSH`]; the file is rewritten compacted again once it holds more than
//! twice `limits.provenance_ids` lines (written a line at a time from what the node remembers, not
//! built whole in memory first: tens of megabytes at the default limit). Appends are not fsynced (a power cut may lose the last [`FLUSH`] of it: products of
//! those sources are then not checked against them); rewrites are, then renamed into place.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use super::runtime::NodeError;
use super::state::Node;
use crate::config::Config;
use crate::provenance::Provenance;

/// The file, in the node's data directory.
const FILE: &str = "provenance.jsonl";

/// How often what the node learnt is appended to the file.
pub const FLUSH: Duration = Duration::from_millis(200);

fn path(config: &Config) -> PathBuf {
    config.data_dir.join(FILE)
}

/// Replays the file (if any) into a node's memory, and rewrites it compacted unless it is.
pub(super) fn open(config: &Config) -> Result<Provenance, NodeError> {
    let path = path(config);
    let io = |e: std::io::Error| NodeError::Memory(format!("{}: {e}", path.display()));
    let text = match std::fs::read(&path) {
        // Valid UTF-8 (the usual case) is taken without a copy.
        Ok(bytes) => String::from_utf8(bytes)
            .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(io(e)),
    };
    let (memory, skipped) = Provenance::replay(config.limits.provenance_ids, &text);
    if skipped > 0 {
        tracing::warn!(
            node = %config.name, file = %path.display(), skipped,
            "provenance lines that do not parse were skipped (a crash cuts the last one short)"
        );
    }
    // A file already as compact as its rewrite would be is not written again, only synced (its
    // appends were not): 20 MB written and fsynced at every start, for nothing, otherwise.
    let compacted = memory.snapshot();
    if compacted != text.as_bytes() {
        super::files::replace(&path, &compacted, super::files::SHARED).map_err(io)?;
    } else if !compacted.is_empty() {
        std::fs::File::open(&path)
            .and_then(|f| f.sync_data())
            .map_err(io)?;
    }
    Ok(memory)
}

/// Appends what the node learnt every [`FLUSH`], until aborted.
pub(super) async fn run(node: Arc<Node>) {
    let mut lines = 0;
    let mut tick = tokio::time::interval(FLUSH);
    loop {
        tick.tick().await;
        flush(&node, &mut lines).await;
    }
}

/// Appends what the node learnt since the last flush; rewrites the file compacted once it
/// holds more than twice what the node remembers. `lines`: appended since the last rewrite.
pub(super) async fn flush(node: &Arc<Node>, lines: &mut usize) {
    let (bytes, snapshot) = {
        let mut memory = node.provenance.lock().expect("provenance lock poisoned");
        let bytes = memory.take_journal();
        *lines += bytes.iter().filter(|b| **b == b'\n').count();
        let compact = *lines > 2 * node.config.limits.provenance_ids;
        if compact {
            *lines = 0;
        }
        (bytes, compact.then(|| memory.snapshot_later()))
    };
    if bytes.is_empty() {
        return;
    }
    let path = path(&node.config);
    let name = node.config.name.clone();
    let writer = node.clone();
    let unwritten = bytes.clone();
    let written = tokio::task::spawn_blocking(move || {
        // One write at a time, even when a flush at shutdown overtakes an aborted loop's.
        let _one = writer.provenance_file.lock().expect("provenance file lock");
        match snapshot {
            Some(all) => {
                super::files::replace_with(&path, super::files::SHARED, |f| all.write_to(f))
            }
            None => std::fs::OpenOptions::new()
                .append(true)
                .create(true)
                .open(&path)
                .and_then(|mut f| super::files::append_whole_at_end(&mut f, &bytes)),
        }
    })
    .await;
    let failed = match written {
        Ok(Ok(())) => return,
        Ok(Err(e)) => e.to_string(),
        Err(e) => e.to_string(),
    };
    tracing::error!(
        node = %name, error = %failed,
        "cannot write what the node remembers for derived products; it stays in memory and \
         is written again at the next flush"
    );
    node.provenance
        .lock()
        .expect("provenance lock poisoned")
        .unwritten(unwritten);
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::MetadataExt as _;
    use std::path::Path;
    use std::time::SystemTime;

    use super::*;
    use crate::id::MessageId;

    fn config(dir: &Path) -> Config {
        let text = "[node]\nname = \"dea-1\"\nagency = \"dea\"\ntrust_domain = \"enlace.test\"\n\
                    listen = \"127.0.0.1:7401\"\ndata_dir = \"data\"\n\n[tls]\ncert = \"c.pem\"\n\
                    key = \"k.pem\"\nca = \"root.pem\"\n";
        let c = Config::parse(text, dir).unwrap();
        std::fs::create_dir_all(&c.data_dir).unwrap();
        c
    }

    /// A compact file is replayed and left as it is (the same file, not a rewrite of it); one
    /// with a line repeated and a torn last line is rewritten compacted.
    #[test]
    fn only_a_file_that_is_not_compact_is_rewritten() {
        let dir = tempfile::tempdir().unwrap();
        let config = config(dir.path());
        let mut memory = Provenance::new(16);
        for _ in 0..3 {
            memory.remember(MessageId::new_v7(SystemTime::now()), Vec::new());
        }
        let compact = memory.snapshot();
        std::fs::write(path(&config), &compact).unwrap();
        let inode = |c: &Config| std::fs::metadata(path(c)).unwrap().ino();
        let before = inode(&config);
        open(&config).unwrap();
        assert_eq!(inode(&config), before, "a compact file was rewritten");
        assert_eq!(std::fs::read(path(&config)).unwrap(), compact);

        let first = compact.split_inclusive(|b| *b == b'\n').next().unwrap();
        let untidy = [&compact[..], first, &first[..first.len() / 2]].concat();
        std::fs::write(path(&config), &untidy).unwrap();
        let before = inode(&config);
        let replayed = open(&config).unwrap();
        assert_ne!(inode(&config), before, "an untidy file was left");
        assert_eq!(std::fs::read(path(&config)).unwrap(), compact);
        assert_eq!(replayed.snapshot(), compact);
    }
}
