//! Node ids and change-log sequence numbers.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A node's stable 128-bit identity, minted by the device that created it.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeId(u128);

/// Why a textual node id was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid node id: expected 32 hex digits")]
pub struct NodeIdParseError;

impl NodeId {
    /// The root directory of every volume.
    pub const ROOT: NodeId = NodeId(0);

    /// A fresh random id.
    pub fn random() -> Self {
        // Zero is the root; a random id colliding with it is astronomically unlikely,
        // but cheap to rule out.
        loop {
            let id = rand::random::<u128>();
            if id != 0 {
                return Self(id);
            }
        }
    }

    /// The id from its integer value.
    pub const fn from_u128(v: u128) -> Self {
        Self(v)
    }

    /// The integer value.
    pub const fn as_u128(&self) -> u128 {
        self.0
    }

    /// Big-endian bytes (the order used in storage keys).
    pub const fn to_bytes(&self) -> [u8; 16] {
        self.0.to_be_bytes()
    }

    /// The id from big-endian bytes.
    pub const fn from_bytes(b: [u8; 16]) -> Self {
        Self(u128::from_be_bytes(b))
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:032x}", self.0)
    }
}

impl fmt::Debug for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "NodeId({:032x})", self.0)
    }
}

impl FromStr for NodeId {
    type Err = NodeIdParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.len() != 32 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(NodeIdParseError);
        }
        u128::from_str_radix(s, 16)
            .map(Self)
            .map_err(|_| NodeIdParseError)
    }
}

impl Serialize for NodeId {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for NodeId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// A volume's change-log position: the server numbers commits 1, 2, 3, ...; 0 is "nothing yet".
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct Seq(pub u64);
