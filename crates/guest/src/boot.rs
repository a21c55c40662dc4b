//! The guest's boot clock: when PID 1 started and how long the guest has been up, on
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

/// When PID 1 started, since the kernel started: the kernel's hand-over to the initramfs (an
/// `exec`, as the initramfs's switch to the real init, keeps a process's start time). Read from
/// `/proc/1/stat`, in clock ticks (10 ms at the usual 100 Hz).
pub fn init_started() -> Option<Duration> {
    let stat = std::fs::read_to_string("/proc/1/stat").ok()?;
    start_time(&stat, rustix::param::clock_ticks_per_second())
}

/// Field 22 (`starttime`) of a `/proc/PID/stat` line, as a duration. The command name (field 2)
/// is in parentheses and may hold spaces and parentheses itself: fields are counted after its
/// last `)`.
fn start_time(stat: &str, ticks_per_second: u64) -> Option<Duration> {
    let after_name = stat.get(stat.rfind(')')? + 1..)?;
    // Field 3 (state) is the first after the name, so starttime is the 20th.
    let ticks: u64 = after_name.split_whitespace().nth(19)?.parse().ok()?;
    if ticks_per_second == 0 {
        return None;
    }
    Some(Duration::from_secs_f64(
        ticks as f64 / ticks_per_second as f64,
    ))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn start_time_is_field_22_counted_after_the_name() {
        // A name with a space and a parenthesis, as `comm` may hold.
        let stat = "1 (vm init) x) S 0 1 1 0 -1 4194560 1234 0 0 0 1 2 0 0 20 0 1 0 287 \
                    2490368 300 18446744073709551615";
        assert_eq!(start_time(stat, 100), Some(Duration::from_millis(2_870)));
        assert_eq!(start_time("1 (init) S 0", 100), None);
        assert_eq!(start_time(stat, 0), None);
    }

    #[test]
    fn this_process_started_before_now() {
        let own = std::fs::read_to_string("/proc/self/stat").unwrap();
        let started = start_time(&own, rustix::param::clock_ticks_per_second()).unwrap();
        // Tick rounding: a start up to one tick after the clock read is still before it.
        assert!(started <= uptime() + Duration::from_millis(20));
        assert!(init_started().is_some());
    }
}
