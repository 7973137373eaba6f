//! The kernel's mount table and the registry that maps a mountpoint to its state directory.

use std::ffi::OsString;
use std::fs;
use std::io;
use std::os::unix::ffi::OsStringExt;
use std::path::{Path, PathBuf};

use crate::drive::StateDir;

/// One line of /proc/self/mountinfo that matters to us.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MountEntry {
    /// Where it is mounted.
    pub mountpoint: PathBuf,
    /// Filesystem type, e.g. `fuse.deltadrive`.
    pub fstype: String,
    /// Mount source (our fsname: `deltadrive`).
    pub source: String,
}

/// Undoes mountinfo's octal escapes (`\040` for a space and so on). The kernel escapes only
/// space, tab, newline and backslash; every other byte of a path, UTF-8 or not, is there as is.
fn unescape(field: &[u8]) -> PathBuf {
    let mut out = Vec::with_capacity(field.len());
    let mut i = 0;
    while i < field.len() {
        if let (b'\\', Some(&[a, b, c])) = (field[i], field.get(i + 1..i + 4))
            && [a, b, c].iter().all(|d| (b'0'..=b'7').contains(d))
            && a <= b'3'
        {
            out.push((a - b'0') << 6 | (b - b'0') << 3 | (c - b'0'));
            i += 4;
            continue;
        }
        out.push(field[i]);
        i += 1;
    }
    PathBuf::from(OsString::from_vec(out))
}

/// Parses mountinfo bytes; malformed lines are skipped. Paths are bytes, not text: a mount
/// anywhere on the machine may have a name that is not UTF-8.
pub fn parse_mountinfo(table: &[u8]) -> Vec<MountEntry> {
    table
        .split(|&b| b == b'\n')
        .filter_map(|line| {
            let fields: Vec<&[u8]> = line.split(|&b| b == b' ').collect();
            let sep = fields.iter().position(|&f| f == b"-")?;
            Some(MountEntry {
                mountpoint: unescape(fields.get(4)?),
                fstype: String::from_utf8_lossy(fields.get(sep + 1)?).into_owned(),
                source: unescape(fields.get(sep + 2)?)
                    .to_string_lossy()
                    .into_owned(),
            })
        })
        .collect()
}

/// The current mount table.
pub fn mount_table() -> io::Result<Vec<MountEntry>> {
    Ok(parse_mountinfo(&fs::read("/proc/self/mountinfo")?))
}

/// The mount at exactly `mountpoint`, if any (the last one wins, as stacked mounts do).
pub fn mounted_at(mountpoint: &Path) -> io::Result<Option<MountEntry>> {
    Ok(mount_table()?
        .into_iter()
        .rev()
        .find(|m| m.mountpoint == mountpoint))
}

/// Whether a mount entry is one of ours.
pub fn is_deltadrive(entry: &MountEntry) -> bool {
    // Mounting via mount(2) may drop the subtype; the fsname is always ours.
    entry.fstype.starts_with("fuse") && entry.source == "deltadrive"
}

fn registry_dir() -> PathBuf {
    StateDir::data_home().join("active")
}

fn registry_file(mountpoint: &Path) -> PathBuf {
    let hash = blake3::hash(mountpoint.as_os_str().as_encoded_bytes()).to_hex();
    registry_dir().join(&hash[..16])
}

/// Notes that `mountpoint` is served from `state`.
pub fn register(mountpoint: &Path, state: &Path) -> io::Result<()> {
    crate::private::create_dir_all(&registry_dir())?;
    crate::private::write(
        &registry_file(mountpoint),
        state.as_os_str().as_encoded_bytes(),
    )
}

/// Forgets `mountpoint`.
pub fn unregister(mountpoint: &Path) {
    let _ = fs::remove_file(registry_file(mountpoint));
}

/// The state directory registered for `mountpoint`.
pub fn registered_state(mountpoint: &Path) -> Option<PathBuf> {
    let bytes = fs::read(registry_file(mountpoint)).ok()?;
    Some(PathBuf::from(OsString::from_vec(bytes)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_mountinfo_with_escapes() {
        let text = "36 35 98:0 / /mnt/my\\040drive rw,nosuid - fuse.deltadrive deltadrive rw,user_id=0\n\
                    22 1 8:1 / / rw - ext4 /dev/sda1 rw\n37 35 0:41 / /x rw - fuse deltadrive rw\nnonsense\n";
        let m = parse_mountinfo(text.as_bytes());
        assert_eq!(m.len(), 3);
        assert!(is_deltadrive(&m[2]));
        assert_eq!(m[0].mountpoint, PathBuf::from("/mnt/my drive"));
        assert!(is_deltadrive(&m[0]));
        assert!(!is_deltadrive(&m[1]));
    }

    #[test]
    fn parses_mount_paths_that_are_not_utf8() {
        use std::os::unix::ffi::OsStrExt;
        // A raw 0xff byte (as the kernel writes it) beside an escaped one and a space.
        let mut table = b"40 35 0:50 / /tmp/raw\xff\xfename rw - tmpfs none rw\n".to_vec();
        table.extend_from_slice(
            b"41 35 0:51 / /tmp/esc\\377\\040x rw - fuse.deltadrive deltadrive rw\n",
        );
        table.extend_from_slice(b"42 35 0:52 / /tmp/\\\xc3 rw - ext4 /dev/\xff rw\n");
        let m = parse_mountinfo(&table);
        assert_eq!(m.len(), 3);
        assert_eq!(
            m[0].mountpoint.as_os_str().as_bytes(),
            b"/tmp/raw\xff\xfename"
        );
        assert_eq!(m[0].fstype, "tmpfs");
        assert_eq!(m[1].mountpoint.as_os_str().as_bytes(), b"/tmp/esc\xff x");
        assert!(is_deltadrive(&m[1]));
        // A backslash not followed by three octal digits stays a backslash.
        assert_eq!(m[2].mountpoint.as_os_str().as_bytes(), b"/tmp/\\\xc3");
        assert_eq!(m[2].source, "/dev/\u{fffd}");
    }
}
