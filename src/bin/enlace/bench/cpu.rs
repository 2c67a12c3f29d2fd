//! CPU time of the bench's own process, split between the nodes and the applications.
//!
//! The bench runs its nodes in this process, each on a runtime whose threads are named
//! `node-<name>`, beside the node's store writer (`enlace-store`) and delivery-log writer
//! (`log-<name>`); every other thread (the bench's runtime, where the clients and the sending
//! and receiving applications run) counts as the applications'. Time is what the kernel
//! accounted to each thread (`/proc/self/task/<tid>/schedstat`, nanoseconds on the CPU), so it
//! includes system time. A thread that ends between two samples takes the time it spent since
//! the first with it: none does during a measured window (runtimes and writers live as long as
//! their node), short of a tokio blocking thread retiring after its idle timeout.

use std::time::Duration;

/// CPU time so far of the nodes' threads and of everything else in this process.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Cpu {
    pub node: Duration,
    pub client: Duration,
}

impl Cpu {
    /// The process's threads now. `None` where `/proc` does not say (not Linux).
    pub fn now() -> Option<Cpu> {
        let mut cpu = Cpu::default();
        for task in std::fs::read_dir("/proc/self/task").ok()?.flatten() {
            let path = task.path();
            // A thread that ended since the directory was read is simply not counted.
            let (Ok(comm), Ok(stat)) = (
                std::fs::read_to_string(path.join("comm")),
                std::fs::read_to_string(path.join("schedstat")),
            ) else {
                continue;
            };
            let Some(ns) = on_cpu_ns(&stat) else {
                continue;
            };
            let t = Duration::from_nanos(ns);
            match is_node_thread(comm.trim_end()) {
                true => cpu.node += t,
                false => cpu.client += t,
            }
        }
        Some(cpu)
    }

    /// What was spent between `earlier` and `self`.
    pub fn since(self, earlier: Cpu) -> Cpu {
        Cpu {
            node: self.node.saturating_sub(earlier.node),
            client: self.client.saturating_sub(earlier.client),
        }
    }
}

/// Whether a thread of this name belongs to a node (see the module's documentation).
fn is_node_thread(name: &str) -> bool {
    name.starts_with("node-") || name.starts_with("log-") || name == "enlace-store"
}

/// The first field of a `schedstat` line: nanoseconds spent on the CPU.
fn on_cpu_ns(schedstat: &str) -> Option<u64> {
    schedstat.split_whitespace().next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn threads_are_told_apart_by_name() {
        assert!(is_node_thread("node-dea-1"));
        assert!(is_node_thread("log-cenapi-1"));
        assert!(is_node_thread("enlace-store"));
        assert!(!is_node_thread("tokio-rt-worker"));
        assert!(!is_node_thread("enlace"));
        assert_eq!(on_cpu_ns("429756 0 1\n"), Some(429_756));
        assert_eq!(on_cpu_ns(""), None);
    }

    #[test]
    fn this_process_spends_cpu_time() {
        let before = Cpu::now().expect("Linux has /proc/self/task");
        let mut x = 0u64;
        let start = std::time::Instant::now();
        while start.elapsed() < Duration::from_millis(30) {
            x = std::hint::black_box(x.wrapping_add(1));
        }
        let spent = Cpu::now().unwrap().since(before);
        assert!(spent.client >= Duration::from_millis(10), "{spent:?}");
        assert_eq!(spent.node, Duration::ZERO);
    }
}
