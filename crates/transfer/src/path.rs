//! Validation of entry paths received from the network.

/// Checks that `path` is a safe relative path: `/`-separated normal components, no empty, `.` or
/// `..` components, no leading `/`, no NUL. The empty string (the root entry) is accepted.
/// Returns the number of components (the depth).
pub(crate) fn check_relative(path: &str) -> Option<usize> {
    if path.is_empty() {
        return Some(0);
    }
    if path.contains('\0') {
        return None;
    }
    let mut depth = 0;
    for comp in path.split('/') {
        if comp.is_empty() || comp == "." || comp == ".." {
            return None;
        }
        depth += 1;
    }
    Some(depth)
}

/// The parent of a relative path (`""` for a top-level entry); `None` for the root itself.
pub(crate) fn parent(path: &str) -> Option<&str> {
    if path.is_empty() {
        return None;
    }
    Some(path.rsplit_once('/').map_or("", |(p, _)| p))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_escapes() {
        for bad in [
            "/etc/passwd",
            "..",
            "a/../../b",
            "a//b",
            "a/",
            "./a",
            "a/.",
            "a\0b",
        ] {
            assert_eq!(check_relative(bad), None, "{bad:?}");
        }
        assert_eq!(check_relative(""), Some(0));
        assert_eq!(check_relative("a/b/c"), Some(3));
        assert_eq!(check_relative("..a/b..c"), Some(2));
    }

    #[test]
    fn parents() {
        assert_eq!(parent(""), None);
        assert_eq!(parent("a"), Some(""));
        assert_eq!(parent("a/b/c"), Some("a/b"));
    }
}
