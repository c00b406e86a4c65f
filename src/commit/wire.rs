//! How the protocol's messages travel: versioned structs, as JSON (hashes in hex) or CBOR
//! (hashes as byte strings), each with a size limit checked before parsing.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::CommitError;

/// The largest message pot reads or writes (an opening of [`MAX_OPEN_STEPS`] steps of a
/// million-step job is about 0.2 MB in CBOR).
pub const MAX_MESSAGE_BYTES: usize = 4 << 20;
/// The most steps one opening may reveal.
pub const MAX_OPEN_STEPS: usize = 256;

/// `application/cbor`.
pub const CBOR: &str = "application/cbor";

/// A fixed-size byte string: hex in JSON, a byte string in CBOR.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Bytes<const N: usize>(pub [u8; N]);

impl<const N: usize> std::fmt::Debug for Bytes<N> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl<const N: usize> std::fmt::Display for Bytes<N> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl<const N: usize> Serialize for Bytes<N> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            s.serialize_str(&hex::encode(self.0))
        } else {
            s.serialize_bytes(&self.0)
        }
    }
}

impl<'de, const N: usize> Deserialize<'de> for Bytes<N> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        let v: Vec<u8> = if d.is_human_readable() {
            let s = String::deserialize(d)?;
            hex::decode(&s).map_err(|_| D::Error::custom(format!("{s:?} is not hex")))?
        } else {
            serde_bytes::ByteBuf::deserialize(d)?.into_vec()
        };
        let n = v.len();
        v.try_into()
            .map(Bytes)
            .map_err(|_| D::Error::custom(format!("expected {N} bytes, got {n}")))
    }
}

/// A message's encoding.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Encoding {
    /// JSON.
    Json,
    /// CBOR (RFC 8949).
    Cbor,
}

impl Encoding {
    /// The encoding a `Content-Type` or `Accept` value names (JSON unless it names CBOR).
    pub fn from_media_type(v: Option<&str>) -> Self {
        match v {
            Some(t) if t.contains(CBOR) => Self::Cbor,
            _ => Self::Json,
        }
    }

    /// Its media type.
    pub fn media_type(self) -> &'static str {
        match self {
            Self::Json => "application/json",
            Self::Cbor => CBOR,
        }
    }
}

/// Encode a message.
pub fn encode<T: Serialize>(msg: &T, enc: Encoding) -> Result<Vec<u8>, CommitError> {
    let out = match enc {
        Encoding::Json => {
            serde_json::to_vec(msg).map_err(|e| CommitError::Malformed(e.to_string()))?
        }
        Encoding::Cbor => {
            let mut b = Vec::new();
            ciborium::into_writer(msg, &mut b)
                .map_err(|e| CommitError::Malformed(e.to_string()))?;
            b
        }
    };
    if out.len() > MAX_MESSAGE_BYTES {
        return Err(CommitError::TooLarge {
            what: std::any::type_name::<T>()
                .rsplit("::")
                .next()
                .unwrap_or("message")
                .to_string(),
            bytes: out.len(),
        });
    }
    Ok(out)
}

/// Decode a message of at most [`MAX_MESSAGE_BYTES`].
pub fn decode<T: DeserializeOwned>(bytes: &[u8], enc: Encoding) -> Result<T, CommitError> {
    let what = std::any::type_name::<T>()
        .rsplit("::")
        .next()
        .unwrap_or("message");
    if bytes.len() > MAX_MESSAGE_BYTES {
        return Err(CommitError::TooLarge {
            what: what.to_string(),
            bytes: bytes.len(),
        });
    }
    match enc {
        Encoding::Json => serde_json::from_slice(bytes)
            .map_err(|e| CommitError::Malformed(format!("{what} (JSON): {e}"))),
        Encoding::Cbor => ciborium::from_reader(bytes)
            .map_err(|e| CommitError::Malformed(format!("{what} (CBOR): {e}"))),
    }
}
