//! Validated names: of directory entries and of volumes, users and devices.

use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::limits::{MAX_ACCOUNT_NAME_LEN, MAX_NAME_LEN};

/// Why a name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    /// The name is empty.
    #[error("name is empty")]
    Empty,
    /// The name is longer than the limit, in bytes.
    #[error("name is {len} bytes, more than {max}")]
    TooLong {
        /// Its length in bytes.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The name is "." or "..".
    #[error("name {0:?} is reserved")]
    Reserved(String),
    /// The name holds a character it may not hold.
    #[error("name {name:?} contains the forbidden character {ch:?}")]
    ForbiddenChar {
        /// The refused name.
        name: String,
        /// The first forbidden character.
        ch: char,
    },
}

/// One directory entry's name: 1..=255 bytes of UTF-8, no "/", no NUL, not "." or "..".
///
/// Shared text: a clone is a reference, so the sync engine's trees and their name indexes
/// hold one copy of each name however often they name it.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Name(Arc<str>);

impl Name {
    /// Validates `name`.
    pub fn new(name: impl Into<String>) -> Result<Self, NameError> {
        let name = name.into();
        if name.is_empty() {
            return Err(NameError::Empty);
        }
        if name.len() > MAX_NAME_LEN {
            return Err(NameError::TooLong {
                len: name.len(),
                max: MAX_NAME_LEN,
            });
        }
        if name == "." || name == ".." {
            return Err(NameError::Reserved(name));
        }
        if let Some(ch) = name.chars().find(|&c| c == '/' || c == '\0') {
            return Err(NameError::ForbiddenChar { name, ch });
        }
        Ok(Self(name.into()))
    }

    /// The name as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether `self` and `other` share their text (not only equal).
    pub fn same_text(&self, other: &Name) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl fmt::Display for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Name({:?})", self.0)
    }
}

impl Serialize for Name {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for Name {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Name::new(s).map_err(serde::de::Error::custom)
    }
}

/// The name of a volume, user or device: 1..=64 of `A-Z a-z 0-9 . _ -`, not starting with ".".
///
/// Narrower than [`Name`] because it appears in URL paths and on command lines.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AccountName(String);

impl AccountName {
    /// Validates `name`.
    pub fn new(name: impl Into<String>) -> Result<Self, NameError> {
        let name = name.into();
        if name.is_empty() {
            return Err(NameError::Empty);
        }
        if name.len() > MAX_ACCOUNT_NAME_LEN {
            return Err(NameError::TooLong {
                len: name.len(),
                max: MAX_ACCOUNT_NAME_LEN,
            });
        }
        if let Some(ch) = name
            .chars()
            .find(|&c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
        {
            return Err(NameError::ForbiddenChar { name, ch });
        }
        if name.starts_with('.') {
            return Err(NameError::Reserved(name));
        }
        Ok(Self(name))
    }

    /// The name as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::str::FromStr for AccountName {
    type Err = NameError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

impl fmt::Display for AccountName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for AccountName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "AccountName({:?})", self.0)
    }
}

impl Serialize for AccountName {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for AccountName {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        AccountName::new(s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_names_are_validated() {
        assert!(Name::new("hello.txt").is_ok());
        assert!(Name::new("ünïcødé ok").is_ok());
        assert_eq!(Name::new(""), Err(NameError::Empty));
        assert!(matches!(Name::new("."), Err(NameError::Reserved(_))));
        assert!(matches!(Name::new(".."), Err(NameError::Reserved(_))));
        assert!(matches!(
            Name::new("a/b"),
            Err(NameError::ForbiddenChar { ch: '/', .. })
        ));
        assert!(matches!(
            Name::new("a\0b"),
            Err(NameError::ForbiddenChar { ch: '\0', .. })
        ));
        assert!(Name::new("x".repeat(255)).is_ok());
        assert!(matches!(
            Name::new("x".repeat(256)),
            Err(NameError::TooLong { len: 256, .. })
        ));
        // 128 two-byte characters are 256 bytes: the limit is in bytes, as in POSIX.
        assert!(matches!(
            Name::new("é".repeat(128)),
            Err(NameError::TooLong { len: 256, .. })
        ));
    }

    #[test]
    fn names_deserialize_only_when_valid() {
        assert!(serde_json::from_str::<Name>("\"ok\"").is_ok());
        assert!(serde_json::from_str::<Name>("\"..\"").is_err());
        assert!(serde_json::from_str::<AccountName>("\"laptop-1\"").is_ok());
        assert!(serde_json::from_str::<AccountName>("\"a b\"").is_err());
        assert!(serde_json::from_str::<AccountName>("\".hidden\"").is_err());
    }
}
