//! The `cpio_source` fuzz harness, shared by the cargo-fuzz target and the stable replay test
//! (`crates/guest/tests/cpio_fuzz_corpus.rs`): any byte string is read as a CPIO config device
//! with small limits, mapped onto the metadata schema and validated. Errors are fine; panics, an
//! exceeded limit, or an entry that breaks the reader's promises are not.

use firebuild_guest::source::cpio::{self, Kind, Limits};
use firebuild_guest::source::{Document, Found, document_from_cpio};

/// The limits the harness reads with (small, so the fuzzer reaches them).
pub const LIMITS: Limits = Limits {
    max_entries: 32,
    max_name: 64,
    max_file_size: 4096,
    max_total: 64 * 1024,
};

/// What the input turned out to be.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Not an archive, or a broken one.
    Refused,
    /// An archive whose files do not map onto the schema.
    Unmapped,
    /// An archive mapped onto valid metadata.
    Valid,
    /// An archive mapped onto a document the schema refuses.
    Invalid,
}

/// Runs one input.
pub fn run(data: &[u8]) -> Verdict {
    let Ok(archive) = cpio::read(data, LIMITS) else {
        return Verdict::Refused;
    };
    assert!(archive.entries.len() < LIMITS.max_entries, "entry limit");
    for e in &archive.entries {
        assert!(e.name.len() < LIMITS.max_name, "name limit");
        assert!(!e.name.contains('\0'), "NUL in a name");
        assert!(
            e.data.len() as u64 <= LIMITS.max_file_size,
            "file size limit"
        );
        assert!(
            e.kind == Kind::File || e.data.is_empty(),
            "data on a non-file"
        );
        assert!(e.mode <= 0o7777, "mode keeps only permission bits");
    }
    let total: usize = archive.entries.iter().map(|e| e.data.len()).sum();
    assert!(total <= data.len(), "more data than input");
    let Ok(json) = document_from_cpio(&archive) else {
        return Verdict::Unmapped;
    };
    let doc = Document {
        json,
        revision: None,
        origin: "fuzz".into(),
    };
    match Found::new("cpio", doc) {
        Ok(_) => Verdict::Valid,
        Err(_) => Verdict::Invalid,
    }
}
