//! Guest status written back to the host, and credentials consumed once applied.
//!
//! Two channels, each used when it exists: the MMDS the metadata came from, when it takes guest
//! writes (this project's server: `PUT /guest/status`, `DELETE` of a consumed value; the first
//! refused write turns it off, as on Firecracker, whose MMDS is read-only from the guest), and
//! the vsock port the metadata names (`status-channel`), one JSON line per status to the host,
//! which deletes the consumed values the guest lists but could not delete itself.

use firebuild_guest::config::{Outcome, Report};
use firebuild_guest::vsock::{StatusSender, Target};
use firebuild_mmds::client::{Client, ClientConfig, Error};
use firebuild_mmds::schema::{GuestPhase, GuestStatus, Metadata, Password, StatusChannel};

/// How [`StatusWriter::stored_index`] finds a user's password hash: by name, with a password.
const USER_HASH: (&str, &str, &str) = ("users", "name", "password");

/// Keeps the guest's status current in the metadata service.
pub struct StatusWriter {
    client: Option<Client>,
    /// Reads the stored document (kept when writes are refused), to name consumed values by
    /// their place in it rather than in the merged metadata.
    reader: Option<Client>,
    vsock: Option<StatusSender>,
    vsock_failures: u32,
    status: GuestStatus,
}

impl StatusWriter {
    /// A writer for the MMDS at `url` (`None`: the metadata did not come from an MMDS) and the
    /// vsock channel the metadata names; with neither it writes nothing.
    pub fn new(url: Option<&str>, channel: Option<&StatusChannel>) -> Self {
        let addr = url.and_then(|u| firebuild_guest::source::parse_mmds_url(u).ok());
        let client = addr.map(|addr| Client::new(ClientConfig::with_addr(addr)));
        let reader = addr.map(|addr| Client::new(ClientConfig::with_addr(addr)));
        let vsock = channel.map(|c| StatusSender::new(Target::host(c.vsock_port)));
        if let Some(v) = &vsock {
            tracing::info!("status goes to the host over {}", v.target());
        }
        StatusWriter {
            client,
            reader,
            vsock,
            vsock_failures: 0,
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
        self.status.message = Some(bounded(message));
        self.phase(GuestPhase::Failed).await;
    }

    /// Notes on the metadata (what another cloud's layout held that was not applied), shown in
    /// the status's `message` from the next write on.
    pub fn note(&mut self, notes: &[String]) {
        if !notes.is_empty() {
            self.status.message = Some(bounded(&notes.join("; ")));
        }
    }

    /// Deletes each password hash the `users` step applied, so it is readable in the guest only
    /// until now; records what was consumed in the status. Where the metadata service refuses
    /// the delete (Firecracker), a hash is still listed when a vsock channel carries the status:
    /// the host deletes it.
    pub async fn consume(&mut self, md: &Metadata, report: &Report) {
        let done = |step: &str| {
            report.steps.iter().any(|s| {
                s.name == step && matches!(s.outcome, Outcome::Applied | Outcome::Unchanged)
            })
        };
        if self.client.is_none() && self.vsock.is_none() {
            return;
        }
        if done("users") {
            for (i, user) in md.users.iter().enumerate() {
                if !matches!(user.password, Password::Hash(_)) {
                    continue;
                }
                let found = self.stored_index(USER_HASH, &user.name, i).await;
                let Some(stored) = found else {
                    tracing::warn!(user = %user.name, "the consumed password hash is not in the metadata document's users: not deleted");
                    continue;
                };
                let what = format!("the password hash of {}", user.name);
                self.consume_pointer(format!("/users/{stored}/password"), &what)
                    .await;
            }
        }
        if done("files") {
            for (name, file) in md.files.iter().filter(|(_, f)| f.consume) {
                if !self.stored_one_time(name).await {
                    tracing::warn!(path = %file.path, "the one-time file is not in the metadata document's files: not deleted");
                    continue;
                }
                let what = format!("the one-time file {}", file.path);
                let pointer = format!("/files/{}", name.replace('~', "~0").replace('/', "~1"));
                self.consume_pointer(pointer, &what).await;
            }
        }
    }

    /// Whether the stored document holds file `name` marked `consume` (not one a user-data part
    /// brought, which no pointer names); `true` when the metadata came from no MMDS.
    async fn stored_one_time(&self, name: &str) -> bool {
        let Some(reader) = &self.reader else {
            return true;
        };
        let Ok((files, _)) = reader.get_json("/files").await else {
            return false;
        };
        files.get(name).and_then(|f| f.get("consume")) == Some(&serde_json::Value::Bool(true))
    }

    /// The index in the stored document's `section` (`users`, `files`) of the element whose
    /// `field` is `value` and that has `needs`: the merged metadata's index `merged` differs
    /// when elements also came from user-data parts. `None` when the stored document has no
    /// such element (it came from a user-data part, which no pointer names) or cannot be read;
    /// `merged` when the metadata came from no MMDS.
    async fn stored_index(
        &self,
        (section, field, needs): (&str, &str, &str),
        value: &str,
        merged: usize,
    ) -> Option<usize> {
        let Some(reader) = &self.reader else {
            return Some(merged);
        };
        let (list, _) = reader.get_json(&format!("/{section}")).await.ok()?;
        list.as_array()?.iter().position(|u| {
            u.get(field).and_then(|n| n.as_str()) == Some(value) && u.get(needs).is_some()
        })
    }

    /// Deletes `pointer` (a consumed value) through the MMDS, or lists it for the host to
    /// delete when a vsock channel carries the status; records it in the status.
    async fn consume_pointer(&mut self, pointer: String, what: &str) {
        let refused = match &self.client {
            Some(client) => match client.delete(&pointer).await {
                Ok(()) => {
                    tracing::info!("{what} consumed and deleted from the metadata");
                    self.status.consumed.push(pointer);
                    return;
                }
                Err(e) => Some(e),
            },
            None => None,
        };
        if self.vsock.is_some() {
            tracing::info!("{what} consumed; the host deletes it (status over vsock)");
            self.status.consumed.push(pointer);
        } else if let Some(e) = refused {
            tracing::warn!("could not delete the consumed {what} ({e}); the host must delete it");
        }
    }

    async fn write(&mut self) {
        if let Some(client) = &self.client {
            match client.put_status(&self.status).await {
                Ok(()) => tracing::debug!(phase = ?self.status.phase, "status written back"),
                Err(Error::NotFound { .. } | Error::Status { .. }) => {
                    tracing::info!(
                        vsock = self.vsock.is_some(),
                        "the metadata service takes no guest writes: status not written back there"
                    );
                    self.client = None;
                }
                Err(e) => tracing::warn!("writing the guest status: {e}"),
            }
        }
        if let Some(sender) = &mut self.vsock {
            match sender.send(&self.status).await {
                Ok(()) => tracing::debug!(phase = ?self.status.phase, "status sent over vsock"),
                // Each status is tried again; a host that never listens is warned about once.
                Err(e) if self.vsock_failures == 0 => {
                    self.vsock_failures += 1;
                    tracing::warn!("sending the guest status: {e}");
                }
                Err(e) => {
                    self.vsock_failures += 1;
                    tracing::debug!("sending the guest status: {e}");
                }
            }
        }
    }
}

/// `message` for the status: no control characters, at most 512 of them.
fn bounded(message: &str) -> String {
    message
        .chars()
        .filter(|c| !c.is_control())
        .take(512)
        .collect()
}

fn outcome_word(o: &Outcome) -> &'static str {
    match o {
        Outcome::Applied => "applied",
        Outcome::Unchanged => "unchanged",
        Outcome::Skipped(_) => "skipped",
        Outcome::Failed(_) => "failed",
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;
    use firebuild_guest::config::StepReport;

    #[tokio::test]
    async fn consumed_values_are_deleted_where_the_stored_document_holds_them() {
        // The stored document has two users; the merged metadata a third one first (from a
        // user-data part), so the merged index of `b` (2) is not its stored index (1).
        let hash = "$6$salt$hash";
        let stored = serde_json::json!({
            "users": [{"name": "a"}, {"name": "b", "password": {"hash": hash}}],
            "files": {
                "conf": {"path": "/etc/app.conf", "content": {"base64": "eAo="}},
                "join/token": {"path": "/run/join", "content": {"base64": "eAo="}, "consume": true}
            }
        });
        let server = firebuild_mmds::server::Server::builder()
            .initial_data(stored)
            .guest_writes(true)
            .start()
            .await
            .unwrap();
        let merged: Metadata = serde_json::from_value(serde_json::json!({
            "users": [
                {"name": "x", "password": {"hash": hash}},
                {"name": "a"},
                {"name": "b", "password": {"hash": hash}}
            ],
            "files": {
                "conf": {"path": "/etc/app.conf", "content": {"base64": "eAo="}},
                "join/token": {"path": "/run/join", "content": {"base64": "eAo="}, "consume": true},
                "from-user-data": {"path": "/run/x", "content": {"base64": "eAo="}, "consume": true}
            }
        }))
        .unwrap();
        let url = format!("http://{}", server.local_addr());
        let mut writer = StatusWriter::new(Some(&url), None);
        let applied = |name| StepReport {
            name,
            outcome: Outcome::Applied,
        };
        let report = Report {
            steps: vec![applied("users"), applied("files")],
            new_instance: false,
        };
        writer.consume(&merged, &report).await;
        let users = server.get_at("/users").unwrap().0;
        assert_eq!(
            users,
            serde_json::json!([{"name": "a"}, {"name": "b"}]),
            "only b's hash went"
        );
        // The one-time file went; the other file stays. What came from user-data parts (x's
        // hash, `from-user-data`) is in no stored entry: nothing was deleted for it.
        let files = server.get_at("/files").unwrap().0;
        assert_eq!(
            files.as_object().unwrap().keys().collect::<Vec<_>>(),
            ["conf"]
        );
        assert_eq!(
            writer.status.consumed,
            ["/users/1/password", "/files/join~1token"]
        );
        // Layout notes reach the status, bounded.
        writer.note(&["user-data is #cloud-config:\n unsupported".to_owned()]);
        writer.phase(GuestPhase::Configured).await;
        let written = server.get_at("/guest/status/message").unwrap().0;
        assert_eq!(written, "user-data is #cloud-config: unsupported");
    }
}
