//! Time rules of the write side: when the next attempt of a series is due, and until when a
//! failed recording's files are kept (calendar days in the platform's time zone).
//!
//! Attempts: the first is immediate; attempt `n + 1` is due `delays[0] + … + delays[n-1]` after
//! the series started (commit, or a manual push), never earlier than now, so the schedule is
//! anchored to the commit whatever an attempt took and across restarts. With the default 12
//! delays that is 13 attempts, the last 69 h 51 min after commit (within the promised 75 h).
//!
//! Retention: a recording that fails its last attempt on local date D keeps its files until
//! local midnight at the start of D + `keep_failed_days` + 1: the rest of the failure day and
//! 28 full calendar days (EET/EEST by default, DST included). `keep_failed_for` replaces it by
//! a plain duration, and `day_length` replaces the calendar day (drills and tests).

use std::time::Duration;

use chrono::{Days, TimeZone};

use crate::config::{KeepFailed, PushConfig};

/// The schedule of a push service.
#[derive(Debug, Clone)]
pub struct Schedule {
    delays: Vec<Duration>,
    keep: KeepFailed,
    tz: chrono_tz::Tz,
    day_length: Option<Duration>,
}

impl Schedule {
    /// From the `[push]` settings.
    pub fn new(config: &PushConfig) -> Self {
        Schedule {
            delays: config.retry_delays.clone(),
            keep: config.keep_failed,
            tz: config.retention_timezone,
            day_length: config.day_length,
        }
    }

    /// Attempts in one series.
    pub fn attempts(&self) -> u32 {
        u32::try_from(self.delays.len()).unwrap_or(u32::MAX - 1) + 1
    }

    /// When the attempt after failed attempt `attempt` (1-based) is due, or `None` when that
    /// was the last.
    pub fn next_attempt(&self, series_start: i64, attempt: u32, now: i64) -> Option<i64> {
        let done = usize::try_from(attempt).ok()?;
        if done > self.delays.len() {
            return None;
        }
        let offset: Duration = self.delays.iter().take(done).sum();
        Some((series_start + millis(offset)).max(now))
    }

    /// Until when the files of a recording that failed at `failed_at` are kept.
    pub fn keep_until(&self, failed_at: i64) -> i64 {
        match (self.keep, self.day_length) {
            (KeepFailed::For(d), _) => failed_at + millis(d),
            (KeepFailed::Days(n), Some(day)) => failed_at + millis(day) * i64::from(n),
            (KeepFailed::Days(n), None) => self.local_midnight_after(failed_at, u64::from(n) + 1),
        }
    }

    /// The lifecycle's cut: recordings committed before it are more than `days` calendar days
    /// old at `now` (committed on local date D, deleted from local date D + days + 1 on).
    pub fn lifecycle_cutoff(&self, days: u32, now: i64) -> i64 {
        match self.day_length {
            Some(day) => now - millis(day) * i64::from(days),
            None => self.local_midnight_shift(now, -i64::from(days)),
        }
    }

    /// Local midnight starting `date` in the retention time zone, in ms.
    pub fn local_midnight(&self, date: chrono::NaiveDate) -> Option<i64> {
        let midnight = date.and_hms_opt(0, 0, 0)?;
        self.tz
            .from_local_datetime(&midnight)
            .earliest()
            .map(|t| t.timestamp_millis())
    }

    /// Local midnight `days` calendar days after the date of `at`, in ms.
    fn local_midnight_after(&self, at: i64, days: u64) -> i64 {
        self.local_midnight_shift(at, i64::try_from(days).unwrap_or(i64::MAX))
    }

    /// Local midnight starting the date `days` (may be negative) from the date of `at`, in ms.
    fn local_midnight_shift(&self, at: i64, days: i64) -> i64 {
        let fallback = at.saturating_add(days.saturating_mul(86_400_000));
        let Some(local) = self.tz.timestamp_millis_opt(at).single() else {
            return fallback;
        };
        let date = local.date_naive();
        let shifted = if days >= 0 {
            date.checked_add_days(Days::new(days.unsigned_abs()))
        } else {
            date.checked_sub_days(Days::new(days.unsigned_abs()))
        };
        let Some(date) = shifted else {
            return fallback;
        };
        let Some(midnight) = date.and_hms_opt(0, 0, 0) else {
            return fallback;
        };
        self.tz
            .from_local_datetime(&midnight)
            .earliest()
            .map_or(fallback, |t| t.timestamp_millis())
    }
}

/// A duration in whole milliseconds.
pub fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// Now, in ms since the Unix epoch.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, millis)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::DEFAULT_RETRY_DELAYS;

    fn schedule(keep: KeepFailed, day_length: Option<Duration>) -> Schedule {
        Schedule {
            delays: DEFAULT_RETRY_DELAYS
                .iter()
                .map(|s| Duration::from_secs(*s))
                .collect(),
            keep,
            tz: chrono_tz::Europe::Bucharest,
            day_length,
        }
    }

    #[test]
    fn thirteen_attempts_within_seventy_five_hours() {
        let s = schedule(KeepFailed::Days(28), None);
        assert_eq!(s.attempts(), 13);
        let start = 1_000_000;
        let mut last = start;
        for attempt in 1..=12 {
            let next = s.next_attempt(start, attempt, start).unwrap();
            assert!(next > last, "attempt {attempt}");
            last = next;
        }
        assert!(s.next_attempt(start, 13, start).is_none());
        assert!(last - start <= 75 * 3_600_000);
        assert_eq!(last - start, (69 * 60 + 51) * 60_000);
        // A slow attempt never pulls the next one into the past.
        assert_eq!(
            s.next_attempt(start, 1, start + 10 * 60_000),
            Some(start + 10 * 60_000)
        );
    }

    #[test]
    fn failures_are_kept_28_calendar_days_in_bucharest() {
        let s = schedule(KeepFailed::Days(28), None);
        // 2026-12-01 15:00 EET (UTC+2) → kept until 2026-12-30 00:00 EET = 29 Dec 22:00 UTC.
        let failed = chrono::Utc.with_ymd_and_hms(2026, 12, 1, 13, 0, 0).unwrap();
        let until = chrono::Utc
            .with_ymd_and_hms(2026, 12, 29, 22, 0, 0)
            .unwrap();
        assert_eq!(
            s.keep_until(failed.timestamp_millis()),
            until.timestamp_millis()
        );
        // Across the spring DST change (29 March 2026): midnight EEST is 21:00 UTC.
        let failed = chrono::Utc.with_ymd_and_hms(2026, 3, 10, 12, 0, 0).unwrap();
        let until = chrono::Utc.with_ymd_and_hms(2026, 4, 7, 21, 0, 0).unwrap();
        assert_eq!(
            s.keep_until(failed.timestamp_millis()),
            until.timestamp_millis()
        );
        // 23:30 local on 1 December (21:30 UTC) is still the 1st there.
        let late = chrono::Utc
            .with_ymd_and_hms(2026, 12, 1, 21, 30, 0)
            .unwrap();
        let until = chrono::Utc
            .with_ymd_and_hms(2026, 12, 29, 22, 0, 0)
            .unwrap();
        assert_eq!(
            s.keep_until(late.timestamp_millis()),
            until.timestamp_millis()
        );
    }

    #[test]
    fn drills_replace_days() {
        let s = schedule(KeepFailed::For(Duration::from_secs(10)), None);
        assert_eq!(s.keep_until(1_000), 11_000);
        let s = schedule(KeepFailed::Days(3), Some(Duration::from_secs(2)));
        assert_eq!(s.keep_until(1_000), 7_000);
    }

    #[test]
    fn lifecycle_counts_calendar_days_in_bucharest() {
        let s = schedule(KeepFailed::Days(28), None);
        // Now: 3 December 2026 10:00 EET. With 1 day, the cut is 2 December 00:00 EET
        // (1 December 22:00 UTC): a recording of 1 December (any hour) goes, one of the 2nd stays.
        let now = chrono::Utc.with_ymd_and_hms(2026, 12, 3, 8, 0, 0).unwrap();
        let cut = chrono::Utc.with_ymd_and_hms(2026, 12, 1, 22, 0, 0).unwrap();
        assert_eq!(
            s.lifecycle_cutoff(1, now.timestamp_millis()),
            cut.timestamp_millis()
        );
        // 0 days: everything committed before today (local) goes.
        let today = chrono::Utc.with_ymd_and_hms(2026, 12, 2, 22, 0, 0).unwrap();
        assert_eq!(
            s.lifecycle_cutoff(0, now.timestamp_millis()),
            today.timestamp_millis()
        );
        let s = schedule(KeepFailed::Days(28), Some(Duration::from_secs(2)));
        assert_eq!(s.lifecycle_cutoff(3, 10_000), 4_000);
    }
}
