//! Calendar days in the time zone of `processors.dora.timezone` (an IANA
//! name such as `Europe/Berlin`; UTC by default): what the per-day trend
//! and the deployment-frequency answer count in. A local day runs from one
//! local midnight to the next, so the days around a daylight-saving change
//! are 23 and 25 hours long, as the people deploying live them.

use jiff::Timestamp;
use jiff::tz::{Offset, TimeZone};

use crate::model::delivery::Nanos;

const DAY_NS: Nanos = 86_400_000_000_000;

/// A time zone's calendar.
#[derive(Debug, Clone)]
pub struct Calendar {
    /// `None`: UTC (no lookup at all).
    zone: Option<TimeZone>,
}

impl Calendar {
    /// UTC's.
    pub fn utc() -> Self {
        Calendar { zone: None }
    }

    /// The calendar of the IANA time zone `name` (from the time zone
    /// database built in, so a container without `/usr/share/zoneinfo`
    /// knows it too).
    pub fn named(name: &str) -> Result<Self, String> {
        if name == "UTC" || name == "Etc/UTC" {
            return Ok(Calendar::utc());
        }
        TimeZone::get(name)
            .map(|zone| Calendar { zone: Some(zone) })
            .map_err(|e| format!("`{name}` is not an IANA time zone ({e})"))
    }

    /// The local day instant `t` falls on, as a day number (days since
    /// 1970-01-01, local): two instants on one local calendar day get the
    /// same number, consecutive days consecutive numbers.
    pub fn day(&self, t: Nanos) -> i64 {
        let offset = match &self.zone {
            None => 0,
            Some(zone) => match Timestamp::from_nanosecond(i128::from(t)) {
                Ok(at) => i64::from(zone.to_offset(at).seconds()),
                Err(_) => 0,
            },
        };
        (t.saturating_add(offset * 1_000_000_000)).div_euclid(DAY_NS)
    }

    /// When local day `day` begins: its midnight (or, where a change of
    /// offset skips midnight, the first instant after).
    pub fn start(&self, day: i64) -> Nanos {
        let utc_midnight = day.saturating_mul(DAY_NS);
        let Some(zone) = &self.zone else {
            return utc_midnight;
        };
        let local = Timestamp::from_nanosecond(i128::from(utc_midnight))
            .map(|t| Offset::UTC.to_datetime(t))
            .and_then(|midnight| zone.to_ambiguous_timestamp(midnight).compatible());
        match local {
            Ok(t) => i64::try_from(t.as_nanosecond()).unwrap_or(utc_midnight),
            Err(_) => utc_midnight,
        }
    }
}

impl Calendar {
    /// Local day `day` as `YYYY-MM-DD`.
    pub fn date(&self, day: i64) -> String {
        Timestamp::from_second(day.saturating_mul(86_400))
            .map(|t| Offset::UTC.to_datetime(t).date().to_string())
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 2024-03-31T00:00:00Z: Europe/Berlin goes from +01:00 to +02:00 at
    /// 01:00Z that night.
    const SPRING: Nanos = 1_711_843_200_000_000_000;
    const HOUR: Nanos = 3_600_000_000_000;

    #[test]
    fn berlin_days_are_23_and_25_hours_long_around_the_changes() {
        let berlin = Calendar::named("Europe/Berlin").unwrap();
        let day = berlin.day(SPRING);
        // Local midnight of 31 March is 23:00Z on the 30th (still +01:00).
        assert_eq!(berlin.start(day), SPRING - HOUR);
        // The 1st of April begins at 22:00Z on the 31st (+02:00): 23 hours.
        assert_eq!(berlin.start(day + 1) - berlin.start(day), 23 * HOUR);
        // 27 October 2024, back to +01:00: 25 hours.
        let autumn = SPRING + 210 * 24 * HOUR;
        let d = berlin.day(autumn);
        assert_eq!(berlin.start(d + 1) - berlin.start(d), 25 * HOUR);
        // Every instant of a day maps to it, the one before to the day before.
        assert_eq!(berlin.day(berlin.start(day)), day);
        assert_eq!(berlin.day(berlin.start(day + 1) - 1), day);
        assert_eq!(berlin.day(berlin.start(day) - 1), day - 1);
        assert_eq!(berlin.date(day), "2024-03-31");
        // 23:30Z on the 30th is already the 31st in Berlin.
        assert_eq!(berlin.date(berlin.day(SPRING - HOUR / 2)), "2024-03-31");
        assert_eq!(
            Calendar::utc().date(Calendar::utc().day(SPRING - HOUR / 2)),
            "2024-03-30"
        );
    }

    #[test]
    fn utc_days_are_whole_days_and_bad_names_are_refused() {
        let utc = Calendar::utc();
        assert_eq!(utc.day(SPRING), SPRING / (24 * HOUR));
        assert_eq!(utc.day(SPRING - 1), SPRING / (24 * HOUR) - 1);
        assert_eq!(utc.start(utc.day(SPRING + 5 * HOUR)), SPRING);
        assert_eq!(Calendar::named("UTC").unwrap().day(SPRING), utc.day(SPRING));
        let error = Calendar::named("Europe/Atlantis").unwrap_err();
        assert!(
            error.starts_with("`Europe/Atlantis` is not an IANA time zone"),
            "{error}"
        );
    }
}
