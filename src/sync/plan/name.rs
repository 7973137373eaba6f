//! Conflicted-copy names: `NAME (conflicted copy DEVICE YYYY-MM-DD HHMMSS).EXT`.

use crate::protocol::limits::MAX_NAME_LEN;
use crate::protocol::{AccountName, Name, NameError, NodeKind};

use super::context::ConflictStamp;

/// The conflicted-copy name of `original`, for attempt `attempt` (1 for the first choice;
/// 2, 3, ... once the earlier ones are taken: ` 2` goes before the closing parenthesis).
///
/// Files and symlinks keep their extension (the text after the last '.', unless the name is a
/// dotfile like `.bashrc` or the text is empty); directories have none. A result over 255
/// bytes is cut at the end of NAME, on a character boundary.
pub fn conflicted_name(
    original: &Name,
    kind: NodeKind,
    device: &AccountName,
    stamp: &ConflictStamp,
    attempt: u32,
) -> Result<Name, NameError> {
    let text = original.as_str();
    let number = if attempt > 1 {
        format!(" {attempt}")
    } else {
        String::new()
    };
    let suffix = format!(" (conflicted copy {device} {stamp}{number})");
    let (mut stem, mut ext) = match kind {
        NodeKind::Dir => (text, ""),
        NodeKind::File | NodeKind::Symlink => split_extension(text),
    };
    // ".EXT" keeps its dot; drop the split when the extension alone leaves no room.
    if !ext.is_empty() && suffix.len() + 1 + ext.len() >= MAX_NAME_LEN {
        (stem, ext) = (text, "");
    }
    let ext_len = if ext.is_empty() { 0 } else { ext.len() + 1 };
    let budget = MAX_NAME_LEN - suffix.len() - ext_len;
    let mut out = String::with_capacity(MAX_NAME_LEN);
    out.push_str(truncate_at_char(stem, budget));
    out.push_str(&suffix);
    if !ext.is_empty() {
        out.push('.');
        out.push_str(ext);
    }
    Name::new(out)
}

/// (stem, extension) of a file name; the extension is empty for dotfiles and names without
/// a non-empty text after the last '.'.
fn split_extension(name: &str) -> (&str, &str) {
    match name.rfind('.') {
        Some(i) if i + 1 < name.len() && !name[..i].bytes().all(|b| b == b'.') => {
            (&name[..i], &name[i + 1..])
        }
        _ => (name, ""),
    }
}

/// The longest prefix of `s` of at most `max` bytes that ends on a character boundary.
fn truncate_at_char(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stamp() -> ConflictStamp {
        ConflictStamp::parse("2025-11-24 093005").unwrap()
    }

    fn dev() -> AccountName {
        AccountName::new("laptop").unwrap()
    }

    fn cname(name: &str, kind: NodeKind, attempt: u32) -> String {
        conflicted_name(&Name::new(name).unwrap(), kind, &dev(), &stamp(), attempt)
            .unwrap()
            .as_str()
            .to_string()
    }

    #[test]
    fn extension_is_kept_after_the_marker() {
        assert_eq!(
            cname("report.txt", NodeKind::File, 1),
            "report (conflicted copy laptop 2025-11-24 093005).txt"
        );
        assert_eq!(
            cname("archive.tar.gz", NodeKind::File, 1),
            "archive.tar (conflicted copy laptop 2025-11-24 093005).gz"
        );
        assert_eq!(
            cname("lib.so", NodeKind::Symlink, 1),
            "lib (conflicted copy laptop 2025-11-24 093005).so"
        );
    }

    #[test]
    fn no_extension_means_no_dot() {
        assert_eq!(
            cname("Makefile", NodeKind::File, 1),
            "Makefile (conflicted copy laptop 2025-11-24 093005)"
        );
        assert_eq!(
            cname("trailing.", NodeKind::File, 1),
            "trailing. (conflicted copy laptop 2025-11-24 093005)"
        );
    }

    #[test]
    fn dotfiles_have_no_extension() {
        assert_eq!(
            cname(".bashrc", NodeKind::File, 1),
            ".bashrc (conflicted copy laptop 2025-11-24 093005)"
        );
        assert_eq!(
            cname("..hidden", NodeKind::File, 1),
            "..hidden (conflicted copy laptop 2025-11-24 093005)"
        );
        // A dotfile with an extension of its own keeps it.
        assert_eq!(
            cname(".config.json", NodeKind::File, 1),
            ".config (conflicted copy laptop 2025-11-24 093005).json"
        );
    }

    #[test]
    fn directories_never_split_an_extension() {
        assert_eq!(
            cname("photos.2020", NodeKind::Dir, 1),
            "photos.2020 (conflicted copy laptop 2025-11-24 093005)"
        );
    }

    #[test]
    fn later_attempts_are_numbered_inside_the_parentheses() {
        assert_eq!(
            cname("a.txt", NodeKind::File, 2),
            "a (conflicted copy laptop 2025-11-24 093005 2).txt"
        );
        assert_eq!(
            cname("a", NodeKind::Dir, 3),
            "a (conflicted copy laptop 2025-11-24 093005 3)"
        );
    }

    #[test]
    fn long_names_are_cut_to_the_limit_on_a_char_boundary() {
        let long = format!("{}.txt", "é".repeat(125)); // 250 + 4 bytes
        let out = cname(&long, NodeKind::File, 1);
        assert!(out.len() <= MAX_NAME_LEN, "{}", out.len());
        assert!(out.ends_with(" (conflicted copy laptop 2025-11-24 093005).txt"));
        assert!(out.starts_with("éé"));
        // An extension too long to keep is treated as part of the name.
        let long_ext = format!("a.{}", "x".repeat(250));
        let out = cname(&long_ext, NodeKind::File, 12);
        assert!(out.len() <= MAX_NAME_LEN);
        assert!(out.starts_with("a.xxx"));
        assert!(out.ends_with(" (conflicted copy laptop 2025-11-24 093005 12)"));
    }
}
