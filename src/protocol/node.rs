//! Nodes as the wire carries them: kinds, extended attributes and full node records.

use std::collections::BTreeMap;
use std::fmt;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde::de::{Error as _, MapAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::limits::{MAX_XATTR_NAME, MAX_XATTR_VALUE, MAX_XATTRS_TOTAL};
use super::{Name, NodeId, Seq};
use crate::chunking::{Manifest, ManifestId};

/// What a node is. It never changes over a node's life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NodeKind {
    /// A regular file with a content manifest.
    File,
    /// A directory.
    Dir,
    /// A symbolic link with a target.
    Symlink,
}

/// An extended attribute's value: arbitrary bytes, base64 (standard alphabet, padded) in JSON.
#[derive(Clone, PartialEq, Eq, Hash, Default)]
pub struct XattrValue(pub Vec<u8>);

impl fmt::Debug for XattrValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "XattrValue({} bytes)", self.0.len())
    }
}

impl Serialize for XattrValue {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&STANDARD.encode(&self.0))
    }
}

impl<'de> Deserialize<'de> for XattrValue {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        STANDARD
            .decode(s.as_bytes())
            .map(XattrValue)
            .map_err(serde::de::Error::custom)
    }
}

/// A node's extended attributes, by name.
pub type Xattrs = BTreeMap<String, XattrValue>;

/// Why a set of extended attributes was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum XattrError {
    /// A name is empty, too long or holds NUL.
    #[error("bad extended attribute name {0:?}")]
    BadName(String),
    /// One value is over the limit.
    #[error("extended attribute {name:?} is {len} bytes, more than {max}")]
    ValueTooLarge {
        /// The attribute.
        name: String,
        /// Its size.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// All attributes together are over the limit.
    #[error("extended attributes total {total} bytes, more than {max}")]
    TotalTooLarge {
        /// Their total size.
        total: usize,
        /// The limit.
        max: usize,
    },
}

/// Checks extended attributes against the protocol's limits.
pub fn validate_xattrs(xattrs: &Xattrs) -> Result<(), XattrError> {
    let mut total = 0usize;
    for (name, value) in xattrs {
        if name.is_empty() || name.len() > MAX_XATTR_NAME || name.contains('\0') {
            return Err(XattrError::BadName(name.clone()));
        }
        if value.0.len() > MAX_XATTR_VALUE {
            return Err(XattrError::ValueTooLarge {
                name: name.clone(),
                len: value.0.len(),
                max: MAX_XATTR_VALUE,
            });
        }
        total += name.len() + value.0.len();
    }
    if total > MAX_XATTRS_TOTAL {
        return Err(XattrError::TotalTooLarge {
            total,
            max: MAX_XATTRS_TOTAL,
        });
    }
    Ok(())
}

/// Reads extended attributes, refusing them once their total passes [`MAX_XATTRS_TOTAL`], so
/// a body of millions of tiny attributes is refused without being held (a map entry costs
/// several times its JSON). The other checks are [`validate_xattrs`]'s.
pub fn deserialize_xattrs<'de, D: Deserializer<'de>>(d: D) -> Result<Xattrs, D::Error> {
    struct Bounded;
    impl<'de> Visitor<'de> for Bounded {
        type Value = Xattrs;

        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a map of extended attribute names to base64 values")
        }

        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Xattrs, A::Error> {
            let mut out = Xattrs::new();
            let mut total = 0usize;
            while let Some(name) = map.next_key::<String>()? {
                let value: XattrValue = map.next_value()?;
                total += name.len() + value.0.len();
                if total > MAX_XATTRS_TOTAL {
                    return Err(A::Error::custom(XattrError::TotalTooLarge {
                        total,
                        max: MAX_XATTRS_TOTAL,
                    }));
                }
                if let Some(old) = out.insert(name.clone(), value) {
                    total -= name.len() + old.0.len();
                }
            }
            Ok(out)
        }
    }
    d.deserialize_map(Bounded)
}

/// [`deserialize_xattrs`] for an optional field (`null` is `None`).
pub fn deserialize_xattrs_opt<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Xattrs>, D::Error> {
    struct Field(Xattrs);
    impl<'de> Deserialize<'de> for Field {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            deserialize_xattrs(d).map(Field)
        }
    }
    Ok(Option::<Field>::deserialize(d)?.map(|f| f.0))
}

/// One node as the server holds it at some seq (snapshot entries).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRecord {
    /// The node's id; [`NodeId::ROOT`] for the volume's root directory.
    pub node: NodeId,
    /// The parent directory; absent for the root only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<NodeId>,
    /// The entry name in the parent; absent for the root only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<Name>,
    /// File, directory or symlink.
    pub kind: NodeKind,
    /// Permission bits (within [`super::limits::MODE_MASK`]).
    pub mode: u32,
    /// Modification time, nanoseconds since the Unix epoch.
    pub mtime: i64,
    /// Extended attributes.
    #[serde(
        default,
        skip_serializing_if = "BTreeMap::is_empty",
        deserialize_with = "deserialize_xattrs"
    )]
    pub xattrs: Xattrs,
    /// Content size in bytes (files; 0 otherwise).
    #[serde(default)]
    pub size: u64,
    /// Content manifest (files only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub manifest: Option<Manifest>,
    /// Id of `manifest` (files only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub manifest_id: Option<ManifestId>,
    /// Link target (symlinks only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    /// Seq of the last commit that changed this node (0 for an untouched root).
    pub version: Seq,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::TxnId;

    #[test]
    fn xattr_values_are_base64_in_json() {
        let mut x = Xattrs::new();
        x.insert("user.k".into(), XattrValue(vec![0, 255, 1]));
        let json = serde_json::to_string(&x).unwrap();
        assert_eq!(json, r#"{"user.k":"AP8B"}"#);
        assert_eq!(serde_json::from_str::<Xattrs>(&json).unwrap(), x);
        assert!(serde_json::from_str::<Xattrs>(r#"{"user.k":"!!"}"#).is_err());
    }

    #[test]
    fn xattrs_past_the_total_are_refused_while_read() {
        #[derive(Debug, Deserialize)]
        struct Holder {
            #[serde(deserialize_with = "deserialize_xattrs")]
            x: Xattrs,
        }
        // Tiny attributes to twice the total: refused, and the reading stopped there (the
        // input that follows is not even JSON).
        let entries: Vec<String> = (0..MAX_XATTRS_TOTAL / 4)
            .map(|i| format!(r#""{i:07x}":"""#))
            .collect();
        let over = format!(r#"{{"x":{{{},"#, entries.join(","));
        let e = serde_json::from_str::<Holder>(&format!("{over}!!!")).unwrap_err();
        assert!(e.to_string().contains("more than 262144"), "{e}");
        // Within the total, and a repeated name counted once.
        let ok = format!(
            r#"{{"x":{{"a":"AAAA","a":"AAAA",{}}}}}"#,
            entries[..1000].join(",")
        );
        let held = serde_json::from_str::<Holder>(&ok).unwrap();
        assert_eq!(held.x.len(), 1001);
        assert_eq!(held.x["a"], XattrValue(vec![0, 0, 0]));
    }

    #[test]
    fn xattr_limits_hold() {
        let mut x = Xattrs::new();
        x.insert("user.big".into(), XattrValue(vec![0; MAX_XATTR_VALUE + 1]));
        assert!(matches!(
            validate_xattrs(&x),
            Err(XattrError::ValueTooLarge { .. })
        ));
        let mut y = Xattrs::new();
        y.insert(String::new(), XattrValue(vec![]));
        assert!(matches!(validate_xattrs(&y), Err(XattrError::BadName(_))));
        let mut z = Xattrs::new();
        for i in 0..5 {
            z.insert(format!("user.{i}"), XattrValue(vec![0; MAX_XATTR_VALUE]));
        }
        assert!(matches!(
            validate_xattrs(&z),
            Err(XattrError::TotalTooLarge { .. })
        ));
    }

    #[test]
    fn txn_ids_round_trip_as_hex() {
        let t = TxnId::from_u128(0xabc);
        let json = serde_json::to_string(&t).unwrap();
        assert_eq!(json, "\"00000000000000000000000000000abc\"");
        assert_eq!(serde_json::from_str::<TxnId>(&json).unwrap(), t);
        assert!("xyz".parse::<TxnId>().is_err());
    }
}
