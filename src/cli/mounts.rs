//! The kernel's mount table and the registry that maps a mountpoint to its state directory.

use std::fs;
use std::io;
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

/// Undoes mountinfo's octal escapes (`\040` for a space and so on).
fn unescape(field: &str) -> PathBuf {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && i + 3 < bytes.len()
            && let Ok(v) = u8::from_str_radix(&field[i + 1..i + 4], 8)
        {
            out.push(v);
            i += 4;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    PathBuf::from(<std::ffi::OsString as std::os::unix::ffi::OsStringExt>::from_vec(out))
}

/// Parses mountinfo text; malformed lines are skipped.
pub fn parse_mountinfo(text: &str) -> Vec<MountEntry> {
    text.lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split(' ').collect();
            let sep = fields.iter().position(|&f| f == "-")?;
            Some(MountEntry {
                mountpoint: unescape(fields.get(4)?),
                fstype: (*fields.get(sep + 1)?).to_string(),
                source: unescape(fields.get(sep + 2)?)
                    .to_string_lossy()
                    .into_owned(),
            })
        })
        .collect()
}

/// The current mount table.
pub fn mount_table() -> io::Result<Vec<MountEntry>> {
    Ok(parse_mountinfo(&fs::read_to_string(
        "/proc/self/mountinfo",
    )?))
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
    Some(PathBuf::from(
        <std::ffi::OsString as std::os::unix::ffi::OsStringExt>::from_vec(bytes),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_mountinfo_with_escapes() {
        let text = "36 35 98:0 / /mnt/my\\040drive rw,nosuid - fuse.deltadrive deltadrive rw,user_id=0\n\
                    22 1 8:1 / / rw - ext4 /dev/sda1 rw\n37 35 0:41 / /x rw - fuse deltadrive rw\nnonsense\n";
        let m = parse_mountinfo(text);
        assert_eq!(m.len(), 3);
        assert!(is_deltadrive(&m[2]));
        assert_eq!(m[0].mountpoint, PathBuf::from("/mnt/my drive"));
        assert!(is_deltadrive(&m[0]));
        assert!(!is_deltadrive(&m[1]));
    }
}
