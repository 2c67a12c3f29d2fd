//! Proto3 JSON for payloads and envelopes, driven by the compiled schema descriptors.
//!
//! The CLI reads typed messages from JSON and prints inboxes as JSON lines. Conversion goes
//! through `prost-reflect` dynamic messages so the JSON follows the standard proto3 mapping for
//! every type in `proto/` without hand-written serde code.

use std::sync::OnceLock;

use prost::Message;
use prost_reflect::{DescriptorPool, DynamicMessage, MessageDescriptor};

use super::DESCRIPTOR_SET;

/// Why a JSON conversion failed.
#[derive(Debug, thiserror::Error)]
pub enum JsonError {
    /// No message of the schema has this name (as given: full, such as
    /// `enlace.v1.PrecursorChemicalAlert`, or short, such as `PrecursorChemicalAlert`). Check
    /// the spelling against `proto/enlace/v1/`.
    #[error("unknown message type {0:?}")]
    UnknownType(String),
    /// The JSON does not fit the message type under the proto3 JSON mapping (an unknown field,
    /// a value of the wrong type, an unknown enum name): correct the JSON.
    #[error("invalid JSON for {type_name}: {reason}")]
    Invalid {
        /// The message type's full name.
        type_name: String,
        /// What the JSON mapping objected to.
        reason: String,
    },
    /// The bytes are not a valid protobuf encoding of the message type: they are of another
    /// type, or damaged.
    #[error("payload does not decode as {type_name}: {reason}")]
    Undecodable {
        /// The message type's full name.
        type_name: String,
        /// What the decoder objected to.
        reason: String,
    },
}

fn pool() -> &'static DescriptorPool {
    static POOL: OnceLock<DescriptorPool> = OnceLock::new();
    // The descriptor set is produced by build.rs from the same schemas; decoding it cannot fail.
    POOL.get_or_init(|| DescriptorPool::decode(DESCRIPTOR_SET).expect("descriptor set is valid"))
}

/// Looks up a message type by full name (`enlace.v1.PrecursorChemicalAlert`) or short name.
pub fn descriptor(type_name: &str) -> Result<MessageDescriptor, JsonError> {
    let full = if type_name.contains('.') {
        type_name.to_owned()
    } else {
        format!("enlace.v1.{type_name}")
    };
    pool()
        .get_message_by_name(&full)
        .ok_or_else(|| JsonError::UnknownType(type_name.to_owned()))
}

/// Encodes a JSON value as the protobuf message `type_name`.
pub fn encode_json(type_name: &str, json: &serde_json::Value) -> Result<Vec<u8>, JsonError> {
    let desc = descriptor(type_name)?;
    let msg = DynamicMessage::deserialize(desc.clone(), json).map_err(|e| JsonError::Invalid {
        type_name: desc.full_name().to_owned(),
        reason: e.to_string(),
    })?;
    Ok(msg.encode_to_vec())
}

/// Decodes protobuf bytes of type `type_name` into JSON.
pub fn decode_json(type_name: &str, bytes: &[u8]) -> Result<serde_json::Value, JsonError> {
    let desc = descriptor(type_name)?;
    let undecodable = |reason: String| JsonError::Undecodable {
        type_name: desc.full_name().to_owned(),
        reason,
    };
    let msg =
        DynamicMessage::decode(desc.clone(), bytes).map_err(|e| undecodable(e.to_string()))?;
    serde_json::to_value(&msg).map_err(|e| undecodable(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::pb;

    #[test]
    fn json_round_trip_through_schema() {
        let json =
            serde_json::json!({"agency": "pgr", "unit": "desk", "copyType": "COPY_TYPE_ACTION"});
        let bytes = encode_json("Addressee", &json).unwrap();
        let a = pb::Addressee::decode(bytes.as_slice()).unwrap();
        assert_eq!(a.agency, "pgr");
        assert_eq!(a.copy_type(), pb::CopyType::Action);
        assert_eq!(decode_json("enlace.v1.Addressee", &bytes).unwrap(), json);
    }

    #[test]
    fn unknown_fields_and_types_are_errors() {
        assert!(matches!(
            encode_json("Addressee", &serde_json::json!({"agencyy": "x"})),
            Err(JsonError::Invalid { .. })
        ));
        assert!(matches!(
            encode_json("NoSuchType", &serde_json::json!({})),
            Err(JsonError::UnknownType(_))
        ));
    }
}
