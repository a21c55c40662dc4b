//! The step timeout: watches a build's [`Event::StepStarted`] and [`Event::StepFinished`] and
//! cancels the build when a step runs longer than allowed, remembering which step it was.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::cancel::Cancel;
use crate::event::{Event, EventSink};

/// A step as its [`Event::StepStarted`] named it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StepSeen {
    /// 1-based position among all steps of the build.
    pub number: usize,
    /// Steps in the build.
    pub total: usize,
    /// The Dockerfile line of the instruction.
    pub line: u32,
    /// The instruction, shortened.
    pub instruction: String,
}

#[derive(Debug, Default)]
struct State {
    /// Running steps: number → (the step, when it started).
    running: BTreeMap<usize, (StepSeen, Instant)>,
    /// The step that ran out of time.
    expired: Option<StepSeen>,
}

/// Watches the steps of one build; cancels `cancel` when one outlives the limit. Stops
/// watching when dropped.
#[derive(Debug)]
pub struct StepWatchdog {
    limit: Option<Duration>,
    state: Arc<Mutex<State>>,
    changed: Arc<Notify>,
    task: Option<JoinHandle<()>>,
}

impl StepWatchdog {
    /// Starts watching (nothing to watch without a `limit`). Call from within the runtime.
    pub fn start(limit: Option<Duration>, cancel: Cancel) -> Self {
        let state = Arc::new(Mutex::new(State::default()));
        let changed = Arc::new(Notify::new());
        let task = limit.map(|limit| {
            tokio::spawn(watch(
                limit,
                Arc::clone(&state),
                Arc::clone(&changed),
                cancel,
            ))
        });
        Self {
            limit,
            state,
            changed,
            task,
        }
    }

    /// `events`, with the steps' starts and ends noted on their way through.
    pub fn sink(&self, events: EventSink) -> EventSink {
        if self.limit.is_none() {
            return events;
        }
        let state = Arc::clone(&self.state);
        let changed = Arc::clone(&self.changed);
        Arc::new(move |event: Event| {
            let noted = {
                let mut state = state.lock().unwrap_or_else(PoisonError::into_inner);
                match &event {
                    Event::StepStarted {
                        number,
                        total,
                        line,
                        instruction,
                        ..
                    } => {
                        let step = StepSeen {
                            number: *number,
                            total: *total,
                            line: *line,
                            instruction: instruction.clone(),
                        };
                        state.running.insert(*number, (step, Instant::now()));
                        true
                    }
                    Event::StepFinished { number, .. } => state.running.remove(number).is_some(),
                    _ => false,
                }
            };
            if noted {
                changed.notify_one();
            }
            events(event);
        })
    }

    /// The step that ran out of time, and the limit it outlived.
    pub fn expired(&self) -> Option<(StepSeen, Duration)> {
        let state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        Some((state.expired.clone()?, self.limit?))
    }
}

impl Drop for StepWatchdog {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

/// Sleeps until the oldest running step's deadline (or a change); past it, records the step
/// and cancels.
async fn watch(limit: Duration, state: Arc<Mutex<State>>, changed: Arc<Notify>, cancel: Cancel) {
    loop {
        let next = {
            let state = state.lock().unwrap_or_else(PoisonError::into_inner);
            state
                .running
                .iter()
                .map(|(number, (_, started))| (*started + limit, *number))
                .min()
        };
        let Some((deadline, number)) = next else {
            changed.notified().await;
            continue;
        };
        tokio::select! {
            () = changed.notified() => continue,
            () = tokio::time::sleep_until(deadline) => {}
        }
        let timed_out = {
            let mut state = state.lock().unwrap_or_else(PoisonError::into_inner);
            let step = state.running.remove(&number).map(|(step, _)| step);
            if let Some(step) = &step {
                state.expired = Some(step.clone());
            }
            step.is_some()
        };
        if timed_out {
            tracing::info!(step = number, ?limit, "step timeout: stopping the build");
            cancel.cancel();
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    fn started(number: usize) -> Event {
        Event::StepStarted {
            number,
            total: 3,
            stage: String::new(),
            line: 4,
            instruction: "RUN sleep 600".to_owned(),
        }
    }

    fn finished(number: usize) -> Event {
        Event::StepFinished {
            number,
            exit_code: 0,
            elapsed: Duration::ZERO,
        }
    }

    #[tokio::test]
    async fn a_step_past_the_limit_cancels_and_is_named() {
        let limit = Duration::from_millis(200);
        let cancel = Cancel::new();
        let dog = StepWatchdog::start(Some(limit), cancel.clone());
        let seen = Arc::new(Mutex::new(0));
        let count = Arc::clone(&seen);
        let sink = dog.sink(Arc::new(move |_| *count.lock().unwrap() += 1));
        // A finished step never times out.
        sink(started(1));
        sink(finished(1));
        tokio::time::sleep(limit * 3).await;
        assert!(!cancel.is_cancelled());
        // One still running does.
        sink(started(2));
        tokio::time::timeout(Duration::from_secs(30), cancel.cancelled())
            .await
            .unwrap();
        let (step, outlived) = dog.expired().unwrap();
        assert_eq!((step.number, step.total, step.line), (2, 3, 4));
        assert_eq!(
            (step.instruction.as_str(), outlived),
            ("RUN sleep 600", limit)
        );
        // Every event still reached the caller's sink.
        assert_eq!(*seen.lock().unwrap(), 3);
    }

    #[tokio::test]
    async fn without_a_limit_nothing_is_watched() {
        let cancel = Cancel::new();
        let dog = StepWatchdog::start(None, cancel.clone());
        let sink = dog.sink(crate::event::ignore());
        sink(started(1));
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(!cancel.is_cancelled() && dog.expired().is_none());
    }
}
