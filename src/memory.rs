//! `processors.memory_limiter`: refuse new data before the process runs out
//! of memory, as the OpenTelemetry Collector's memory limiter does.
//!
//! A task reads the process's resident memory every `check_interval`. At or
//! above the soft limit (`limit_mib - spike_limit_mib`) the pipeline refuses
//! every new batch with back-pressure (RESOURCE_EXHAUSTED with `RetryInfo`,
//! 429 with `Retry-After`; the Kafka receiver pauses its partitions), so what
//! was accepted is never dropped and the client retries later; below it,
//! batches are taken again. Above the hard limit the state is logged as an
//! error: only refusing is possible in a process without a garbage
//! collector, which is why the soft limit leaves room for a spike.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use metrics::{counter, gauge};
use serde::Deserialize;
use tokio_util::sync::CancellationToken;

use crate::instruments;
use crate::settings::ConfigDuration;

/// `processors.memory_limiter`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemoryLimiterConfig {
    /// The hard limit of resident memory, MiB.
    pub limit_mib: u64,
    /// Room kept for a spike: refusing starts at `limit_mib -
    /// spike_limit_mib`. Default a fifth of `limit_mib`.
    #[serde(default)]
    pub spike_limit_mib: Option<u64>,
    /// How often resident memory is read. Default `1s`.
    #[serde(default = "default_check_interval")]
    pub check_interval: ConfigDuration,
}

fn default_check_interval() -> ConfigDuration {
    ConfigDuration::from_secs(1)
}

impl MemoryLimiterConfig {
    /// Cross-field checks, each problem prefixed with its key path.
    pub fn validate(&self, path: &str, errors: &mut Vec<String>) {
        if self.limit_mib == 0 {
            errors.push(format!("{path}.limit_mib: must be at least 1"));
        }
        if self.spike_limit_mib.is_some_and(|s| s >= self.limit_mib) {
            errors.push(format!(
                "{path}.spike_limit_mib: must be below limit_mib ({})",
                self.limit_mib
            ));
        }
        if self.check_interval.get().is_zero() {
            errors.push(format!("{path}.check_interval: must be longer than 0"));
        }
    }

    /// The soft limit, bytes.
    pub fn soft_bytes(&self) -> u64 {
        let spike = self.spike_limit_mib.unwrap_or(self.limit_mib / 5);
        self.limit_mib.saturating_sub(spike) * 1_048_576
    }

    /// The hard limit, bytes.
    pub fn hard_bytes(&self) -> u64 {
        self.limit_mib * 1_048_576
    }
}

/// What receivers consult before handing over a batch.
#[derive(Debug, Clone, Default)]
pub struct MemoryGate {
    refusing: Arc<AtomicBool>,
    refused: Arc<AtomicU64>,
    /// The room between the soft and the hard limit, bytes.
    spike_bytes: u64,
}

impl MemoryGate {
    /// The room between the soft and the hard limit: what requests in
    /// flight may take before the limiter's next reading.
    pub fn spike_bytes(&self) -> u64 {
        self.spike_bytes
    }

    /// True while memory is at or above the soft limit: refuse new data.
    pub fn refusing(&self) -> bool {
        let refusing = self.refusing.load(Ordering::Relaxed);
        if refusing {
            self.refused.fetch_add(1, Ordering::Relaxed);
            counter!(instruments::MEMORY_LIMITER_REFUSED).increment(1);
        }
        refusing
    }
}

/// Gives the memory the allocator holds but no longer uses back to the
/// system; true if it could. glibc keeps freed memory in its arenas, so after
/// a burst the resident size can stay above the soft limit with little of it
/// in use, and the limiter would refuse for good. This is the analogue of the
/// Collector's forced garbage collection above its soft limit.
pub(crate) fn release_free_memory() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: malloc_trim takes no pointer and only walks glibc's own
        // arenas, under their locks; it is safe to call from any thread.
        unsafe { libc::malloc_trim(0) };
        true
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        false
    }
}

/// Keeps glibc from handing request-sized buffers back to the kernel after
/// each request. Its default serves a block over 128 KB (an HTTP/2 read
/// buffer of a 1 MiB frame, a request body) with a fresh `mmap` and trims
/// the heap's top once 128 KB are free, so under load every request's
/// buffers were new pages: at saturation about 33,000 page faults a
/// second, each a trap and a zeroed page (BENCHMARKS.md). With blocks up to
/// 4 MiB taken from the heap and up to 8 MiB of free heap kept, they were
/// about 70 a second, and spans per CPU-second rose by a third; resident
/// memory did not grow, and `release_free_memory` still gives everything
/// free back (after a large scrape, and above the memory limiter's soft
/// limit). Call it once at start, before other threads allocate.
pub fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: mallopt only sets glibc's malloc parameters; it takes no
        // pointer, and is called before any other thread exists.
        unsafe {
            libc::mallopt(libc::M_MMAP_THRESHOLD, 4 << 20);
            libc::mallopt(libc::M_TRIM_THRESHOLD, 8 << 20);
        }
    }
}

/// The process's resident memory in bytes (Linux: `/proc/self/status`).
pub fn resident_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1_024)
}

/// Starts the limiter; it reads memory until `stop` is cancelled.
pub fn start(
    config: MemoryLimiterConfig,
    stop: CancellationToken,
) -> (MemoryGate, tokio::task::JoinHandle<()>) {
    let (soft, hard) = (config.soft_bytes(), config.hard_bytes());
    let gate = MemoryGate {
        spike_bytes: hard - soft,
        ..MemoryGate::default()
    };
    let refusing = gate.refusing.clone();
    gauge!(instruments::MEMORY_LIMIT).set(hard as f64);
    let task = tokio::spawn(async move {
        let mut tick =
            tokio::time::interval(config.check_interval.get().max(Duration::from_millis(10)));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = tick.tick() => {}
            }
            let Some(mut rss) = resident_bytes() else {
                continue;
            };
            if rss >= soft && release_free_memory() {
                rss = resident_bytes().unwrap_or(rss);
            }
            gauge!(instruments::MEMORY_RESIDENT).set(rss as f64);
            let above = rss >= soft;
            let was = refusing.swap(above, Ordering::Relaxed);
            gauge!(instruments::MEMORY_LIMITER_REFUSING).set(if above { 1.0 } else { 0.0 });
            match (was, above) {
                (false, true) => tracing::warn!(
                    resident_mib = rss / 1_048_576,
                    soft_limit_mib = soft / 1_048_576,
                    "memory above the soft limit: refusing new data"
                ),
                (true, false) => tracing::info!(
                    resident_mib = rss / 1_048_576,
                    "memory below the soft limit: taking data again"
                ),
                _ => {}
            }
            if rss >= hard {
                tracing::error!(
                    resident_mib = rss / 1_048_576,
                    limit_mib = hard / 1_048_576,
                    "memory above the hard limit"
                );
            }
        }
    });
    (gate, task)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_and_validation() {
        let config: MemoryLimiterConfig = serde_saphyr::from_str("limit_mib: 500").expect("parses");
        assert_eq!(config.hard_bytes(), 500 * 1_048_576);
        assert_eq!(config.soft_bytes(), 400 * 1_048_576);
        let mut errors = Vec::new();
        MemoryLimiterConfig {
            limit_mib: 100,
            spike_limit_mib: Some(100),
            check_interval: ConfigDuration::from_secs(1),
        }
        .validate("processors.memory_limiter", &mut errors);
        assert_eq!(
            errors,
            ["processors.memory_limiter.spike_limit_mib: must be below limit_mib (100)"]
        );
        assert!(resident_bytes().is_some_and(|b| b > 1_000_000));
    }
}
