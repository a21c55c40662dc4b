//! The guest's boot clock: when the kernel handed over to the first program and how long the
//! `CLOCK_BOOTTIME` (time since the kernel started, suspend included), for the boot report an
//! agent sends its host.

use std::time::Duration;

/// Time since the kernel started (`CLOCK_BOOTTIME`).
pub fn uptime() -> Duration {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::Boottime);
    Duration::new(
        u64::try_from(t.tv_sec).unwrap_or(0),
        u32::try_from(t.tv_nsec).unwrap_or(0),
    )
}

/// The variable in which the initramfs's `/init` (firebuild's, `firebuild_vmm`'s `init.sh`)
/// passes down when it started: `/proc/uptime`'s first field, in seconds.
pub const INIT_UPTIME_ENV: &str = "FIREBUILD_INIT_UPTIME";

/// When the kernel handed over to the first program (the initramfs's `/init`), since the
/// kernel started, as that program passed it down in [`INIT_UPTIME_ENV`]; `None` when it did
/// not (vminit was the first program, or another initramfs ran).
///
/// PID 1's own start time (`/proc/1/stat`) does not tell: the kernel creates PID 1 early and
/// runs its whole initialisation in it before the `exec` of `/init`, so it reads ~0.3 s where
/// the hand-over came ~2-3 s into a TCG boot.
pub fn init_started() -> Option<Duration> {
    parse_uptime(&std::env::var(INIT_UPTIME_ENV).ok()?)
}

/// `/proc/uptime`'s seconds (`2.93`): digits, an optional fraction.
fn parse_uptime(text: &str) -> Option<Duration> {
    let (secs, frac) = text.split_once('.').unwrap_or((text, ""));
    let digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    if secs.is_empty() || secs.len() > 12 || frac.len() > 9 || !digits(secs) || !digits(frac) {
        return None;
    }
    let nanos = format!("{frac:0<9}").parse().ok()?;
    Some(Duration::new(secs.parse().ok()?, nanos))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn uptime_is_parsed_as_proc_uptime_writes_it() {
        assert_eq!(parse_uptime("2.93"), Some(Duration::from_millis(2_930)));
        assert_eq!(parse_uptime("17"), Some(Duration::from_secs(17)));
        assert_eq!(parse_uptime("0.000000001"), Some(Duration::from_nanos(1)));
        assert_eq!(parse_uptime("1."), Some(Duration::from_secs(1)));
        for bad in [
            "",
            ".5",
            "1.2.3",
            "-1",
            "1e3",
            " 1",
            "9999999999999",
            "1.0000000001",
        ] {
            assert_eq!(parse_uptime(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn uptime_moves_forward() {
        let a = uptime();
        assert!(uptime() >= a);
    }
}
