//! `doraflow replay`: backfill from files through the same processors.
//!
//! Inputs are JSON-lines files, each line a CDEvent (bare or in a
//! CloudEvents envelope), a JSON array of them, or an OTLP/JSON export
//! request (`resourceSpans`, `resourceLogs` or `resourceMetrics`, as the
//! OpenTelemetry Collector's file exporter writes them); or a whole file
//! holding one such JSON value (pretty-printed). A line that cannot be read
//! is reported with its file and line number and skipped; the rest is
//! applied.

use std::io::{BufRead, BufReader, IsTerminal, Read};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::Bytes;
use serde_json::Value;

use crate::cdevents;
use crate::model::delivery::DeliveryEvent;
use crate::model::{Signal, Telemetry};
use crate::otlp::{self, Encoding};
use crate::pipeline::Replayer;

/// CDEvents applied together (as one webhook batch would be).
const BATCH: usize = 1_000;
/// Problems printed in full; the rest are only counted.
const SHOWN_PROBLEMS: usize = 20;

/// What a replay read.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReplayStats {
    /// Files read.
    pub files: usize,
    /// Bytes read.
    pub bytes: u64,
    /// CDEvents applied.
    pub events: u64,
    /// OTLP items (spans, log records, metric points) applied.
    pub otlp_items: u64,
    /// Lines (or files) that could not be read, skipped.
    pub malformed: u64,
    /// The first problems, `file:line: error`.
    pub problems: Vec<String>,
}

/// How progress is shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Progress {
    /// A progress bar on a terminal, plain lines otherwise.
    Auto,
    /// Nothing.
    Quiet,
}

/// Shows progress: a bar on a terminal, a line every few seconds otherwise.
struct Meter {
    bar: Option<indicatif::ProgressBar>,
    plain: bool,
    total: u64,
    started: Instant,
    last_line: Instant,
}

impl Meter {
    fn new(progress: Progress, total: u64) -> Meter {
        let terminal = std::io::stderr().is_terminal();
        let bar = (progress == Progress::Auto && terminal).then(|| {
            let bar = indicatif::ProgressBar::new(total);
            bar.set_style(
                indicatif::ProgressStyle::with_template(
                    "{spinner} replay [{bar:40}] {bytes}/{total_bytes} {msg} ({eta})",
                )
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
                .progress_chars("=> "),
            );
            bar
        });
        Meter {
            bar,
            plain: progress == Progress::Auto && !terminal,
            total,
            started: Instant::now(),
            last_line: Instant::now(),
        }
    }

    fn update(&mut self, stats: &ReplayStats) {
        if let Some(bar) = &self.bar {
            bar.set_position(stats.bytes);
            bar.set_message(format!("{} events", stats.events + stats.otlp_items));
        } else if self.plain && self.last_line.elapsed() >= Duration::from_secs(2) {
            self.last_line = Instant::now();
            eprintln!("{}", self.line(stats));
        }
    }

    fn line(&self, stats: &ReplayStats) -> String {
        let seconds = self.started.elapsed().as_secs_f64().max(1e-9);
        format!(
            "replay: {:.1} of {:.1} MiB ({:.0}%), {} events and {} OTLP items, {:.0} events/s",
            stats.bytes as f64 / 1_048_576.0,
            self.total as f64 / 1_048_576.0,
            if self.total > 0 {
                stats.bytes as f64 * 100.0 / self.total as f64
            } else {
                100.0
            },
            stats.events,
            stats.otlp_items,
            stats.events as f64 / seconds,
        )
    }

    fn finish(&self, stats: &ReplayStats) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
        if self.bar.is_some() || self.plain {
            eprintln!("{}", self.line(stats));
        }
    }
}

/// Replays `inputs` into `replayer`.
pub fn replay(
    replayer: &mut Replayer,
    inputs: &[PathBuf],
    progress: Progress,
) -> anyhow::Result<ReplayStats> {
    let mut total = 0;
    for path in inputs {
        total += std::fs::metadata(path)
            .with_context(|| format!("cannot read {}", path.display()))?
            .len();
    }
    let mut meter = Meter::new(progress, total);
    let mut stats = ReplayStats::default();
    let mut batch = Vec::with_capacity(BATCH);
    for path in inputs {
        replay_file(replayer, path, &mut stats, &mut batch, &mut meter)?;
        stats.files += 1;
    }
    flush(replayer, &mut batch, &mut stats);
    meter.finish(&stats);
    Ok(stats)
}

fn flush(replayer: &mut Replayer, batch: &mut Vec<DeliveryEvent>, stats: &mut ReplayStats) {
    if batch.is_empty() {
        return;
    }
    let events = std::mem::take(batch);
    let count = events.len() as u64;
    let applied = replayer.apply(&Telemetry::Delivery(events));
    stats.events += count - applied.refused;
    batch.reserve(BATCH);
}

fn problem(stats: &mut ReplayStats, path: &Path, line: usize, error: impl std::fmt::Display) {
    stats.malformed += 1;
    if stats.problems.len() < SHOWN_PROBLEMS {
        stats
            .problems
            .push(format!("{}:{line}: {error}", path.display()));
    }
}

fn replay_file(
    replayer: &mut Replayer,
    path: &Path,
    stats: &mut ReplayStats,
    batch: &mut Vec<DeliveryEvent>,
    meter: &mut Meter,
) -> anyhow::Result<()> {
    let file =
        std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let mut reader = BufReader::with_capacity(1 << 20, file);
    let mut line = Vec::new();
    let mut number = 0;
    loop {
        line.clear();
        let read = reader
            .read_until(b'\n', &mut line)
            .with_context(|| format!("cannot read {}", path.display()))?;
        if read == 0 {
            break;
        }
        number += 1;
        stats.bytes += read as u64;
        let text = line.trim_ascii();
        if text.is_empty() {
            continue;
        }
        match serde_json::from_slice::<Value>(text) {
            Ok(value) => apply_value(replayer, value, text, path, number, stats, batch),
            Err(_) if number == 1 && matches!(text.first(), Some(b'{' | b'[')) => {
                // Not one value per line: one (pretty-printed) value per file.
                let mut rest = line.clone();
                reader
                    .read_to_end(&mut rest)
                    .with_context(|| format!("cannot read {}", path.display()))?;
                stats.bytes += (rest.len() - line.len()) as u64;
                match serde_json::from_slice::<Value>(&rest) {
                    Ok(value) => apply_value(replayer, value, &rest, path, 1, stats, batch),
                    Err(e) => problem(
                        stats,
                        path,
                        1,
                        format!("not JSON lines nor one JSON value: {e}"),
                    ),
                }
                break;
            }
            Err(e) => problem(stats, path, number, format!("malformed JSON: {e}")),
        }
        if batch.len() >= BATCH {
            flush(replayer, batch, stats);
            meter.update(stats);
        } else if number % 1024 == 0 {
            meter.update(stats);
        }
    }
    Ok(())
}

fn apply_value(
    replayer: &mut Replayer,
    value: Value,
    raw: &[u8],
    path: &Path,
    line: usize,
    stats: &mut ReplayStats,
    batch: &mut Vec<DeliveryEvent>,
) {
    let signal = ["resourceSpans", "resourceLogs", "resourceMetrics"]
        .iter()
        .zip([Signal::Traces, Signal::Logs, Signal::Metrics])
        .find(|(key, _)| value.get(**key).is_some())
        .map(|(_, signal)| signal);
    if let Some(signal) = signal {
        match otlp::decode(signal, Encoding::Json, Bytes::copy_from_slice(raw)) {
            Ok(item) => {
                let items = item.items();
                let applied = replayer.apply(&item);
                stats.otlp_items += items - applied.refused;
            }
            Err(e) => problem(stats, path, line, e),
        }
        return;
    }
    let values = match value {
        Value::Array(values) => values,
        other => vec![other],
    };
    for (i, v) in values.iter().enumerate() {
        match cdevents::decode_event(v) {
            Ok(event) => batch.push(event),
            Err(e) if values.len() > 1 => problem(stats, path, line, format!("event {i}: {e}")),
            Err(e) => problem(stats, path, line, e),
        }
    }
}
