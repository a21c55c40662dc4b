//! How a guest's boot went, as the guest reports it with `Commands`.

use std::time::Duration;

use crate::convert::ConversionError;
use crate::pb;

/// Points of a guest's boot on its own clock (`CLOCK_BOOTTIME`: time since its kernel started),
/// reported with `Commands` so that the host can tell the kernel's share of a boot from the
/// initramfs's and the agent's. The host's own clock cannot: it only sees the VM start and the
/// first connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GuestBoot {
    /// The kernel handed over to its first program (the initramfs's `/init`, or vminit).
    pub init: Duration,
    /// The agent started (after the initramfs switched to the root).
    pub agent: Duration,
    /// The agent sent `Commands`: metadata read, guest configured, connected.
    pub request: Duration,
}

impl GuestBoot {
    /// From the kernel's start to PID 1.
    pub fn kernel(&self) -> Duration {
        self.init
    }

    /// From PID 1 to the agent: the initramfs (modules, root mount, switch).
    pub fn initramfs(&self) -> Duration {
        self.agent.saturating_sub(self.init)
    }

    /// From the agent's start to its first request.
    pub fn agent_share(&self) -> Duration {
        self.request.saturating_sub(self.agent)
    }
}

impl From<GuestBoot> for pb::GuestBoot {
    fn from(b: GuestBoot) -> Self {
        let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        pb::GuestBoot {
            init_ms: ms(b.init),
            agent_ms: ms(b.agent),
            request_ms: ms(b.request),
        }
    }
}

impl TryFrom<pb::GuestBoot> for GuestBoot {
    type Error = ConversionError;

    /// Refuses points out of order: each is at most the next.
    fn try_from(b: pb::GuestBoot) -> Result<Self, Self::Error> {
        if b.init_ms > b.agent_ms || b.agent_ms > b.request_ms {
            return Err(ConversionError::Invalid {
                field: "GuestBoot",
                reason: format!(
                    "points out of order: init {} ms, agent {} ms, request {} ms",
                    b.init_ms, b.agent_ms, b.request_ms
                ),
            });
        }
        Ok(GuestBoot {
            init: Duration::from_millis(b.init_ms),
            agent: Duration::from_millis(b.agent_ms),
            request: Duration::from_millis(b.request_ms),
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn shares_and_round_trip() {
        let boot = GuestBoot {
            init: Duration::from_millis(2_100),
            agent: Duration::from_millis(2_700),
            request: Duration::from_millis(2_950),
        };
        assert_eq!(boot.kernel(), Duration::from_millis(2_100));
        assert_eq!(boot.initramfs(), Duration::from_millis(600));
        assert_eq!(boot.agent_share(), Duration::from_millis(250));
        assert_eq!(
            GuestBoot::try_from(pb::GuestBoot::from(boot)).unwrap(),
            boot
        );
    }

    #[test]
    fn points_out_of_order_are_refused() {
        let bad = pb::GuestBoot {
            init_ms: 3_000,
            agent_ms: 2_000,
            request_ms: 4_000,
        };
        let err = GuestBoot::try_from(bad).unwrap_err().to_string();
        assert!(
            err.contains("GuestBoot") && err.contains("out of order"),
            "{err}"
        );
    }
}
