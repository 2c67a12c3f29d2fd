//! `enlace bench` as a process: one short mixed scenario on one node, quinn alone, and a restart,
//! each printed as JSON.
//! No timing assertions: only that the line is complete and nothing was lost or duplicated.

use std::process::Command;

const ENLACE: &str = env!("CARGO_BIN_EXE_enlace");

/// Runs `enlace bench ARGS --json`, which must succeed; its stdout.
fn bench(args: &[&str]) -> String {
    let out = Command::new(ENLACE)
        .arg("bench")
        .args(args)
        .arg("--json")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "bench failed: {stderr}");
    String::from_utf8(out.stdout).unwrap()
}

/// The one JSON line of a scenario that prints one.
fn one_report(args: &[&str]) -> serde_json::Value {
    serde_json::from_str(bench(args).trim()).unwrap()
}

#[test]
fn mixed_single_prints_one_clean_json_line() {
    let stdout = bench(&[
        "--scenario",
        "mixed",
        "--topology",
        "single",
        "--duration",
        "1",
    ]);
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(
        lines.len(),
        1,
        "one JSON line per scenario on stdout: {stdout}"
    );
    let r: serde_json::Value = serde_json::from_str(lines[0]).unwrap();
    for field in [
        "scenario",
        "bulk_msgs_per_s",
        "bulk_mb_per_s",
        "alert_p50_us",
        "alert_p90_us",
        "alert_p99_us",
        "alert_p999_us",
        "alert_max_us",
        "alerts_lost",
        "messages_lost",
        "duplicates",
    ] {
        assert!(r.get(field).is_some(), "{field} missing from {r}");
    }
    assert_eq!(r["scenario"], "mixed");
    assert_eq!(r["topology"], "single");
    // Both kinds of traffic flowed, so the numbers are not nulls.
    assert!(r["bulk_msgs_per_s"].is_number(), "{r}");
    assert!(r["alert_p50_us"].is_u64(), "{r}");
    assert!(r["bulk_sent"].as_u64().unwrap() > 0, "{r}");
    assert!(r["alerts_sent"].as_u64().unwrap() > 0, "{r}");
    assert_eq!(r["alerts_lost"], 0, "{r}");
    assert_eq!(r["messages_lost"], 0, "{r}");
    assert_eq!(r["duplicates"], 0, "{r}");
}

#[test]
fn raw_quic_measures_both_write_sizes() {
    let r = one_report(&["--scenario", "raw-quic", "--duration", "500ms"]);
    assert_eq!(r["scenario"], "raw-quic");
    // Bytes moved over the window, in both modes (a transfer that never started reads 0).
    for field in ["large_writes_mb_per_s", "framed_1k_mb_per_s"] {
        assert!(r[field].as_f64().unwrap() > 0.0, "{field}: {r}");
    }
    assert!(r["framed_1k_msgs_per_s"].as_f64().unwrap() > 0.0, "{r}");
}

#[test]
fn restart_runs_the_node_as_a_process_and_reads_its_startup() {
    let r = one_report(&["--scenario", "restart", "--copies", "300", "--cold"]);
    assert_eq!(r["scenario"], "restart");
    // The node's files were evicted from the page cache before the restart: its store holds
    // the 300 records (each 1 KiB and more).
    assert!(r["evicted_mb"].as_f64().unwrap() > 0.3, "{r}");
    // The restarted process's own startup line was found and read.
    for field in [
        "log_open_ms",
        "store_open_ms",
        "memory_open_ms",
        "queues_ms",
    ] {
        assert!(r[field].is_u64(), "{field}: {r}");
    }
    let restart = r["restart_s"].as_f64().unwrap();
    assert!(restart > 0.0, "{r}");
    assert!(r["first_delivery_s"].as_f64().unwrap() >= restart, "{r}");
    // The memory figures are the node process's (read from /proc while it ran).
    assert!(r["rss_mb_restarted"].as_f64().unwrap() > 0.0, "{r}");
}
