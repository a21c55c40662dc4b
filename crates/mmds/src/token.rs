//! MMDS V2 session tokens: `base64url(expiry ‖ HMAC-SHA256(key, instance ‖ expiry))`.
//!
//! The key and the instance binding are random per server, so a token is only valid against
//! the server (instance) that minted it, cannot be forged without the key, and nothing about
//! issued tokens is stored. Expiry is measured on the monotonic clock from the server's start.

use std::time::{Duration, Instant};

use aws_lc_rs::{hmac, rand};
use base64::Engine as _;

/// Longest token accepted; longer ones are rejected before decoding (as Firecracker does).
pub const MAX_TOKEN_LEN: usize = 70;
/// Smallest token TTL in seconds.
pub const MIN_TTL_SECS: u32 = 1;
/// Largest token TTL in seconds.
pub const MAX_TTL_SECS: u32 = 21600;

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::URL_SAFE_NO_PAD;

pub(crate) struct TokenAuthority {
    key: hmac::Key,
    instance: [u8; 16],
    epoch: Instant,
}

impl std::fmt::Debug for TokenAuthority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenAuthority(<redacted>)")
    }
}

impl TokenAuthority {
    /// A fresh random key and instance binding.
    pub(crate) fn generate() -> Result<TokenAuthority, aws_lc_rs::error::Unspecified> {
        let rng = rand::SystemRandom::new();
        let key = hmac::Key::generate(hmac::HMAC_SHA256, &rng)?;
        let mut instance = [0u8; 16];
        rand::fill(&mut instance)?;
        Ok(TokenAuthority {
            key,
            instance,
            epoch: Instant::now(),
        })
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn tag(&self, expiry: [u8; 8]) -> hmac::Tag {
        let mut ctx = hmac::Context::with_key(&self.key);
        ctx.update(b"firebuild-mmds-token-v1");
        ctx.update(&self.instance);
        ctx.update(&expiry);
        ctx.sign()
    }

    /// Mints a token valid for `ttl`.
    pub(crate) fn mint(&self, ttl: Duration) -> String {
        let expiry = self
            .now_ms()
            .saturating_add(u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX))
            .to_be_bytes();
        let mut raw = Vec::with_capacity(40);
        raw.extend_from_slice(&expiry);
        raw.extend_from_slice(self.tag(expiry).as_ref());
        B64.encode(raw)
    }

    /// Whether a token is authentic and unexpired. Length is checked before decoding.
    pub(crate) fn verify(&self, token: &str) -> bool {
        if token.is_empty() || token.len() > MAX_TOKEN_LEN {
            return false;
        }
        let mut raw = [0u8; 48];
        let Ok(n) = B64.decode_slice(token, &mut raw) else {
            return false;
        };
        if n != 40 {
            return false;
        }
        let mut expiry = [0u8; 8];
        expiry.copy_from_slice(&raw[..8]);
        let mut ctx_msg = Vec::with_capacity(48);
        ctx_msg.extend_from_slice(b"firebuild-mmds-token-v1");
        ctx_msg.extend_from_slice(&self.instance);
        ctx_msg.extend_from_slice(&expiry);
        if hmac::verify(&self.key, &ctx_msg, &raw[8..40]).is_err() {
            return false;
        }
        u64::from_be_bytes(expiry) > self.now_ms()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    #[test]
    fn tokens_verify_only_on_their_server() {
        let a = TokenAuthority::generate().unwrap();
        let b = TokenAuthority::generate().unwrap();
        let t = a.mint(Duration::from_secs(60));
        assert!(t.len() <= MAX_TOKEN_LEN);
        assert!(a.verify(&t));
        assert!(!b.verify(&t), "another instance's token");
        let mut forged = t.clone().into_bytes();
        let last = forged.len() - 2;
        forged[last] = if forged[last] == b'A' { b'B' } else { b'A' };
        assert!(!a.verify(std::str::from_utf8(&forged).unwrap()));
        assert!(!a.verify(&"A".repeat(MAX_TOKEN_LEN + 1)));
        assert!(!a.verify(""));
    }

    #[test]
    fn expired_tokens_fail() {
        let a = TokenAuthority::generate().unwrap();
        let t = a.mint(Duration::ZERO);
        assert!(!a.verify(&t));
    }
}
