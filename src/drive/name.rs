//! Entry names: what a directory entry may be called, and how a node holds its name.

use std::ops::Deref;

use super::error::DriveError;

/// Longest name in bytes, as on ext4.
pub const NAME_MAX: usize = 255;

/// Checks that `name` can be a directory entry: not empty, not `.` or `..`, no `/` or NUL,
/// at most [`NAME_MAX`] bytes.
pub fn validate(name: &[u8]) -> Result<(), DriveError> {
    if name.len() > NAME_MAX {
        return Err(DriveError::NameTooLong);
    }
    if name.is_empty() || name == b"." || name == b".." {
        return Err(DriveError::Invalid("reserved or empty name"));
    }
    if name.iter().any(|&b| b == b'/' || b == 0) {
        return Err(DriveError::Invalid("name contains '/' or NUL"));
    }
    Ok(())
}

/// Bytes of a name kept inside [`Name`] itself (most names are this short or shorter).
const INLINE: usize = 22;

/// An entry name as a node holds it: up to 22 bytes inline, a longer one in one exact heap
/// allocation. 24 bytes either way, where a `Vec<u8>` takes 24 plus a heap block of 32 or more:
/// with a million files, names are a large share of the drive's memory.
#[derive(Clone)]
pub enum Name {
    /// A short name: `len` bytes of `bytes`.
    Inline {
        /// Bytes used.
        len: u8,
        /// The name, then zeros.
        bytes: [u8; INLINE],
    },
    /// A name longer than [`INLINE`] bytes.
    Heap(Box<[u8]>),
}

impl Name {
    /// The empty name (the root's).
    pub const fn empty() -> Name {
        Name::Inline {
            len: 0,
            bytes: [0; INLINE],
        }
    }

    /// The name's bytes.
    pub fn as_bytes(&self) -> &[u8] {
        match self {
            Name::Inline { len, bytes } => &bytes[..usize::from(*len)],
            Name::Heap(b) => b,
        }
    }
}

impl Default for Name {
    fn default() -> Name {
        Name::empty()
    }
}

impl From<&[u8]> for Name {
    fn from(name: &[u8]) -> Name {
        match u8::try_from(name.len()) {
            Ok(len) if name.len() <= INLINE => {
                let mut bytes = [0; INLINE];
                bytes[..name.len()].copy_from_slice(name);
                Name::Inline { len, bytes }
            }
            _ => Name::Heap(name.into()),
        }
    }
}

impl From<Vec<u8>> for Name {
    fn from(name: Vec<u8>) -> Name {
        if name.len() <= INLINE {
            Name::from(name.as_slice())
        } else {
            Name::Heap(name.into_boxed_slice())
        }
    }
}

impl Deref for Name {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        self.as_bytes()
    }
}

impl PartialEq for Name {
    fn eq(&self, other: &Name) -> bool {
        self.as_bytes() == other.as_bytes()
    }
}

impl Eq for Name {}

impl PartialEq<[u8]> for Name {
    fn eq(&self, other: &[u8]) -> bool {
        self.as_bytes() == other
    }
}

impl std::fmt::Debug for Name {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", String::from_utf8_lossy(self.as_bytes()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_keep_their_bytes_inline_or_on_the_heap() {
        assert_eq!(std::mem::size_of::<Name>(), 24);
        for len in [0, 1, INLINE - 1, INLINE, INLINE + 1, NAME_MAX] {
            let bytes: Vec<u8> = (0..len).map(|i| b'a' + (i % 26) as u8).collect();
            let from_slice = Name::from(bytes.as_slice());
            let from_vec = Name::from(bytes.clone());
            assert_eq!(from_slice.as_bytes(), bytes.as_slice(), "{len}");
            assert_eq!(from_vec.as_bytes(), bytes.as_slice(), "{len}");
            assert_eq!(from_slice, from_vec);
            assert_eq!(matches!(from_slice, Name::Heap(_)), len > INLINE, "{len}");
        }
        assert_ne!(Name::from(&b"ab"[..]), Name::from(&b"ab\0"[..]));
        assert_eq!(&*Name::default(), b"");
    }

    #[test]
    fn names_are_checked_like_ext4() {
        assert!(validate(b"a").is_ok());
        assert!(validate(&[b'x'; 255]).is_ok());
        assert!(matches!(
            validate(&[b'x'; 256]),
            Err(DriveError::NameTooLong)
        ));
        for bad in [&b""[..], b".", b"..", b"a/b", b"a\0b"] {
            assert!(
                matches!(validate(bad), Err(DriveError::Invalid(_))),
                "{bad:?}"
            );
        }
    }
}
