//! The report's advice, as the assessment gives it: for each key below the
//! level the user targets, what the data shows and the practices the
//! assessment recommends for that key, ranked by what the data points at;
//! and each key's trend, this window against the one before.

use serde::Serialize;

use super::render::{format_duration, format_frequency, format_ratio};
use crate::processors::dora::WindowFigures;
use crate::processors::dora::levels::{Cutoffs, Level};

/// The practices of the assessment's recommendations.
pub const AUTOMATED_TESTING: &str = "automated testing";
/// Ship dark, release by switch.
pub const FEATURE_FLAGS: &str = "feature flags";
/// Expose a change to a slice first.
pub const CANARY: &str = "canary or blue-green releases";
/// Undo by machine.
pub const AUTOMATED_ROLLBACK: &str = "automated rollback";
/// Contain a failing dependency.
pub const CIRCUIT_BREAKERS: &str = "circuit breakers";
/// Find where it breaks.
pub const DISTRIBUTED_TRACING: &str = "distributed tracing";
/// Small changes, merged daily.
pub const TRUNK_BASED: &str = "trunk-based development";

/// One key below the target.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Advice {
    /// `deployment_frequency`, `lead_time`, `change_failure_rate` or `time_to_restore`.
    pub metric: &'static str,
    /// Its level now.
    pub level: Level,
    /// The level targeted.
    pub target: Level,
    /// What the data shows, with the figures.
    pub finding: String,
    /// The practices recommended, the one the data points at first.
    pub practices: Vec<&'static str>,
}

/// One key, this window against the one before.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Trend {
    /// The metric, as in [`Advice`].
    pub metric: &'static str,
    /// This window's value (per day, seconds or a ratio).
    pub current: Option<f64>,
    /// The window before's.
    pub previous: Option<f64>,
    /// `better`, `worse`, `unchanged`, or `unknown` without both.
    pub direction: &'static str,
}

/// Whether `level` falls short of `target`.
fn short(level: Option<Level>, target: Level) -> Option<Level> {
    level.filter(|&l| l > target)
}

/// The index of `target` in the cut-off triples (elite, high, medium).
fn cut(target: Level) -> usize {
    match target {
        Level::Elite => 0,
        Level::High => 1,
        Level::Medium | Level::Low => 2,
    }
}

/// The advice for `f` (figures over `window`) against `target`.
pub fn advise(f: &WindowFigures, window: &str, cutoffs: &Cutoffs, target: Level) -> Vec<Advice> {
    let mut out = Vec::new();
    let i = cut(target);
    let name = target.as_str();
    if let Some(level) = short(f.levels.deployment_frequency, target) {
        out.push(Advice {
            metric: "deployment_frequency",
            level,
            target,
            finding: format!(
                "{} successful deployments in the last {window} ({}, the DORA answer: {}); {name} needs at least {}.",
                f.deployments,
                format_frequency(f.deployment_frequency_per_day),
                f.deployment_frequency_answer.as_str().replace('_', " "),
                format_frequency(cutoffs.deployment_frequency[i]),
            ),
            practices: vec![TRUNK_BASED, AUTOMATED_TESTING, FEATURE_FLAGS, CANARY],
        });
    }
    if let Some(level) = short(f.levels.lead_time, target) {
        let (p50, p95) = (f.lead_time.p50, f.lead_time.p95);
        let tail = matches!((p50, p95), (Some(a), Some(b)) if b > 4.0 * a);
        let mut finding = format!(
            "Lead time p50 {}, p95 {} over {} changes, from each change's creation (or its commit) to its first deployment; {name} needs below {}.",
            format_duration(p50),
            format_duration(p95),
            f.lead_time.count,
            format_duration(Some(cutoffs.lead_time[i])),
        );
        if tail {
            finding.push_str(
                " A long tail: the slowest changes wait over four times the median, as long-lived branches do.",
            );
        }
        if let (Some(before), Some(after)) =
            (f.lead_time_before_merge.p50, f.lead_time_after_merge.p50)
        {
            finding.push_str(&format!(
                " Of the {} changes whose merge is known: p50 {} before the merge, {} after it: the waiting is {}.",
                f.lead_time_before_merge.count,
                format_duration(Some(before)),
                format_duration(Some(after)),
                if before >= after {
                    "before the merge (review and long-lived branches)"
                } else {
                    "after the merge (the path to production)"
                }
            ));
        }
        out.push(Advice {
            metric: "lead_time",
            level,
            target,
            finding,
            practices: vec![TRUNK_BASED, AUTOMATED_TESTING, FEATURE_FLAGS],
        });
    }
    if let Some(level) = short(f.levels.change_failure_rate, target) {
        let c = &f.failed_by_cause;
        let deployments = f.deployments + f.failed_deployments;
        let regressions = match c.regression {
            0 => String::new(),
            n => format!(", {n} regressions of the service's health after them"),
        };
        let finding = format!(
            "{} of {deployments} deployments were failed changes ({}): {} made so by an incident after them, {} rolled back, {} failed deployments{regressions}; {name} needs at most {}.",
            f.failed_changes,
            format_ratio(f.change_failure_ratio),
            c.incident,
            c.rolled_back,
            c.deployment_failed,
            format_ratio(Some(cutoffs.change_failure_rate[i])),
        );
        // What most failed changes came from says where to start.
        let practices = if c.rolled_back > c.incident && c.rolled_back >= c.deployment_failed {
            vec![CANARY, AUTOMATED_ROLLBACK, AUTOMATED_TESTING, FEATURE_FLAGS]
        } else if c.deployment_failed > c.incident {
            vec![AUTOMATED_TESTING, AUTOMATED_ROLLBACK, CANARY, FEATURE_FLAGS]
        } else {
            vec![AUTOMATED_TESTING, CANARY, FEATURE_FLAGS, AUTOMATED_ROLLBACK]
        };
        out.push(Advice {
            metric: "change_failure_rate",
            level,
            target,
            finding,
            practices,
        });
    }
    if let Some(level) = short(f.levels.time_to_restore, target) {
        let finding = format!(
            "Time to restore p50 {}, p95 {} over {} resolved incidents; {name} needs below {}.",
            format_duration(f.time_to_restore.p50),
            format_duration(f.time_to_restore.p95),
            f.time_to_restore.count,
            format_duration(Some(cutoffs.time_to_restore[i])),
        );
        // Incidents that deployments caused are undone fastest by undoing
        // the deployment; the others are found by tracing.
        let practices = if f.failed_by_cause.incident > 0 {
            vec![
                AUTOMATED_ROLLBACK,
                DISTRIBUTED_TRACING,
                CIRCUIT_BREAKERS,
                FEATURE_FLAGS,
            ]
        } else {
            vec![
                DISTRIBUTED_TRACING,
                CIRCUIT_BREAKERS,
                AUTOMATED_ROLLBACK,
                FEATURE_FLAGS,
            ]
        };
        out.push(Advice {
            metric: "time_to_restore",
            level,
            target,
            finding,
            practices,
        });
    }
    out
}

/// Each key, `f` against the window before it (`f.previous`).
pub fn trends(f: &WindowFigures) -> Vec<Trend> {
    /// A key: its name, its value, and whether higher is better.
    type Key = (&'static str, fn(&WindowFigures) -> Option<f64>, bool);
    let keys: [Key; 4] = [
        (
            "deployment_frequency",
            |w| Some(w.deployment_frequency_per_day),
            true,
        ),
        ("lead_time", |w| w.lead_time.p50, false),
        ("change_failure_rate", |w| w.change_failure_ratio, false),
        ("time_to_restore", |w| w.time_to_restore.p50, false),
    ];
    keys.into_iter()
        .map(|(metric, value, higher_is_better)| {
            let current = value(f);
            let previous = f.previous.as_deref().and_then(value);
            let direction = match (current, previous) {
                (Some(c), Some(p)) if c == p => "unchanged",
                (Some(c), Some(p)) if (c > p) == higher_is_better => "better",
                (Some(_), Some(_)) => "worse",
                _ => "unknown",
            };
            Trend {
                metric,
                current,
                previous,
                direction,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::processors::dora::levels::ProfileName;
    use crate::processors::dora::{DoraProcessor, FailureCauses, Quantiles, WindowFigures};

    fn figures() -> WindowFigures {
        // Any window's figures, to edit.
        let dora = DoraProcessor::new(&Default::default());
        dora.snapshot(0).production[0].clone()
    }

    #[test]
    fn the_data_ranks_the_practices() {
        let cutoffs = Cutoffs::of(ProfileName::Dora2023);
        let mut f = figures();
        f.deployment_frequency_per_day = 2.0;
        f.levels.deployment_frequency = Some(Level::Elite);
        f.deployments = 8;
        f.failed_deployments = 2;
        f.failed_changes = 5;
        f.change_failure_ratio = Some(0.5);
        f.levels.change_failure_rate = Some(Level::Low);
        f.failed_by_cause = FailureCauses {
            incident: 1,
            rolled_back: 3,
            deployment_failed: 1,
            ..Default::default()
        };
        f.time_to_restore = Quantiles {
            count: 4,
            mean: Some(7_200.0),
            p50: Some(7_200.0),
            p95: Some(36_000.0),
        };
        f.levels.time_to_restore = Some(Level::High);
        f.lead_time = Quantiles {
            count: 10,
            mean: Some(200_000.0),
            p50: Some(100_000.0),
            p95: Some(500_000.0),
        };
        f.levels.lead_time = Some(Level::High);
        f.lead_time_before_merge = Quantiles {
            count: 6,
            mean: None,
            p50: Some(72_000.0),
            p95: None,
        };
        f.lead_time_after_merge = Quantiles {
            count: 6,
            mean: None,
            p50: Some(7_200.0),
            p95: None,
        };
        // Against high: only the change failure rate, rollbacks first.
        let advice = advise(&f, "30d", &cutoffs, Level::High);
        assert_eq!(advice.len(), 1);
        assert_eq!(advice[0].practices[0], CANARY);
        assert_eq!(
            advice[0].finding,
            "5 of 10 deployments were failed changes (50.0%): 1 made so by an incident after them, 3 rolled back, 1 failed deployments; high needs at most 10.0%."
        );
        // Against elite: lead time (with its long tail) and time to
        // restore too; incidents followed deployments, so rollback first.
        let advice = advise(&f, "30d", &cutoffs, Level::Elite);
        let metrics: Vec<_> = advice.iter().map(|a| a.metric).collect();
        assert_eq!(
            metrics,
            ["lead_time", "change_failure_rate", "time_to_restore"]
        );
        assert!(
            advice[0].finding.contains("A long tail"),
            "{}",
            advice[0].finding
        );
        assert!(
            advice[0].finding.contains("elite needs below 1.00 d"),
            "{}",
            advice[0].finding
        );
        assert!(
            advice[0].finding.ends_with(" Of the 6 changes whose merge is known: p50 20.0 h before the merge, 2.00 h after it: the waiting is before the merge (review and long-lived branches)."),
            "{}",
            advice[0].finding
        );
        assert_eq!(advice[2].practices[0], AUTOMATED_ROLLBACK);
        // Failed deployments dominating: testing first.
        f.failed_by_cause = FailureCauses {
            incident: 0,
            rolled_back: 1,
            deployment_failed: 4,
            ..Default::default()
        };
        let advice = advise(&f, "30d", &cutoffs, Level::High);
        assert_eq!(
            advice[0].practices[..2],
            [AUTOMATED_TESTING, AUTOMATED_ROLLBACK]
        );
    }

    #[test]
    fn trends_say_which_way_each_key_went() {
        let mut before = figures();
        before.deployment_frequency_per_day = 1.0;
        before.lead_time.p50 = Some(3_600.0);
        before.change_failure_ratio = Some(0.2);
        let mut now = figures();
        now.deployment_frequency_per_day = 0.5;
        now.lead_time.p50 = Some(1_800.0);
        now.change_failure_ratio = Some(0.2);
        now.previous = Some(Box::new(before));
        let directions: Vec<_> = trends(&now).iter().map(|t| t.direction).collect();
        assert_eq!(directions, ["worse", "better", "unchanged", "unknown"]);
    }
}
