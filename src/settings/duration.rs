//! Durations in config files: a whole number with a unit (`500ms`, `10s`, `5m`, `24h`, `30d`).

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A duration written the way the config file writes it.
///
/// Kept as the original text as well as the value, so that labels such as
/// `window="5m"` read the way the user wrote them.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct ConfigDuration {
    value: Duration,
    text: String,
}

/// Why a duration string was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DurationError {
    #[error(
        "`{0}` is not a duration: expected a whole number and a unit (ms, s, m, h, d), e.g. `10s`"
    )]
    /// Not a number followed by a known unit.
    Malformed(String),
    /// More milliseconds than 64 bits hold.
    #[error("`{0}` is too large")]
    Overflow(String),
}

impl ConfigDuration {
    /// The duration's value.
    pub fn get(&self) -> Duration {
        self.value
    }

    /// The duration as written in the config, e.g. `5m`.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// A whole number of seconds (written with the largest unit that fits).
    pub fn from_secs(secs: u64) -> Self {
        let text = if secs.is_multiple_of(86_400) && secs > 0 {
            format!("{}d", secs / 86_400)
        } else if secs.is_multiple_of(3_600) && secs > 0 {
            format!("{}h", secs / 3_600)
        } else if secs.is_multiple_of(60) && secs > 0 {
            format!("{}m", secs / 60)
        } else {
            format!("{secs}s")
        };
        ConfigDuration {
            value: Duration::from_secs(secs),
            text,
        }
    }

    /// A whole number of milliseconds (`500ms`; whole seconds as [`Self::from_secs`]).
    pub fn from_millis(millis: u64) -> Self {
        if millis.is_multiple_of(1_000) {
            return Self::from_secs(millis / 1_000);
        }
        ConfigDuration {
            value: Duration::from_millis(millis),
            text: format!("{millis}ms"),
        }
    }
}

impl FromStr for ConfigDuration {
    type Err = DurationError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let text = s.trim();
        let digits_end = text
            .find(|c: char| !c.is_ascii_digit())
            .ok_or_else(|| DurationError::Malformed(s.to_string()))?;
        let (number, unit) = text.split_at(digits_end);
        let number: u64 = number
            .parse()
            .map_err(|_| DurationError::Malformed(s.to_string()))?;
        let millis_per_unit: u64 = match unit {
            "ms" => 1,
            "s" => 1_000,
            "m" => 60_000,
            "h" => 3_600_000,
            "d" => 86_400_000,
            _ => return Err(DurationError::Malformed(s.to_string())),
        };
        let millis = number
            .checked_mul(millis_per_unit)
            .ok_or_else(|| DurationError::Overflow(s.to_string()))?;
        Ok(ConfigDuration {
            value: Duration::from_millis(millis),
            text: text.to_string(),
        })
    }
}

impl fmt::Display for ConfigDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl fmt::Debug for ConfigDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl<'de> Deserialize<'de> for ConfigDuration {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = ConfigDuration;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a duration string with a unit, e.g. \"10s\", \"5m\", \"24h\", \"30d\"")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<ConfigDuration, E> {
                v.parse().map_err(E::custom)
            }
        }
        deserializer.deserialize_str(Visitor)
    }
}

impl Serialize for ConfigDuration {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_unit() {
        let cases = [
            ("250ms", 250),
            ("10s", 10_000),
            ("5m", 300_000),
            ("24h", 86_400_000),
            ("30d", 2_592_000_000),
        ];
        for (text, millis) in cases {
            let d: ConfigDuration = text.parse().unwrap();
            assert_eq!(d.get(), Duration::from_millis(millis), "{text}");
            assert_eq!(d.as_str(), text);
        }
    }

    #[test]
    fn refuses_missing_or_unknown_units() {
        for bad in ["10", "s", "", "5 minutes", "1.5h", "-3s", "10y"] {
            assert!(bad.parse::<ConfigDuration>().is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn refuses_overflow() {
        assert_eq!(
            "99999999999999999d".parse::<ConfigDuration>(),
            Err(DurationError::Overflow("99999999999999999d".into()))
        );
    }

    #[test]
    fn defaults_render_in_the_largest_whole_unit() {
        assert_eq!(ConfigDuration::from_secs(300).as_str(), "5m");
        assert_eq!(ConfigDuration::from_secs(10).as_str(), "10s");
        assert_eq!(ConfigDuration::from_secs(7 * 86_400).as_str(), "7d");
    }
}
