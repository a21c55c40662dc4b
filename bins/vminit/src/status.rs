//! Guest status written back to the metadata service (`/guest/status`), and credentials
//! consumed once applied. Only for metadata read from an MMDS that allows guest writes (this
//! project's server); Firecracker's MMDS is read-only from the guest, so the first refused
//! write turns the writer off and the host learns the status from the console instead.

use firebuild_guest::config::{Outcome, Report};
use firebuild_mmds::client::{Client, ClientConfig, Error};
use firebuild_mmds::schema::{GuestPhase, GuestStatus, Metadata, Password};

/// Keeps the guest's status current in the metadata service.
pub struct StatusWriter {
    client: Option<Client>,
    status: GuestStatus,
}

impl StatusWriter {
    /// A writer for the MMDS at `url`, or one that writes nothing (`None`: the metadata did not
    /// come from an MMDS).
    pub fn new(url: Option<&str>) -> Self {
        let client = url
            .and_then(|u| firebuild_guest::source::parse_mmds_url(u).ok())
            .map(|addr| Client::new(ClientConfig::with_addr(addr)));
        StatusWriter {
            client,
            status: GuestStatus::new(GuestPhase::Booting),
        }
    }

    /// Moves to `phase` and writes the status.
    pub async fn phase(&mut self, phase: GuestPhase) {
        self.status.phase = phase;
        self.write().await;
    }

    /// Records the configuration report and the revision it was applied from.
    pub async fn configured(&mut self, report: &Report, revision: Option<&str>) {
        self.status.revision = revision.map(str::to_owned);
        self.status.steps = report
            .steps
            .iter()
            .map(|s| (s.name.to_owned(), outcome_word(&s.outcome).to_owned()))
            .collect();
        self.phase(GuestPhase::Configured).await;
    }

    /// The workload ended with `code`.
    pub async fn exited(&mut self, code: u8) {
        self.status.workload_exit = Some(i32::from(code));
        self.phase(GuestPhase::Exited).await;
    }

    /// The agent failed.
    pub async fn failed(&mut self, message: &str) {
        self.status.message = Some(
            message
                .chars()
                .filter(|c| !c.is_control())
                .take(512)
                .collect(),
        );
        self.phase(GuestPhase::Failed).await;
    }

    /// Deletes each password hash the `users` step applied, so it is readable in the guest only
    /// until now; records what was consumed in the status.
    pub async fn consume(&mut self, md: &Metadata, report: &Report) {
        let applied = report.steps.iter().any(|s| {
            s.name == "users" && matches!(s.outcome, Outcome::Applied | Outcome::Unchanged)
        });
        let Some(client) = &self.client else { return };
        if !applied {
            return;
        }
        for (i, user) in md.users.iter().enumerate() {
            if !matches!(user.password, Password::Hash(_)) {
                continue;
            }
            let pointer = format!("/users/{i}/password");
            match client.delete(&pointer).await {
                Ok(()) => {
                    tracing::info!(user = %user.name, "password hash consumed and deleted from the metadata");
                    self.status.consumed.push(pointer);
                }
                Err(e) => tracing::warn!(
                    user = %user.name,
                    "could not delete the consumed password hash ({e}); the host must delete it"
                ),
            }
        }
    }

    async fn write(&mut self) {
        let Some(client) = &self.client else { return };
        match client.put_status(&self.status).await {
            Ok(()) => tracing::debug!(phase = ?self.status.phase, "status written back"),
            Err(Error::NotFound { .. } | Error::Status { .. }) => {
                tracing::info!(
                    "the metadata service takes no guest writes: status not written back"
                );
                self.client = None;
            }
            Err(e) => tracing::warn!("writing the guest status: {e}"),
        }
    }
}

fn outcome_word(o: &Outcome) -> &'static str {
    match o {
        Outcome::Applied => "applied",
        Outcome::Unchanged => "unchanged",
        Outcome::Skipped(_) => "skipped",
        Outcome::Failed(_) => "failed",
    }
}
