//! Node ids and change-log sequence numbers.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Defines a 128-bit id written as 32 lower-case hex digits (in JSON too).
macro_rules! hex128_id {
    ($(#[$doc:meta])* $name:ident, $err:ident, $what:literal) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(u128);

        #[doc = concat!("Why a textual ", $what, " was refused.")]
        #[derive(Debug, thiserror::Error, PartialEq, Eq)]
        #[error("invalid {}: expected 32 hex digits", $what)]
        pub struct $err;

        impl $name {
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

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{:032x}", self.0)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, concat!(stringify!($name), "({:032x})"), self.0)
            }
        }

        impl FromStr for $name {
            type Err = $err;

            fn from_str(s: &str) -> Result<Self, Self::Err> {
                if s.len() != 32 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
                    return Err($err);
                }
                u128::from_str_radix(s, 16).map(Self).map_err(|_| $err)
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(&self.to_string())
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
                s.parse().map_err(serde::de::Error::custom)
            }
        }
    };
}

hex128_id!(
    /// A node's stable 128-bit identity, minted by the device that created it.
    NodeId,
    NodeIdParseError,
    "node id"
);

hex128_id!(
    /// A device's transaction id: 128 bits, 32 hex digits; unique per device (an outbox row id will do).
    TxnId,
    TxnIdParseError,
    "transaction id"
);

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
}

impl TxnId {
    /// A fresh random id.
    pub fn random() -> Self {
        Self(rand::random::<u128>())
    }
}

/// A volume's change-log position: the server numbers commits 1, 2, 3, ...; 0 is "nothing yet".
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct Seq(pub u64);
