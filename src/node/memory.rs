//! What the node remembers for derived products ([`crate::provenance`]), kept on disk so that
//! a restart remembers it: `<data_dir>/provenance.jsonl`, JSON lines.
//!
//! At start the file is replayed (a line cut short by a crash is skipped, and said) and
//! rewritten compacted. While the node runs, what it learns is appended every [`FLUSH`]; the
//! file is rewritten compacted again once it holds more than twice `limits.provenance_ids`
//! lines. Appends are not fsynced (a power cut may lose the last [`FLUSH`] of it: products of
//! those sources are then not checked against them); rewrites are, then renamed into place.

use std::io::Write as _;
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

/// Replays the file (if any) into a node's memory, and rewrites it compacted.
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
    super::files::replace(&path, &memory.snapshot(), super::files::SHARED).map_err(io)?;
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
        (bytes, compact.then(|| memory.snapshot()))
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
            Some(all) => super::files::replace(&path, &all, super::files::SHARED),
            None => std::fs::OpenOptions::new()
                .append(true)
                .create(true)
                .open(&path)
                .and_then(|mut f| f.write_all(&bytes)),
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
