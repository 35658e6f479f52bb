//! Typed objects <-> stored JSON. A value that does not decode is reported
//! as [`StoreError::Corrupt`] naming the key, never a panic.

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::store::{Kind, Object, StoreError};

/// Decodes a stored object's value.
pub fn decode<T: DeserializeOwned>(obj: &Object) -> Result<T, StoreError> {
    serde_json::from_slice(&obj.value).map_err(|e| StoreError::Corrupt {
        kind: obj.kind,
        name: obj.name.clone(),
        reason: e.to_string(),
    })
}

/// Encodes a value for storing.
pub fn encode<T: Serialize>(kind: Kind, name: &str, value: &T) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec(value)
        .map_err(|e| StoreError::Invalid(format!("encoding {kind} {name:?}: {e}")))
}

/// A decoded value that is well-formed JSON but breaks an invariant.
pub fn corrupt(obj: &Object, reason: impl Into<String>) -> StoreError {
    StoreError::Corrupt {
        kind: obj.kind,
        name: obj.name.clone(),
        reason: reason.into(),
    }
}
