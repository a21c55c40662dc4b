//! Certificate validity windows.

use std::time::{Duration, SystemTime};

use time::OffsetDateTime;

use crate::error::{Error, Result};

/// How far in the past `not_before` is set, to tolerate clock skew between host and guest.
pub const CLOCK_SKEW: Duration = Duration::from_secs(60);

/// The margin [`Validity::for_build`] adds to a build timeout.
pub const BUILD_MARGIN: Duration = Duration::from_secs(10 * 60);

/// The build timeout assumed by [`Validity::default`]: 2 h.
pub const DEFAULT_BUILD_TIMEOUT: Duration = Duration::from_secs(2 * 60 * 60);

/// The window in which a certificate is valid.
///
/// Per-build certificates are short-lived: [`Validity::for_build`] gives
/// `now - CLOCK_SKEW .. now + timeout + BUILD_MARGIN`; the default assumes a 2 h build
/// (`now - 1 min .. now + 2 h 10 min`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Validity {
    pub(crate) not_before: OffsetDateTime,
    pub(crate) not_after: OffsetDateTime,
}

impl Validity {
    /// `now - CLOCK_SKEW .. now + lifetime`.
    pub fn from_now(lifetime: Duration) -> Result<Self> {
        if lifetime.is_zero() {
            return Err(Error::InvalidValidity {
                reason: "lifetime is zero",
            });
        }
        let now = OffsetDateTime::now_utc();
        let lifetime = time::Duration::try_from(lifetime).map_err(|_| Error::InvalidValidity {
            reason: "lifetime out of range",
        })?;
        let not_after = now.checked_add(lifetime).ok_or(Error::InvalidValidity {
            reason: "lifetime out of range",
        })?;
        let not_before = now.saturating_sub(time::Duration::seconds(CLOCK_SKEW.as_secs() as i64));
        Self::checked(not_before, not_after)
    }

    /// Valid for a build that may run `timeout`: `now - CLOCK_SKEW .. now + timeout + BUILD_MARGIN`.
    pub fn for_build(timeout: Duration) -> Result<Self> {
        let lifetime = timeout
            .checked_add(BUILD_MARGIN)
            .ok_or(Error::InvalidValidity {
                reason: "timeout out of range",
            })?;
        Self::from_now(lifetime)
    }

    /// An explicit window (for example one entirely in the past, to test expiry handling).
    pub fn between(not_before: SystemTime, not_after: SystemTime) -> Result<Self> {
        Self::checked(not_before.into(), not_after.into())
    }

    fn checked(not_before: OffsetDateTime, not_after: OffsetDateTime) -> Result<Self> {
        // X.509 GeneralizedTime/UTCTime cover years 1950..=9999; stay well inside.
        let in_range = |t: OffsetDateTime| (1950..=9999).contains(&t.year());
        if !in_range(not_before) || !in_range(not_after) {
            return Err(Error::InvalidValidity {
                reason: "outside the years 1950..=9999",
            });
        }
        if not_before >= not_after {
            return Err(Error::InvalidValidity {
                reason: "not_before is not before not_after",
            });
        }
        Ok(Self {
            not_before,
            not_after,
        })
    }

    /// Start of the window.
    pub fn not_before(&self) -> SystemTime {
        self.not_before.into()
    }

    /// End of the window.
    pub fn not_after(&self) -> SystemTime {
        self.not_after.into()
    }
}

impl Default for Validity {
    /// `now - 1 min .. now + 2 h 10 min` (a 2 h build plus [`BUILD_MARGIN`]).
    fn default() -> Self {
        let now = OffsetDateTime::now_utc();
        let lifetime = DEFAULT_BUILD_TIMEOUT + BUILD_MARGIN;
        Self {
            not_before: now.saturating_sub(time::Duration::seconds(CLOCK_SKEW.as_secs() as i64)),
            not_after: now.saturating_add(time::Duration::seconds(lifetime.as_secs() as i64)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_is_two_hours_ten_minutes_with_skew() {
        let before = SystemTime::now();
        let v = Validity::default();
        let after = SystemTime::now();
        let nb = v.not_before();
        let na = v.not_after();
        assert!(nb <= before - Duration::from_secs(59));
        assert!(nb >= before - Duration::from_secs(61));
        assert!(na >= after + Duration::from_secs(2 * 3600 + 600 - 1));
        assert!(na <= after + Duration::from_secs(2 * 3600 + 600 + 1));
    }

    #[test]
    fn for_build_adds_margin() {
        let v = Validity::for_build(Duration::from_secs(600)).unwrap();
        let span = v.not_after().duration_since(v.not_before()).unwrap();
        // 10 min build + 10 min margin + 1 min skew.
        assert!((1259..=1261).contains(&span.as_secs()), "{span:?}");
    }

    #[test]
    fn rejects_empty_and_inverted_windows() {
        let err = Validity::from_now(Duration::ZERO).unwrap_err().to_string();
        assert_eq!(err, "invalid validity window: lifetime is zero");
        let now = SystemTime::now();
        let err = Validity::between(now, now).unwrap_err().to_string();
        assert!(err.contains("not_before is not before not_after"), "{err}");
        assert!(Validity::from_now(Duration::MAX).is_err());
    }
}
