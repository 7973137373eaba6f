//! Validated entry names: what a directory entry may be called.

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

#[cfg(test)]
mod tests {
    use super::*;

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
