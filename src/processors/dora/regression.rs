//! The regression check: for a production deployment, the service's `red`
//! figures (error ratio, p95, p99 from the HDR windows) in a stretch after
//! it against the stretch before it. A regression is a failed change of its
//! own (`reason="regression"`), with the figures as its evidence.
//!
//! The verdict is a pure function of the two stretches and the settings,
//! so it is the same wherever and whenever it is taken.

use serde::Deserialize;

use crate::settings::ConfigDuration;
use crate::window::WindowStats;

/// `processors.dora.regression`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegressionConfig {
    /// Whether production deployments are judged (needs the `red`
    /// processor in the pipeline). Default `true` once the section is
    /// given; without it, none are.
    #[serde(default = "default_enabled")]
    pub enabled: bool,
    /// The stretch before a deployment its figures are compared with.
    /// Default `2m`. With `after` and a slice to spare, it must fit in
    /// `processors.red.window`: both are read from it.
    #[serde(default = "default_stretch")]
    pub before: ConfigDuration,
    /// The stretch after it that is judged, and the length of the stretch
    /// whose figures, back to what they were before, end the regression.
    /// Default `2m`.
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

const fn default_enabled() -> bool {
    true
}
fn default_stretch() -> ConfigDuration {
    ConfigDuration::from_secs(120)
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
            enabled: true,
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
    /// Collects what is wrong, each under `path`; `red` is the `red`
    /// processor's window and slice, if there is one.
    pub fn validate(
        &self,
        path: &str,
        red: Option<(&ConfigDuration, &ConfigDuration)>,
        errors: &mut Vec<String>,
    ) {
        if !self.enabled {
            return;
        }
        match red {
            None => errors.push(format!(
                "{path}: the regression check reads the `red` processor's windows: configure processors.red (or set {path}.enabled: false)"
            )),
            Some((window, slice))
                if self.before.get() + self.after.get() + slice.get() > window.get() =>
            {
                errors.push(format!(
                    "{path}: before ({}) + after ({}) must fit in processors.red.window ({window}) with a slice ({slice}) to spare: both stretches are read from it",
                    self.before, self.after
                ));
            }
            Some(_) => {}
        }
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

pub use crate::model::delivery::{Health, Regressed, Verdict};

impl From<WindowStats> for Health {
    fn from(stats: WindowStats) -> Self {
        Health {
            requests: stats.requests,
            errors: stats.errors,
            p95_us: stats.quantiles_us.map(|q| q[1]),
            p99_us: stats.quantiles_us.map(|q| q[2]),
        }
    }
}

/// The verdict with what it rests on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Judgement {
    /// The verdict.
    pub verdict: Verdict,
    /// Which figures regressed.
    pub regressed: Regressed,
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
            regressed: Regressed::default(),
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
    let mut regressed = Regressed::default();
    if rose(
        before.error_ratio(),
        after.error_ratio(),
        config.error_ratio_threshold,
        config.min_error_ratio_rise,
    ) {
        regressed.add(Regressed::ERROR_RATIO);
    }
    if rose(
        before.p95_seconds(),
        after.p95_seconds(),
        config.p95_threshold.get().as_secs_f64(),
        latency_effect,
    ) {
        regressed.add(Regressed::P95);
    }
    // p99 has no absolute threshold of the assessment's: a rise alone.
    if rose(
        before.p99_seconds(),
        after.p99_seconds(),
        0.0,
        latency_effect,
    ) {
        regressed.add(Regressed::P99);
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

    fn health(requests: u64, errors: u64, p95_ms: u64, p99_ms: u64) -> Health {
        Health {
            requests,
            errors,
            p95_us: Some(p95_ms * 1_000),
            p99_us: Some(p99_ms * 1_000),
        }
    }

    #[test]
    fn errors_from_a_fifth_of_a_percent_to_five_percent_are_a_regression() {
        let c = RegressionConfig::default();
        let j = judge(&c, health(1_000, 2, 120, 180), health(1_000, 50, 125, 190));
        assert_eq!(j.verdict, Verdict::Regression);
        assert_eq!(j.regressed.names(), ["error_ratio"]);
        assert_eq!(j.before.error_ratio(), Some(0.002));
        assert_eq!(j.after.error_ratio(), Some(0.05));
    }

    #[test]
    fn nothing_changing_is_healthy_and_too_few_requests_not_judged() {
        let c = RegressionConfig::default();
        let same = health(1_000, 2, 120, 180);
        assert_eq!(judge(&c, same, same).verdict, Verdict::Healthy);
        // 99 requests after: not judged, whatever the figures.
        let j = judge(&c, same, health(99, 50, 900, 990));
        assert_eq!((j.verdict, j.regressed), (Verdict::NotJudged, Regressed(0)));
        assert_eq!(
            judge(&c, health(0, 0, 0, 0), same).verdict,
            Verdict::NotJudged
        );
    }

    #[test]
    fn thresholds_relative_rises_and_minimum_effects_all_hold() {
        let c = RegressionConfig::default();
        let before = health(1_000, 20, 300, 400); // 2% errors already
        // 3%: past 1% but not twice 2%: healthy.
        assert_eq!(
            judge(&c, before, health(1_000, 30, 300, 400)).verdict,
            Verdict::Healthy
        );
        // 4.1%: past twice 2% and up 2.1 points: a regression.
        assert_eq!(
            judge(&c, before, health(1_000, 41, 300, 400))
                .regressed
                .names(),
            ["error_ratio"]
        );
        // p95 300 → 700 ms: past 500 ms and twice 300; p99 400 → 850 too.
        let j = judge(&c, before, health(1_000, 20, 700, 850));
        assert_eq!(j.regressed.names(), ["p95", "p99"]);
        // p95 300 → 590 ms: past 500 ms, not twice 300: only p99 (400 → 820).
        assert_eq!(
            judge(&c, before, health(1_000, 20, 590, 820))
                .regressed
                .names(),
            ["p99"]
        );
        // Tiny figures doubling are no regression: 0.1% → 0.3% stays under 1%,
        // and p99 20 → 60 ms rises less than 50 ms.
        let quiet = health(10_000, 10, 10, 20);
        assert_eq!(
            judge(&c, quiet, health(10_000, 30, 12, 60)).verdict,
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
        let (window, slice) = ("5m".parse().expect("valid"), "10s".parse().expect("valid"));
        c.validate(
            "processors.dora.regression",
            Some((&window, &slice)),
            &mut errors,
        );
        assert_eq!(errors.len(), 3, "{errors:?}");
        assert!(errors[0].starts_with("processors.dora.regression.error_ratio_threshold"));
        // 2m + 2m + 10s fit in 5m; 3m + 2m + 10s do not; without `red`, nothing does.
        let mut errors = Vec::new();
        let fits = RegressionConfig::default();
        fits.validate("r", Some((&window, &slice)), &mut errors);
        assert!(errors.is_empty(), "{errors:?}");
        let long = RegressionConfig {
            before: ConfigDuration::from_secs(180),
            ..RegressionConfig::default()
        };
        long.validate("r", Some((&window, &slice)), &mut errors);
        fits.validate("r", None, &mut errors);
        assert_eq!(errors.len(), 2, "{errors:?}");
        assert!(
            errors[0].contains("must fit in processors.red.window (5m)"),
            "{errors:?}"
        );
    }
}
