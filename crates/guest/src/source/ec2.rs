//! EC2's instance metadata layout, read path by path through the MMDS endpoint (as tools built
//! for cloud-init fill Firecracker's MMDS: `{"latest": {"meta-data": {...}, "user-data": "..."}}`).
//!
//! | path | becomes |
//! |---|---|
//! | `latest/meta-data/hostname`, else `local-hostname` | `hostname` |
//! | `latest/meta-data/instance-id` | `instance-id` |
//! | `latest/meta-data/public-keys/` listing, then `public-keys/N/openssh-key` | SSH keys of `root` |
//! | `latest/user-data` | `firstboot` when it is a `#!` script (see [`super::layout`]) |
//!
//! The listing may be EC2's (`0=my-key`, the key at `0/openssh-key`) or the tree's own
//! (`0/` for `{"0": {"openssh-key": "..."}}`, or `0` for a key stored directly as `{"0": "..."}`).
//! Everything else in the tree (network interfaces, placement, IAM) is not read.

use super::SourceError;
use super::layout::{MAX_FIELD, MAX_KEYS, Mapped, Reader};

/// The top-level key of the layout in the MMDS tree.
pub(super) const TOP: &str = "latest";

const HOSTNAME: &str = "/latest/meta-data/hostname";
const LOCAL_HOSTNAME: &str = "/latest/meta-data/local-hostname";
const INSTANCE_ID: &str = "/latest/meta-data/instance-id";
const KEYS: &str = "/latest/meta-data/public-keys";
const USER_DATA: &str = "/latest/user-data";

/// Where a mapped document came from (after the base URL).
pub(super) const ORIGIN: &str = "/latest (EC2 layout)";

/// The EC2 layout mapped onto the schema; `None` when none of its paths exists.
pub(super) async fn read(r: &Reader<'_>) -> Result<Option<Mapped>, SourceError> {
    let mut m = Mapped::default();
    let mut hostname = r.text(HOSTNAME, MAX_FIELD).await?;
    if hostname.as_deref().is_none_or(|h| h.trim().is_empty()) {
        hostname = r.text(LOCAL_HOSTNAME, MAX_FIELD).await?.or(hostname);
    }
    let instance_id = r.text(INSTANCE_ID, MAX_FIELD).await?;
    let keys = read_keys(r, &mut m).await?;
    let user_data = r.user_data(USER_DATA).await?;
    if hostname.is_none() && instance_id.is_none() && !keys && user_data.is_none() {
        return Ok(None);
    }
    m.set_text("hostname", hostname.as_deref());
    m.set_text("instance-id", instance_id.as_deref());
    if let Some(ud) = user_data {
        m.user_data(USER_DATA, ud);
    }
    Ok(Some(m))
}

/// Adds the public keys to `m`; `false` when there is no `public-keys` listing.
async fn read_keys(r: &Reader<'_>, m: &mut Mapped) -> Result<bool, SourceError> {
    let Some(entries) = r.list(KEYS).await? else {
        return Ok(false);
    };
    if entries.len() > MAX_KEYS {
        return Err(r.invalid(
            KEYS,
            format!("{} public keys, more than {MAX_KEYS}", entries.len()),
        ));
    }
    // EC2 numbers its keys; keep their order (10 after 9).
    let mut entries: Vec<_> = entries
        .into_iter()
        .map(|e| {
            let index = e.name.split_once('=').map_or(e.name.as_str(), |(i, _)| i);
            (index.parse::<u64>().ok(), index.to_owned(), e)
        })
        .collect();
    entries.sort_by(|a, b| (a.0, &a.1).cmp(&(b.0, &b.1)));
    for (_, index, entry) in entries {
        if index.is_empty() || index.contains('/') || index == "." || index == ".." {
            m.note(format!(
                "public key entry `{}` skipped: not a key index",
                entry.name
            ));
            continue;
        }
        let path = if entry.is_dir || entry.name.contains('=') {
            format!("{KEYS}/{index}/openssh-key")
        } else {
            format!("{KEYS}/{index}")
        };
        match r.text(&path, MAX_FIELD).await? {
            Some(text) => m.add_keys(&text),
            None => m.note(format!("public key `{index}` has no `{path}`; skipped")),
        }
    }
    Ok(true)
}
