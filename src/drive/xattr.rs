//! Extended attributes: namespaces, limits and the create/replace flags, as ext4 applies them.

use super::error::{DriveError, DriveResult};
use super::node::{Kind, Node};

/// Largest value, as ext4 with large xattrs (and the VFS limit XATTR_SIZE_MAX).
pub const VALUE_MAX: usize = 65536;

/// Longest name, as XATTR_NAME_MAX.
pub const NAME_MAX: usize = 255;

/// setxattr's create/replace choice.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum XattrFlags {
    /// Create or replace.
    Any,
    /// Fail with EEXIST if it exists (XATTR_CREATE).
    Create,
    /// Fail with ENODATA if it does not exist (XATTR_REPLACE).
    Replace,
}

impl XattrFlags {
    /// The flags for setxattr(2)'s `flags` argument.
    pub fn from_raw(flags: i32) -> DriveResult<XattrFlags> {
        match flags {
            0 => Ok(XattrFlags::Any),
            libc::XATTR_CREATE => Ok(XattrFlags::Create),
            libc::XATTR_REPLACE => Ok(XattrFlags::Replace),
            _ => Err(DriveError::Invalid("unknown setxattr flags")),
        }
    }
}

/// Whether the drive stores attribute `name` at all; EOPNOTSUPP for every call on the others.
fn supported(name: &[u8]) -> bool {
    // system.* (POSIX ACLs) would promise access control the drive does not enforce. An
    // SELinux label means nothing on a FUSE mount: SELinux labels the whole mount itself
    // (genfs) and never reads it from the file system. Refusing both also spares the round
    // trips `ls -l` makes for them on every file: told "not supported" once, it stops asking
    // about that device, where "no such attribute" has it ask again for each file.
    (name.starts_with(b"user.") || name.starts_with(b"trusted.") || name.starts_with(b"security."))
        && name != b"security.selinux"
}

fn check_name(node: &Node, name: &[u8]) -> DriveResult<()> {
    if name.is_empty() {
        return Err(DriveError::Invalid("empty xattr name"));
    }
    if name.len() > NAME_MAX {
        return Err(DriveError::Range);
    }
    if !supported(name) {
        return Err(DriveError::NotSupported("xattr namespace"));
    }
    // As on ext4: user attributes only on regular files and directories.
    if name.starts_with(b"user.") && node.kind == Kind::Symlink {
        return Err(DriveError::NotPermitted("user xattrs on a symlink"));
    }
    Ok(())
}

/// Sets `name` to `value` on `node`.
pub fn set(node: &mut Node, name: &[u8], value: &[u8], flags: XattrFlags) -> DriveResult<()> {
    check_name(node, name)?;
    if value.len() > VALUE_MAX {
        return Err(DriveError::TooBig);
    }
    let exists = node.xattrs().contains_key(name);
    match (flags, exists) {
        (XattrFlags::Create, true) => return Err(DriveError::Exists),
        (XattrFlags::Replace, false) => return Err(DriveError::NoXattr),
        _ => {}
    }
    node.xattrs_mut().insert(name.to_vec(), value.to_vec());
    Ok(())
}

/// The value of `name`.
pub fn get(node: &Node, name: &[u8]) -> DriveResult<Vec<u8>> {
    if name.len() > NAME_MAX {
        return Err(DriveError::Range);
    }
    if !supported(name) {
        return Err(DriveError::NotSupported("xattr namespace"));
    }
    node.xattrs().get(name).cloned().ok_or(DriveError::NoXattr)
}

/// Every name, NUL-terminated, concatenated (listxattr's format).
pub fn list(node: &Node) -> Vec<u8> {
    let mut out = Vec::new();
    // A name an older build stored and `get` now refuses is not listed either.
    for name in node.xattrs().keys().filter(|n| supported(n)) {
        out.extend_from_slice(name);
        out.push(0);
    }
    out
}

/// Removes `name`.
pub fn remove(node: &mut Node, name: &[u8]) -> DriveResult<()> {
    check_name(node, name)?;
    if !node.xattrs().contains_key(name) {
        return Err(DriveError::NoXattr);
    }
    node.xattrs_mut().remove(name);
    node.tidy();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::NodeId;

    fn file() -> Node {
        Node::new(
            NodeId::random(),
            1,
            b"f".to_vec(),
            Kind::File,
            0o644,
            0,
            0,
            0,
        )
    }

    #[test]
    fn create_and_replace_flags() {
        let mut n = file();
        assert!(matches!(
            set(&mut n, b"user.a", b"1", XattrFlags::Replace),
            Err(DriveError::NoXattr)
        ));
        set(&mut n, b"user.a", b"1", XattrFlags::Create).unwrap();
        assert!(matches!(
            set(&mut n, b"user.a", b"2", XattrFlags::Create),
            Err(DriveError::Exists)
        ));
        set(&mut n, b"user.a", b"3", XattrFlags::Replace).unwrap();
        assert_eq!(get(&n, b"user.a").unwrap(), b"3");
        assert_eq!(list(&n), b"user.a\0");
        remove(&mut n, b"user.a").unwrap();
        assert!(matches!(
            remove(&mut n, b"user.a"),
            Err(DriveError::NoXattr)
        ));
    }

    #[test]
    fn limits_and_namespaces() {
        let mut n = file();
        assert!(matches!(
            set(
                &mut n,
                b"user.big",
                &vec![0; VALUE_MAX + 1],
                XattrFlags::Any
            ),
            Err(DriveError::TooBig)
        ));
        assert!(matches!(
            set(&mut n, b"system.posix_acl_access", b"", XattrFlags::Any),
            Err(DriveError::NotSupported(_))
        ));
        assert!(matches!(
            set(&mut n, b"other.x", b"", XattrFlags::Any),
            Err(DriveError::NotSupported(_))
        ));
        // Asking for what the drive never stores says so, not "no such attribute".
        for name in [
            &b"system.posix_acl_access"[..],
            b"system.posix_acl_default",
            b"security.selinux",
        ] {
            assert!(matches!(get(&n, name), Err(DriveError::NotSupported(_))));
            assert!(matches!(
                set(&mut n, name, b"x", XattrFlags::Any),
                Err(DriveError::NotSupported(_))
            ));
        }
        assert!(matches!(get(&n, b"security.ima"), Err(DriveError::NoXattr)));
        set(&mut n, b"security.ima", b"x", XattrFlags::Any).unwrap();
        let mut long = b"user.".to_vec();
        long.extend(std::iter::repeat_n(b'x', 251));
        assert!(matches!(
            set(&mut n, &long, b"", XattrFlags::Any),
            Err(DriveError::Range)
        ));
        let mut link = Node::new(
            NodeId::random(),
            1,
            b"l".to_vec(),
            Kind::Symlink,
            0o777,
            0,
            0,
            0,
        );
        assert!(matches!(
            set(&mut link, b"user.a", b"", XattrFlags::Any),
            Err(DriveError::NotPermitted(_))
        ));
        set(&mut link, b"trusted.a", b"", XattrFlags::Any).unwrap();
    }
}
