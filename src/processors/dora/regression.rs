//! The regression check: for a production deployment, the service's `red`
//! figures (error ratio, p95, p99 from the HDR windows) in a stretch after
//! it against the stretch before it. A regression is a failed change of its
//! own (`reason="regression"`), with the figures as its evidence.
//!
//! The verdict is a pure function of the two stretches and the settings,
//! so it is the same wherever and whenever it is taken.

use serde::{Deserialize, Serialize};

use crate::settings::ConfigDuration;
use crate::window::WindowStats;

/// `processors.dora.regression`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegressionConfig {
    /// Whether production deployments are judged (needs the `red`
    /// processor). Default `false`.
    #[serde(default)]
    pub enabled: bool,
    /// The stretch before a deployment its figures are compared with.
    /// Default `5m`.
    #[serde(default = "default_stretch")]
    pub before: ConfigDuration,
    /// The stretch after it that is judged. Default `5m`.
    #[serde(default = "default_stretch")]
    pub after: ConfigDuration,
    /// Fewest requests on each side for a verdict; fewer is "not judged".
    /// Default 100.
    #[serde(default = "default_min_requests")]
    pub min_requests: u64,
    /// The error ratio above which the after stretch may be a regression
    /// (the assessment's 1%). Default 0.01.
    #[serde(default = "default_error_ratio")]
    pub error_ratio_threshold: f64,
    /// The p95 latency above which it may be one (the assessment's 500 ms).
    /// Default `500ms`.
    #[serde(default = "default_p95")]
    pub p95_threshold: ConfigDuration,
    /// How many times the before figure the after one must be too (a
    /// service that was already above a threshold regresses only by rising
    /// this much more). Default 2.
    #[serde(default = "default_relative_rise")]
    pub relative_rise: f64,
    /// The smallest rise of the error ratio that counts. Default 0.005.
    #[serde(default = "default_min_error_rise")]
    pub min_error_ratio_rise: f64,
    /// The smallest rise of p95 or p99 that counts. Default `50ms`.
    #[serde(default = "default_min_latency_rise")]
    pub min_latency_rise: ConfigDuration,
}

fn default_stretch() -> ConfigDuration {
    ConfigDuration::from_secs(300)
}
const fn default_min_requests() -> u64 {
    100
}
const fn default_error_ratio() -> f64 {
    0.01
}
fn default_p95() -> ConfigDuration {
    ConfigDuration::from_millis(500)
}
const fn default_relative_rise() -> f64 {
    2.0
}
const fn default_min_error_rise() -> f64 {
    0.005
}
fn default_min_latency_rise() -> ConfigDuration {
    ConfigDuration::from_millis(50)
}

impl Default for RegressionConfig {
    fn default() -> Self {
        RegressionConfig {
            enabled: false,
            before: default_stretch(),
            after: default_stretch(),
            min_requests: default_min_requests(),
            error_ratio_threshold: default_error_ratio(),
            p95_threshold: default_p95(),
            relative_rise: default_relative_rise(),
            min_error_ratio_rise: default_min_error_rise(),
            min_latency_rise: default_min_latency_rise(),
        }
    }
}

impl RegressionConfig {
    /// Collects what is wrong, each under `path`.
    pub fn validate(&self, path: &str, errors: &mut Vec<String>) {
        if !(0.0..1.0).contains(&self.error_ratio_threshold) {
            errors.push(format!(
                "{path}.error_ratio_threshold: must be in 0..1, got {}",
                self.error_ratio_threshold
            ));
        }
        if self.relative_rise < 1.0 || !self.relative_rise.is_finite() {
            errors.push(format!(
                "{path}.relative_rise: must be at least 1, got {}",
                self.relative_rise
            ));
        }
        if self.before.get().is_zero() || self.after.get().is_zero() {
            errors.push(format!("{path}: before and after must be longer than 0"));
        }
        if self.min_requests == 0 {
            errors.push(format!("{path}.min_requests: must be at least 1"));
        }
    }
}

/// A stretch's figures, as the verdict and its evidence give them.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize)]
pub struct Health {
    /// Requests.
    pub requests: u64,
    /// Errors.
    pub errors: u64,
    /// Errors / requests (`None` without requests).
    pub error_ratio: Option<f64>,
    /// p95 latency, seconds.
    pub p95_seconds: Option<f64>,
    /// p99 latency, seconds.
    pub p99_seconds: Option<f64>,
}

impl From<WindowStats> for Health {
    fn from(stats: WindowStats) -> Self {
        let seconds = |us: u64| us as f64 / 1e6;
        Health {
            requests: stats.requests,
            errors: stats.errors,
            error_ratio: stats.error_ratio(),
            p95_seconds: stats.quantiles_us.map(|q| seconds(q[1])),
            p99_seconds: stats.quantiles_us.map(|q| seconds(q[2])),
        }
    }
}

/// What the check made of a deployment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// Too few requests on one side (or the stretch no longer held).
    NotJudged,
    /// Nothing rose past the thresholds.
    Healthy,
    /// A figure rose: a failed change.
    Regression,
}

/// The verdict with what it rests on.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Judgement {
    /// The verdict.
    pub verdict: Verdict,
    /// Which figures regressed: `error_ratio`, `p95`, `p99`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub regressed: Vec<&'static str>,
    /// The stretch before.
    pub before: Health,
    /// The stretch after.
    pub after: Health,
}

/// Judges a deployment from the stretches before and after it.
pub fn judge(config: &RegressionConfig, before: Health, after: Health) -> Judgement {
    let enough = before.requests >= config.min_requests && after.requests >= config.min_requests;
    if !enough {
        return Judgement {
            verdict: Verdict::NotJudged,
            regressed: Vec::new(),
            before,
            after,
        };
    }
    // A figure regressed when it is past its threshold, past `relative_rise`
    // times what it was, and up by at least the minimum effect.
    let rose = |was: Option<f64>, is: Option<f64>, threshold: f64, effect: f64| match (was, is) {
        (Some(was), Some(is)) => {
            is > threshold.max(was * config.relative_rise) && is - was >= effect
        }
        _ => false,
    };
    let latency_effect = config.min_latency_rise.get().as_secs_f64();
    let mut regressed = Vec::new();
    if rose(
        before.error_ratio,
        after.error_ratio,
        config.error_ratio_threshold,
        config.min_error_ratio_rise,
    ) {
        regressed.push("error_ratio");
    }
    if rose(
        before.p95_seconds,
        after.p95_seconds,
        config.p95_threshold.get().as_secs_f64(),
        latency_effect,
    ) {
        regressed.push("p95");
    }
    // p99 has no absolute threshold of the assessment's: a rise alone.
    if rose(before.p99_seconds, after.p99_seconds, 0.0, latency_effect) {
        regressed.push("p99");
    }
    Judgement {
        verdict: if regressed.is_empty() {
            Verdict::Healthy
        } else {
            Verdict::Regression
        },
        regressed,
        before,
        after,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn health(requests: u64, errors: u64, p95_ms: f64, p99_ms: f64) -> Health {
        Health {
            requests,
            errors,
            error_ratio: (requests > 0).then(|| errors as f64 / requests as f64),
            p95_seconds: Some(p95_ms / 1e3),
            p99_seconds: Some(p99_ms / 1e3),
        }
    }

    #[test]
    fn errors_from_a_fifth_of_a_percent_to_five_percent_are_a_regression() {
        let c = RegressionConfig::default();
        let j = judge(
            &c,
            health(1_000, 2, 120.0, 180.0),
            health(1_000, 50, 125.0, 190.0),
        );
        assert_eq!(j.verdict, Verdict::Regression);
        assert_eq!(j.regressed, ["error_ratio"]);
        assert_eq!(j.before.error_ratio, Some(0.002));
        assert_eq!(j.after.error_ratio, Some(0.05));
    }

    #[test]
    fn nothing_changing_is_healthy_and_too_few_requests_not_judged() {
        let c = RegressionConfig::default();
        let same = health(1_000, 2, 120.0, 180.0);
        assert_eq!(judge(&c, same, same).verdict, Verdict::Healthy);
        // 99 requests after: not judged, whatever the figures.
        let j = judge(&c, same, health(99, 50, 900.0, 990.0));
        assert_eq!((j.verdict, j.regressed.len()), (Verdict::NotJudged, 0));
        assert_eq!(
            judge(&c, health(0, 0, 0.0, 0.0), same).verdict,
            Verdict::NotJudged
        );
    }

    #[test]
    fn thresholds_relative_rises_and_minimum_effects_all_hold() {
        let c = RegressionConfig::default();
        let before = health(1_000, 20, 300.0, 400.0); // 2% errors already
        // 3%: past 1% but not twice 2%: healthy.
        assert_eq!(
            judge(&c, before, health(1_000, 30, 300.0, 400.0)).verdict,
            Verdict::Healthy
        );
        // 4.1%: past twice 2% and up 2.1 points: a regression.
        assert_eq!(
            judge(&c, before, health(1_000, 41, 300.0, 400.0)).regressed,
            ["error_ratio"]
        );
        // p95 300 → 700 ms: past 500 ms and twice 300; p99 400 → 850 too.
        let j = judge(&c, before, health(1_000, 20, 700.0, 850.0));
        assert_eq!(j.regressed, ["p95", "p99"]);
        // p95 300 → 590 ms: past 500 ms, not twice 300: only p99 (400 → 820).
        assert_eq!(
            judge(&c, before, health(1_000, 20, 590.0, 820.0)).regressed,
            ["p99"]
        );
        // Tiny figures doubling are no regression: 0.1% → 0.3% stays under 1%,
        // and p99 20 → 60 ms rises less than 50 ms.
        let quiet = health(10_000, 10, 10.0, 20.0);
        assert_eq!(
            judge(&c, quiet, health(10_000, 30, 12.0, 60.0)).verdict,
            Verdict::Healthy
        );
    }

    #[test]
    fn settings_out_of_range_are_refused() {
        let c = RegressionConfig {
            relative_rise: 0.5,
            error_ratio_threshold: 1.5,
            min_requests: 0,
            ..RegressionConfig::default()
        };
        let mut errors = Vec::new();
        c.validate("processors.dora.regression", &mut errors);
        assert_eq!(errors.len(), 3, "{errors:?}");
        assert!(errors[0].starts_with("processors.dora.regression.error_ratio_threshold"));
    }
}
