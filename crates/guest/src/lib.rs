//! Guest-side logic of vminit: run build steps, place files, manage users, configure a guest
//! from metadata, find the metadata. No gRPC, no VM needed: every function works on a **guest
//! root directory** the caller gives (`/` in a real guest, a temporary tree in tests), and every
//! guest path is confined to it ([`paths`]).
//!
//! The core types:
//! - [`passwd::UserDb`]: `/etc/passwd`, `/etc/group`, `/etc/shadow` read and written directly;
//!   Docker `USER` resolution ([`passwd::UserDb::resolve`] → [`passwd::Identity`]).
//! - [`step::run`] / [`step::run_step`]: one RUN step with the step's user, env, workdir and
//!   shell; output line by line ([`step::Stream`]); [`step::Exit`] code or signal.
//! - [`place::Placer`]: COPY/ADD semantics for a resource received into a staging path.
//! - [`config::Configurator`]: metadata → hostname, network, users, keys, files, swap,
//!   firstboot..., each step idempotent and journaled ([`config::Journal`]).
//! - [`source`]: the metadata sources (kernel command line, CPIO device, MMDS).
//!
//! ```
//! use firebuild_guest::passwd::{NewUser, UserDb};
//!
//! let guest = tempfile::tempdir()?;
//! std::fs::create_dir(guest.path().join("etc"))?;
//! std::fs::write(guest.path().join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n")?;
//! std::fs::write(guest.path().join("etc/group"), "root:x:0:\nwheel:x:10:\n")?;
//!
//! let mut db = UserDb::load(guest.path())?;
//! let mut app = NewUser::new("app");
//! app.groups = vec!["wheel".into()];
//! app.create_home = false;
//! db.add_user(&app)?;
//! db.save()?;
//!
//! // What `USER app` runs as, resolved the way Docker (runc) does.
//! let id = UserDb::load(guest.path())?.resolve("app")?;
//! assert_eq!((id.uid, id.gid, id.groups.as_slice()), (1000, 1000, &[10][..]));
//! assert_eq!(UserDb::load(guest.path())?.resolve("4242:7")?.home, "/");
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! Running a step and configuring a guest (needs root for the identity switch and `chroot`):
//!
//! ```no_run
//! # async fn demo(md: &firebuild_mmds::schema::Metadata) -> Result<(), firebuild_guest::Error> {
//! use firebuild_guest::config::Configurator;
//! use firebuild_guest::step::{self, RunRequest};
//!
//! let root = std::path::Path::new("/srv/rootfs");
//! let mut req = RunRequest::new(vec!["/bin/sh".into(), "-c".into(), "id".into()]);
//! req.user = Some("app".into());
//! let exit = step::run(root, &req, |stream, line| {
//!     println!("{stream:?}: {}", String::from_utf8_lossy(line));
//! })
//! .await?;
//! assert!(exit.success());
//!
//! let report = Configurator::new(root).apply(Some(md)).await?;
//! for s in report.failures() {
//!     eprintln!("{}: {:?}", s.name, s.outcome);
//! }
//! # Ok(()) }
//! ```

pub mod boot;
pub mod config;
pub mod copy_from;
mod error;
pub mod fork;
pub mod live;
pub mod netlink;
pub mod passwd;
pub mod paths;
pub mod place;
pub mod source;
pub mod step;
pub mod vsock;

pub use error::{Error, Result};
