//! Instance identity: `/etc/machine-id` and SSH host keys (ed25519, OpenSSH format), and the
//! swap file header (mkswap's, written here so the base image needs no util-linux).

use aws_lc_rs::signature::{Ed25519KeyPair, KeyPair};
use base64::Engine as _;
use zeroize::Zeroizing;

use crate::error::{Error, Result};

fn random(buf: &mut [u8]) -> Result<()> {
    aws_lc_rs::rand::fill(buf).map_err(|_| Error::Config {
        step: "identity",
        reason: "no random bytes available".into(),
    })
}

/// A new machine id: 32 lowercase hex digits and a newline (systemd's format; a v4 UUID's
/// bits).
pub fn new_machine_id() -> Result<String> {
    let mut b = [0u8; 16];
    random(&mut b)?;
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    Ok(format!("{}\n", hex::encode(b)))
}

/// An SSH ed25519 key pair in OpenSSH's formats.
pub struct SshKey {
    /// `-----BEGIN OPENSSH PRIVATE KEY-----` text (unencrypted). Zeroised on drop.
    pub private: Zeroizing<String>,
    /// `ssh-ed25519 AAAA... comment` line.
    pub public: String,
}

impl std::fmt::Debug for SshKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SshKey")
            .field("public", &self.public)
            .finish_non_exhaustive()
    }
}

fn put_string(out: &mut Vec<u8>, s: &[u8]) {
    out.extend_from_slice(&(s.len() as u32).to_be_bytes());
    out.extend_from_slice(s);
}

/// Generates an ed25519 key pair (aws-lc-rs) and encodes it as `ssh-keygen -t ed25519` would.
pub fn new_ssh_ed25519(comment: &str) -> Result<SshKey> {
    let mut seed = Zeroizing::new([0u8; 32]);
    random(&mut seed[..])?;
    let pair = Ed25519KeyPair::from_seed_unchecked(&seed[..]).map_err(|e| Error::Config {
        step: "identity",
        reason: format!("ed25519 key: {e}"),
    })?;
    let public = pair.public_key().as_ref();
    let mut pub_blob = Vec::with_capacity(51);
    put_string(&mut pub_blob, b"ssh-ed25519");
    put_string(&mut pub_blob, public);

    let mut check = [0u8; 4];
    random(&mut check)?;
    let mut private = Zeroizing::new(Vec::with_capacity(160));
    private.extend_from_slice(&check);
    private.extend_from_slice(&check);
    put_string(&mut private, b"ssh-ed25519");
    put_string(&mut private, public);
    let mut secret = Zeroizing::new(Vec::with_capacity(64));
    secret.extend_from_slice(&seed[..]);
    secret.extend_from_slice(public);
    put_string(&mut private, &secret);
    put_string(&mut private, comment.as_bytes());
    let mut pad = 1u8;
    while !private.len().is_multiple_of(8) {
        private.push(pad);
        pad += 1;
    }

    let mut blob = Zeroizing::new(Vec::with_capacity(300));
    blob.extend_from_slice(b"openssh-key-v1\0");
    put_string(&mut blob, b"none");
    put_string(&mut blob, b"none");
    put_string(&mut blob, b"");
    blob.extend_from_slice(&1u32.to_be_bytes());
    put_string(&mut blob, &pub_blob);
    put_string(&mut blob, &private);

    let b64 = Zeroizing::new(base64::engine::general_purpose::STANDARD.encode(&blob[..]));
    let mut pem = Zeroizing::new(String::with_capacity(b64.len() + 80));
    pem.push_str("-----BEGIN OPENSSH PRIVATE KEY-----\n");
    for chunk in b64.as_bytes().chunks(70) {
        pem.push_str(&String::from_utf8_lossy(chunk));
        pem.push('\n');
    }
    pem.push_str("-----END OPENSSH PRIVATE KEY-----\n");
    let public = format!(
        "ssh-ed25519 {} {comment}\n",
        base64::engine::general_purpose::STANDARD.encode(&pub_blob)
    );
    Ok(SshKey {
        private: pem,
        public,
    })
}

/// The first page of a swap area (Linux `swap_header` v1, `SWAPSPACE2`) for a file of `pages`
/// pages of `page_size` bytes, with a random UUID.
pub fn swap_header(page_size: usize, pages: u64) -> Result<Vec<u8>> {
    if pages < 10 || page_size < 4096 {
        return Err(Error::Config {
            step: "swap",
            reason: format!("swap area of {pages} pages is too small (at least 10)"),
        });
    }
    let last_page = u32::try_from(pages - 1).map_err(|_| Error::Config {
        step: "swap",
        reason: "swap area too large".into(),
    })?;
    let mut h = vec![0u8; page_size];
    // After 1024 bytes of boot block: version, last_page, nr_badpages, uuid[16], label[16].
    h[1024..1028].copy_from_slice(&1u32.to_ne_bytes());
    h[1028..1032].copy_from_slice(&last_page.to_ne_bytes());
    h[1032..1036].copy_from_slice(&0u32.to_ne_bytes());
    let mut uuid = [0u8; 16];
    random(&mut uuid)?;
    uuid[6] = (uuid[6] & 0x0f) | 0x40;
    uuid[8] = (uuid[8] & 0x3f) | 0x80;
    h[1036..1052].copy_from_slice(&uuid);
    h[page_size - 10..].copy_from_slice(b"SWAPSPACE2");
    Ok(h)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    #[test]
    fn machine_ids_are_fresh_hex() {
        let a = new_machine_id().unwrap();
        let b = new_machine_id().unwrap();
        assert_ne!(a, b);
        assert_eq!(a.len(), 33);
        assert!(
            a.trim_end()
                .bytes()
                .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
        );
    }

    #[test]
    fn ssh_key_structure() {
        let k = new_ssh_ed25519("root@host").unwrap();
        assert!(
            k.private
                .starts_with("-----BEGIN OPENSSH PRIVATE KEY-----\n")
        );
        assert!(k.private.ends_with("-----END OPENSSH PRIVATE KEY-----\n"));
        assert!(
            k.public
                .starts_with("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAI")
        );
        assert!(k.public.ends_with(" root@host\n"));
        let b64: String = k
            .private
            .lines()
            .filter(|l| !l.starts_with("-----"))
            .collect();
        let blob = base64::engine::general_purpose::STANDARD
            .decode(b64)
            .unwrap();
        assert!(blob.starts_with(b"openssh-key-v1\0"));
        assert!(!format!("{k:?}").contains("PRIVATE"));
    }

    #[test]
    fn swap_header_layout() {
        let h = swap_header(4096, 256).unwrap();
        assert_eq!(&h[4086..], b"SWAPSPACE2");
        assert_eq!(u32::from_ne_bytes(h[1024..1028].try_into().unwrap()), 1);
        assert_eq!(u32::from_ne_bytes(h[1028..1032].try_into().unwrap()), 255);
        assert!(swap_header(4096, 5).is_err());
    }
}
