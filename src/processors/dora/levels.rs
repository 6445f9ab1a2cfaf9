//! DORA performance levels: elite, high, medium, low, per metric, by a
//! versioned benchmark profile of the State of DevOps report.
//!
//! Each profile is a set of cut-offs; where a report's ranges overlap or
//! leave gaps, a value takes the best level whose cut-off it meets, and low
//! otherwise. Every cut-off can be overridden in config.

use serde::{Deserialize, Serialize};

use crate::settings::ConfigDuration;

/// A performance level.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, PartialOrd, Ord)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    /// The best.
    Elite,
    /// Second.
    High,
    /// Third.
    Medium,
    /// The rest.
    Low,
}

impl Level {
    /// Every level, best first.
    pub const ALL: [Level; 4] = [Level::Elite, Level::High, Level::Medium, Level::Low];

    /// The `level` label value.
    pub const fn as_str(self) -> &'static str {
        match self {
            Level::Elite => "elite",
            Level::High => "high",
            Level::Medium => "medium",
            Level::Low => "low",
        }
    }
}

/// Deployment frequency as the DORA survey asks it ("how often does your
/// team deploy to production?"), answered from the days with deployments:
/// - `daily`: in most weeks of the window, deployments on at least 3 of
///   its 7 days (Four Keys' rule for daily);
/// - `on_demand`: daily, and most deploying days have more than one;
/// - `weekly`: a deployment in most weeks;
/// - `monthly`: a deployment in most 30-day months;
/// - `less`: otherwise.
///
/// Weeks and months are 7- and 30-day blocks back from now (a window
/// shorter than one counts as one); "most" is the nearest-rank median.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FrequencyAnswer {
    /// Multiple deploys a day, most days.
    OnDemand,
    /// Between once a day and once a week: most days.
    Daily,
    /// Between once a week and once a month.
    Weekly,
    /// Between once a month and once every six months.
    Monthly,
    /// Less often.
    Less,
}

impl FrequencyAnswer {
    /// Every answer, most frequent first.
    pub const ALL: [FrequencyAnswer; 5] = [
        FrequencyAnswer::OnDemand,
        FrequencyAnswer::Daily,
        FrequencyAnswer::Weekly,
        FrequencyAnswer::Monthly,
        FrequencyAnswer::Less,
    ];

    /// The `answer` label value.
    pub const fn as_str(self) -> &'static str {
        match self {
            FrequencyAnswer::OnDemand => "on_demand",
            FrequencyAnswer::Daily => "daily",
            FrequencyAnswer::Weekly => "weekly",
            FrequencyAnswer::Monthly => "monthly",
            FrequencyAnswer::Less => "less",
        }
    }

    /// The answer for successful deployments `ago` (nanoseconds before
    /// now, each in `[0, length)`) in a window of `length`.
    pub fn of(ago: impl Iterator<Item = i64>, length: i64) -> FrequencyAnswer {
        const DAY: i64 = 86_400_000_000_000;
        let days = ((length + DAY - 1) / DAY).max(1) as usize;
        Self::of_days(ago.filter_map(|t| usize::try_from(t / DAY).ok()), days)
    }

    /// The answer for successful deployments on the days `back` (0 for
    /// today, 1 for yesterday, ... in the calendar the figures are kept in)
    /// in a window of `days` days.
    pub fn of_days(back: impl Iterator<Item = usize>, days: usize) -> FrequencyAnswer {
        let days = days.max(1);
        let weeks = (days / 7).max(1);
        let months = (days / 30).max(1);
        let mut per_day = vec![0u32; days];
        for d in back {
            if let Some(count) = per_day.get_mut(d) {
                *count += 1;
            }
        }
        let mut days_per_week = vec![0u32; weeks];
        let mut per_month = vec![0u32; months];
        for (day, &count) in per_day.iter().enumerate() {
            if let Some(week) = days_per_week.get_mut(day / 7) {
                *week += u32::from(count > 0);
            }
            if let Some(month) = per_month.get_mut(day / 30) {
                *month += count;
            }
        }
        let deploying: Vec<u32> = per_day.iter().copied().filter(|&c| c > 0).collect();
        let days_a_week = median(days_per_week);
        if days_a_week >= 3 {
            if median(deploying) >= 2 {
                FrequencyAnswer::OnDemand
            } else {
                FrequencyAnswer::Daily
            }
        } else if days_a_week >= 1 {
            FrequencyAnswer::Weekly
        } else if median(per_month) >= 1 {
            FrequencyAnswer::Monthly
        } else {
            FrequencyAnswer::Less
        }
    }
}

/// The nearest-rank median (the lower of two middles); 0 when empty.
fn median(mut values: Vec<u32>) -> u32 {
    if values.is_empty() {
        return 0;
    }
    values.sort_unstable();
    values[values.len().div_ceil(2) - 1]
}

/// Which report's benchmarks the levels follow.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
pub enum ProfileName {
    /// Accelerate State of DevOps 2019.
    #[serde(rename = "2019")]
    Dora2019,
    /// Accelerate State of DevOps 2021.
    #[serde(rename = "2021")]
    Dora2021,
    /// Accelerate State of DevOps 2023 (the default).
    #[default]
    #[serde(rename = "2023")]
    Dora2023,
    /// Accelerate State of DevOps 2024.
    #[serde(rename = "2024")]
    Dora2024,
}

impl ProfileName {
    /// Every preset, oldest first.
    pub const ALL: [ProfileName; 4] = [
        ProfileName::Dora2019,
        ProfileName::Dora2021,
        ProfileName::Dora2023,
        ProfileName::Dora2024,
    ];

    /// The name in config (`2019`, ...).
    pub const fn as_str(self) -> &'static str {
        match self {
            ProfileName::Dora2019 => "2019",
            ProfileName::Dora2021 => "2021",
            ProfileName::Dora2023 => "2023",
            ProfileName::Dora2024 => "2024",
        }
    }

    fn parse(name: &str) -> Option<ProfileName> {
        ProfileName::ALL
            .into_iter()
            .find(|p| p.as_str() == name.trim())
    }
}

const HOUR: f64 = 3_600.0;
const DAY: f64 = 86_400.0;

/// The cut-offs of one profile, for elite, high and medium in that order.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Cutoffs {
    /// Deployments per day at least.
    pub deployment_frequency: [f64; 3],
    /// Lead time (p50) in seconds, strictly below.
    pub lead_time: [f64; 3],
    /// Change failure rate (0..1), at most.
    pub change_failure_rate: [f64; 3],
    /// Time to restore (p50) in seconds, strictly below.
    pub time_to_restore: [f64; 3],
}

impl Cutoffs {
    /// The published cut-offs of a profile.
    pub fn of(profile: ProfileName) -> Cutoffs {
        match profile {
            // Elite: on demand; high: daily to weekly; medium: weekly to
            // monthly; low: monthly to every 6 months. Lead time < 1 day /
            // 1 day–1 week / 1 week–1 month. Change failure rate 5% / 20% /
            // 10% / 40%: the medium cluster fails less often than the high
            // one (it is medium for its throughput), so per metric a rate
            // up to 20% is high and medium is never given for it. Recovery
            // < 1 hour / < 1 day / < 1 day / 1 week–1 month.
            ProfileName::Dora2024 => Cutoffs {
                deployment_frequency: [1.0, 1.0 / 7.0, 1.0 / 30.0],
                lead_time: [DAY, 7.0 * DAY, 30.0 * DAY],
                change_failure_rate: [0.05, 0.20, 0.10],
                time_to_restore: [HOUR, DAY, DAY],
            },
            // Elite: on demand; high: daily to weekly; medium: weekly to
            // monthly. Lead time < 1 day / < 1 week / < 1 month; failure rate
            // <= 5% / 10% / 15%; recovery < 1 hour / < 1 day / < 1 week.
            ProfileName::Dora2023 => Cutoffs {
                deployment_frequency: [1.0, 1.0 / 7.0, 1.0 / 30.0],
                lead_time: [DAY, 7.0 * DAY, 30.0 * DAY],
                change_failure_rate: [0.05, 0.10, 0.15],
                time_to_restore: [HOUR, DAY, 7.0 * DAY],
            },
            // Elite: on demand; high: weekly to monthly; medium: monthly to
            // every 6 months. Lead time < 1 hour / 1 day–1 week / 1–6 months;
            // failure rate 0–15% / 16–30% (high, medium and low alike);
            // recovery < 1 hour / < 1 day / 1 day–1 week.
            ProfileName::Dora2021 => Cutoffs {
                deployment_frequency: [1.0, 1.0 / 30.0, 1.0 / 182.0],
                lead_time: [HOUR, 7.0 * DAY, 182.0 * DAY],
                change_failure_rate: [0.15, 0.30, 0.30],
                time_to_restore: [HOUR, DAY, 7.0 * DAY],
            },
            // Elite: on demand; high: daily to weekly; medium: weekly to
            // monthly. Lead time < 1 day / 1 day–1 week / 1 week–1 month;
            // failure rate 0–15% for elite, high and medium; recovery < 1
            // hour / < 1 day / < 1 day.
            ProfileName::Dora2019 => Cutoffs {
                deployment_frequency: [1.0, 1.0 / 7.0, 1.0 / 30.0],
                lead_time: [DAY, 7.0 * DAY, 30.0 * DAY],
                change_failure_rate: [0.15, 0.15, 0.15],
                time_to_restore: [HOUR, DAY, DAY],
            },
        }
    }

    /// The profile's cut-offs with `overrides` applied.
    pub fn with(mut self, overrides: &CutoffOverrides) -> Cutoffs {
        if let Some(df) = overrides.deployment_frequency {
            self.deployment_frequency = df;
        }
        if let Some(lt) = &overrides.lead_time {
            self.lead_time = lt.clone().map(|d| d.get().as_secs_f64());
        }
        if let Some(cfr) = overrides.change_failure_rate {
            self.change_failure_rate = cfr;
        }
        if let Some(ttr) = &overrides.time_to_restore {
            self.time_to_restore = ttr.clone().map(|d| d.get().as_secs_f64());
        }
        self
    }

    /// Level of a deployment frequency in deployments per day.
    pub fn deployment_frequency(&self, per_day: f64) -> Level {
        at_least(per_day, &self.deployment_frequency)
    }

    /// Level of a lead time (seconds).
    pub fn lead_time(&self, seconds: f64) -> Level {
        below(seconds, &self.lead_time)
    }

    /// Level of a change failure rate (0..1).
    pub fn change_failure_rate(&self, ratio: f64) -> Level {
        let c = &self.change_failure_rate;
        level_of([ratio <= c[0], ratio <= c[1], ratio <= c[2]])
    }

    /// Level of a time to restore (seconds).
    pub fn time_to_restore(&self, seconds: f64) -> Level {
        below(seconds, &self.time_to_restore)
    }
}

fn level_of(meets: [bool; 3]) -> Level {
    match meets {
        [true, _, _] => Level::Elite,
        [_, true, _] => Level::High,
        [_, _, true] => Level::Medium,
        _ => Level::Low,
    }
}

fn at_least(value: f64, c: &[f64; 3]) -> Level {
    level_of([value >= c[0], value >= c[1], value >= c[2]])
}

fn below(value: f64, c: &[f64; 3]) -> Level {
    level_of([value < c[0], value < c[1], value < c[2]])
}

/// `processors.dora.levels`: a preset's name (`levels: 2024`), or a map of
/// cut-offs replacing the preset's, each a list of three values for elite,
/// high and medium, with the `preset` they start from.
#[derive(Debug, Clone, Default)]
pub struct CutoffOverrides {
    /// The preset the levels start from; `None`: `processors.dora.profile`.
    pub preset: Option<ProfileName>,
    /// Deployments per day at least, e.g. `[1, 0.142857, 0.033333]`.
    pub deployment_frequency: Option<[f64; 3]>,
    /// Lead time strictly below, e.g. `[1d, 7d, 30d]`.
    pub lead_time: Option<[ConfigDuration; 3]>,
    /// Change failure rate at most, e.g. `[0.05, 0.10, 0.15]`.
    pub change_failure_rate: Option<[f64; 3]>,
    /// Time to restore strictly below, e.g. `[1h, 1d, 7d]`.
    pub time_to_restore: Option<[ConfigDuration; 3]>,
}

/// The map form, read with the parser's own errors (unknown keys named).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CutoffMap {
    #[serde(default)]
    preset: Option<PresetName>,
    deployment_frequency: Option<[f64; 3]>,
    lead_time: Option<[ConfigDuration; 3]>,
    change_failure_rate: Option<[f64; 3]>,
    time_to_restore: Option<[ConfigDuration; 3]>,
}

/// A preset's name, written as a string or a bare year.
struct PresetName(ProfileName);

struct PresetVisitor;

impl serde::de::Visitor<'_> for PresetVisitor {
    type Value = ProfileName;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a preset: 2019, 2021, 2023 or 2024")
    }

    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<ProfileName, E> {
        ProfileName::parse(v).ok_or_else(|| {
            E::custom(format!(
                "unknown preset `{v}`: expected 2019, 2021, 2023 or 2024"
            ))
        })
    }

    fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<ProfileName, E> {
        self.visit_str(&v.to_string())
    }

    fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<ProfileName, E> {
        self.visit_str(&v.to_string())
    }
}

impl<'de> Deserialize<'de> for PresetName {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(PresetVisitor).map(PresetName)
    }
}

impl<'de> Deserialize<'de> for CutoffOverrides {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Either;
        impl<'de> serde::de::Visitor<'de> for Either {
            type Value = CutoffOverrides;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a preset (2019, 2021, 2023, 2024) or a map of cut-offs")
            }

            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<CutoffOverrides, E> {
                Ok(CutoffOverrides {
                    preset: Some(PresetVisitor.visit_str(v)?),
                    ..CutoffOverrides::default()
                })
            }

            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<CutoffOverrides, E> {
                self.visit_str(&v.to_string())
            }

            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<CutoffOverrides, E> {
                self.visit_str(&v.to_string())
            }

            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                map: A,
            ) -> Result<CutoffOverrides, A::Error> {
                let m = CutoffMap::deserialize(serde::de::value::MapAccessDeserializer::new(map))?;
                Ok(CutoffOverrides {
                    preset: m.preset.map(|p| p.0),
                    deployment_frequency: m.deployment_frequency,
                    lead_time: m.lead_time,
                    change_failure_rate: m.change_failure_rate,
                    time_to_restore: m.time_to_restore,
                })
            }
        }
        d.deserialize_any(Either)
    }
}

impl CutoffOverrides {
    /// Checks that every list is ordered from elite to medium.
    pub fn validate(&self, path: &str, errors: &mut Vec<String>) {
        if let Some([e, h, m]) = self.deployment_frequency
            && !(e >= h && h >= m && m >= 0.0)
        {
            errors.push(format!(
                "{path}.deployment_frequency: must not increase from elite to medium and be >= 0, got [{e}, {h}, {m}]"
            ));
        }
        if let Some([e, h, m]) = self.change_failure_rate
            && !(0.0 <= e && e <= h && h <= m && m <= 1.0)
        {
            errors.push(format!(
                "{path}.change_failure_rate: must not decrease from elite to medium and lie in 0..1, got [{e}, {h}, {m}]"
            ));
        }
        for (name, list) in [
            ("lead_time", &self.lead_time),
            ("time_to_restore", &self.time_to_restore),
        ] {
            if let Some([e, h, m]) = list
                && !(e.get() <= h.get() && h.get() <= m.get())
            {
                errors.push(format!(
                    "{path}.{name}: must not decrease from elite to medium, got [{e}, {h}, {m}]"
                ));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_2023_profile_at_its_boundaries() {
        let c = Cutoffs::of(ProfileName::Dora2023);
        assert_eq!(c.deployment_frequency(1.0), Level::Elite);
        assert_eq!(c.deployment_frequency(0.99), Level::High);
        assert_eq!(c.deployment_frequency(1.0 / 7.0), Level::High);
        assert_eq!(c.deployment_frequency(0.1), Level::Medium);
        assert_eq!(c.deployment_frequency(0.03), Level::Low);
        assert_eq!(c.lead_time(DAY - 1.0), Level::Elite);
        assert_eq!(c.lead_time(DAY), Level::High);
        assert_eq!(c.lead_time(30.0 * DAY), Level::Low);
        assert_eq!(c.change_failure_rate(0.05), Level::Elite);
        assert_eq!(c.change_failure_rate(0.051), Level::High);
        assert_eq!(c.change_failure_rate(0.15), Level::Medium);
        assert_eq!(c.change_failure_rate(0.16), Level::Low);
        assert_eq!(c.time_to_restore(HOUR - 1.0), Level::Elite);
        assert_eq!(c.time_to_restore(HOUR), Level::High);
        assert_eq!(c.time_to_restore(7.0 * DAY), Level::Low);
    }

    #[test]
    fn older_profiles_resolve_overlaps_to_the_better_level() {
        let c = Cutoffs::of(ProfileName::Dora2019);
        assert_eq!(c.change_failure_rate(0.10), Level::Elite);
        assert_eq!(c.change_failure_rate(0.20), Level::Low);
        let c = Cutoffs::of(ProfileName::Dora2021);
        assert_eq!(c.lead_time(2.0 * HOUR), Level::High);
        assert_eq!(c.change_failure_rate(0.20), Level::High);
    }

    /// Each preset at the edges of every cut-off: the value on the edge
    /// and the one just past it.
    #[test]
    fn every_preset_at_its_edges() {
        let eps = 1e-9;
        for preset in ProfileName::ALL {
            let c = Cutoffs::of(preset);
            let name = preset.as_str();
            for (i, level) in [Level::Elite, Level::High, Level::Medium]
                .into_iter()
                .enumerate()
            {
                // A later cut-off looser than an earlier one (2024's change
                // failure rate) hands its edge to the earlier level: checked
                // by the table below, not here.
                let shadowed = |cut: &[f64; 3], better: fn(f64, f64) -> bool| {
                    (0..i).any(|j| better(cut[j], cut[i]) || cut[j] == cut[i])
                };
                let df = c.deployment_frequency;
                if !shadowed(&df, |a, b| a < b) {
                    assert_eq!(c.deployment_frequency(df[i]), level, "{name} df");
                    assert!(c.deployment_frequency(df[i] - eps) > level, "{name} df");
                }
                let lt = c.lead_time;
                if !shadowed(&lt, |a, b| a > b) {
                    assert_eq!(c.lead_time(lt[i] - eps), level, "{name} lt");
                    assert!(c.lead_time(lt[i]) > level, "{name} lt");
                }
                let cfr = c.change_failure_rate;
                if !shadowed(&cfr, |a, b| a > b) {
                    assert_eq!(c.change_failure_rate(cfr[i]), level, "{name} cfr");
                    assert!(c.change_failure_rate(cfr[i] + eps) > level, "{name} cfr");
                }
                let ttr = c.time_to_restore;
                if !shadowed(&ttr, |a, b| a > b) {
                    assert_eq!(c.time_to_restore(ttr[i] - eps), level, "{name} ttr");
                    assert!(c.time_to_restore(ttr[i]) > level, "{name} ttr");
                }
            }
        }
    }

    #[test]
    fn deployment_frequency_answers_from_the_days_with_deployments() {
        const D: i64 = 86_400_000_000_000;
        const H: i64 = D / 24;
        let month = 30 * D;
        let answer = |ago: &[i64], length: i64| FrequencyAnswer::of(ago.iter().copied(), length);
        // 30 days: 4 weeks of 7 (days 0..28) and a remainder.
        // Weeks 0-3 with deployments on 3 days each, one a day: daily.
        let daily: Vec<i64> = (0..4)
            .flat_map(|w| [0, 2, 4].map(|d| (w * 7 + d) * D + H))
            .collect();
        assert_eq!(answer(&daily, month), FrequencyAnswer::Daily);
        // The same with two a day: on demand.
        let twice: Vec<i64> = daily.iter().flat_map(|&t| [t, t + H]).collect();
        assert_eq!(answer(&twice, month), FrequencyAnswer::OnDemand);
        // Only 3 of the 4 weeks on 3 days (the 4th on one): the median week
        // (nearest rank, the 2nd of 4) has 3: still daily.
        let mut three_weeks: Vec<i64> = daily.iter().copied().filter(|&t| t < 21 * D).collect();
        three_weeks.push(22 * D);
        assert_eq!(answer(&three_weeks, month), FrequencyAnswer::Daily);
        // Two weeks on 3 days, two on one: the median week has 1: weekly.
        let mut two_weeks: Vec<i64> = daily.iter().copied().filter(|&t| t < 14 * D).collect();
        two_weeks.extend([15 * D, 22 * D]);
        assert_eq!(answer(&two_weeks, month), FrequencyAnswer::Weekly);
        // One deployment a week in 2 of 4 weeks: the median week has 0; the
        // month has 2: monthly.
        assert_eq!(answer(&[D, 8 * D], month), FrequencyAnswer::Monthly);
        // 90 days (3 months): deployments in one month only: less.
        assert_eq!(answer(&[D, 2 * D], 90 * D), FrequencyAnswer::Less);
        // ... in two of three: monthly.
        assert_eq!(answer(&[D, 31 * D], 90 * D), FrequencyAnswer::Monthly);
        // A 7-day window: one week, one month.
        assert_eq!(answer(&[0, D, 2 * D], 7 * D), FrequencyAnswer::Daily);
        assert_eq!(answer(&[3 * D], 7 * D), FrequencyAnswer::Weekly);
        assert_eq!(answer(&[], 7 * D), FrequencyAnswer::Less);
    }

    #[test]
    fn the_2024_table() {
        let c = Cutoffs::of(ProfileName::Dora2024);
        // Change failure rate: 5% elite; up to 20% high (the medium
        // cluster's 10% is better than high's, so medium is never given).
        assert_eq!(c.change_failure_rate(0.05), Level::Elite);
        assert_eq!(c.change_failure_rate(0.08), Level::High);
        assert_eq!(c.change_failure_rate(0.20), Level::High);
        assert_eq!(c.change_failure_rate(0.21), Level::Low);
        // Recovery: < 1 hour elite, < 1 day high, then low.
        assert_eq!(c.time_to_restore(HOUR - 1.0), Level::Elite);
        assert_eq!(c.time_to_restore(DAY - 1.0), Level::High);
        assert_eq!(c.time_to_restore(DAY), Level::Low);
        assert_eq!(c.deployment_frequency(1.0 / 7.0), Level::High);
        assert_eq!(c.deployment_frequency(1.0 / 30.0), Level::Medium);
        assert_eq!(c.lead_time(7.0 * DAY), Level::Medium);
    }

    #[test]
    fn levels_take_a_preset_name_or_a_map_with_one() {
        let parse = |levels: &str| {
            crate::config::Config::from_yaml_with_env(
                &format!(
                    "receivers:\n  otlp: {{ grpc: {{}} }}\nprocessors:\n  dora: {{ levels: {levels} }}\nexporters:\n  prometheus: {{}}\npipelines:\n  main: {{ receivers: [otlp], processors: [dora], exporters: [prometheus] }}\n"
                ),
                |_| None,
            )
        };
        for text in ["2024", "\"2024\""] {
            let config = parse(text).unwrap();
            let dora = config.processors.dora.unwrap();
            assert_eq!(dora.levels.preset, Some(ProfileName::Dora2024), "{text}");
        }
        let config = parse("{ preset: 2021, lead_time: [1h, 1d, 7d] }").unwrap();
        let levels = config.processors.dora.unwrap().levels;
        assert_eq!(levels.preset, Some(ProfileName::Dora2021));
        let c = Cutoffs::of(levels.preset.unwrap()).with(&levels);
        assert_eq!(c.lead_time(2.0 * HOUR), Level::High);
        assert_eq!(c.change_failure_rate(0.30), Level::High);
        let e = parse("2025").unwrap_err().to_string();
        assert!(e.contains("unknown preset `2025`"), "{e}");
        let e = parse("{ lead_tme: [1h, 1d, 7d] }").unwrap_err().to_string();
        assert!(e.contains("lead_tme"), "{e}");
        let e = parse("2024, profile: 2021").unwrap_err().to_string();
        assert!(e.contains("disagree"), "{e}");
    }

    #[test]
    fn overrides_replace_cutoffs_and_are_validated() {
        let overrides = CutoffOverrides {
            change_failure_rate: Some([0.01, 0.02, 0.03]),
            ..Default::default()
        };
        let c = Cutoffs::of(ProfileName::Dora2023).with(&overrides);
        assert_eq!(c.change_failure_rate(0.025), Level::Medium);
        let bad = CutoffOverrides {
            change_failure_rate: Some([0.2, 0.1, 0.3]),
            ..Default::default()
        };
        let mut errors = Vec::new();
        bad.validate("processors.dora.levels", &mut errors);
        assert_eq!(errors.len(), 1);
        assert!(errors[0].starts_with("processors.dora.levels.change_failure_rate"));
    }
}
