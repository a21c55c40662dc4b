//! Stopping a build or a run from outside: a [`Cancel`] token the caller keeps, the flows poll.
//!
//! A caller (the CLI on `SIGINT`) calls [`Cancel::cancel`]; the VM's blocking thread sees
//! [`Cancel::is_cancelled`] between short waits and stops the VM; the async steps race
//! [`Cancel::cancelled`]. A build works on a [`Cancel::child`] of the caller's token, so its
//! step timeout stops only that build, and a build that is dropped cancels its child (nothing
//! it started keeps running).

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};

use tokio::sync::Notify;

use crate::error::{Error, Result};

/// A cancellation flag shared by a caller and the flows it started; cheap to clone (clones are
/// the same token). Once cancelled, it stays cancelled.
#[derive(Clone, Default)]
pub struct Cancel {
    inner: Arc<Inner>,
}

#[derive(Default)]
struct Inner {
    cancelled: AtomicBool,
    notify: Notify,
    children: Mutex<Vec<Weak<Inner>>>,
}

impl std::fmt::Debug for Cancel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cancel")
            .field("cancelled", &self.is_cancelled())
            .finish()
    }
}

impl Inner {
    fn cancel(&self) {
        if self.cancelled.swap(true, Ordering::SeqCst) {
            return;
        }
        self.notify.notify_waiters();
        let children =
            std::mem::take(&mut *self.children.lock().unwrap_or_else(PoisonError::into_inner));
        for child in children.iter().filter_map(Weak::upgrade) {
            child.cancel();
        }
    }
}

impl Cancel {
    /// A token not cancelled yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Cancels this token and its children; waiters wake up. Idempotent.
    pub fn cancel(&self) {
        self.inner.cancel();
    }

    /// Whether [`cancel`](Self::cancel) was called on this token or an ancestor.
    pub fn is_cancelled(&self) -> bool {
        self.inner.cancelled.load(Ordering::SeqCst)
    }

    /// Resolves once the token is cancelled (at once if it already is).
    pub async fn cancelled(&self) {
        loop {
            let notified = self.inner.notify.notified();
            tokio::pin!(notified);
            // Registered before the check, so a `cancel` between the two is not missed.
            notified.as_mut().enable();
            if self.is_cancelled() {
                return;
            }
            notified.await;
        }
    }

    /// A token cancelled with this one, that can also be cancelled on its own without
    /// touching this one.
    pub fn child(&self) -> Cancel {
        let child = Cancel::new();
        {
            let mut children = self
                .inner
                .children
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            children.retain(|c| c.strong_count() > 0);
            children.push(Arc::downgrade(&child.inner));
        }
        // Checked after registering: a concurrent `cancel` either saw the child or set the
        // flag read here.
        if self.is_cancelled() {
            child.cancel();
        }
        child
    }

    /// A guard that cancels this token when dropped (a dropped build stops its VM).
    pub(crate) fn drop_guard(&self) -> DropGuard {
        DropGuard(self.clone())
    }

    /// Runs `fut` unless the token is cancelled first: then `fut` is dropped and the result is
    /// [`Error::Cancelled`] (with nothing removed yet; the build fills that in).
    pub(crate) async fn race<T>(&self, fut: impl Future<Output = Result<T>>) -> Result<T> {
        tokio::select! {
            biased;
            () = self.cancelled() => Err(Error::Cancelled { removed: Vec::new() }),
            result = fut => result,
        }
    }
}

/// Cancels its token on drop.
#[derive(Debug)]
pub(crate) struct DropGuard(Cancel);

impl Drop for DropGuard {
    fn drop(&mut self) {
        self.0.cancel();
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_parent_cancels_its_children_not_the_other_way() {
        let parent = Cancel::new();
        let child = parent.child();
        let other = parent.child();
        other.cancel();
        assert!(other.is_cancelled());
        assert!(!parent.is_cancelled() && !child.is_cancelled());
        parent.cancel();
        assert!(child.is_cancelled());
        // A child of a cancelled token starts cancelled.
        assert!(parent.child().is_cancelled());
    }

    #[test]
    fn a_dropped_guard_cancels() {
        let token = Cancel::new();
        drop(token.drop_guard());
        assert!(token.is_cancelled());
    }

    #[tokio::test]
    async fn waiters_wake_up_and_races_stop_their_work() {
        let token = Cancel::new();
        let waiter = tokio::spawn({
            let token = token.child();
            async move { token.cancelled().await }
        });
        let raced = tokio::spawn({
            let token = token.clone();
            async move {
                token
                    .race(async {
                        tokio::time::sleep(Duration::from_secs(3600)).await;
                        Ok(())
                    })
                    .await
            }
        });
        tokio::task::yield_now().await;
        token.cancel();
        tokio::time::timeout(Duration::from_secs(10), waiter)
            .await
            .unwrap()
            .unwrap();
        let raced = tokio::time::timeout(Duration::from_secs(10), raced)
            .await
            .unwrap()
            .unwrap();
        assert!(matches!(raced, Err(Error::Cancelled { .. })), "{raced:?}");
        // Already cancelled: resolves at once.
        token.cancelled().await;
    }
}
