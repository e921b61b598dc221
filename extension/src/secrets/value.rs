//! A secret's value as `GetSecretValue` returns it, held in zeroizing memory: the bytes leave
//! the SDK's output by move into [`Payload`] (`Zeroizing`), the SDK strings that are not moved
//! are wiped, and the JSON answer is serialised once, straight into a zeroizing buffer. With
//! `jsonKey`, the answer carries one top-level field of the secret instead, picked without
//! copying the others ([`SecretValue::json_with_key`]).

use std::fmt;

use serde::Serialize;
use serde_json::value::RawValue;
use zeroize::{Zeroize, Zeroizing};

use crate::domain::code::Code;

/// The secret's bytes, wiped on drop.
pub enum Payload {
    /// `SecretString`.
    Text(Zeroizing<String>),
    /// `SecretBinary`.
    Binary(Zeroizing<Vec<u8>>),
}

impl fmt::Debug for Payload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Payload::Text(_) => "Text(<redacted>)",
            Payload::Binary(_) => "Binary(<redacted>)",
        })
    }
}

/// One version of a secret, as `GetSecretValue` returns it.
pub struct SecretValue {
    arn: String,
    name: String,
    version_id: String,
    version_stages: Vec<String>,
    created_date: Option<f64>,
    payload: Payload,
    /// [`SecretValue::to_json`], made once on first use: every cached read answers with a
    /// clone of these bytes (a reference count, no copy, no allocation). The zeroizing buffer
    /// is wiped when the value and the last answer holding it are gone.
    json: std::sync::OnceLock<bytes::Bytes>,
}

impl fmt::Debug for SecretValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SecretValue")
            .field("name", &self.name)
            .field("version_id", &self.version_id)
            .finish_non_exhaustive()
    }
}

/// The wire shape of `GetSecretValue`, borrowed so the secret is serialised straight from
/// zeroizing memory into a zeroizing buffer.
#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct Wire<'a> {
    #[serde(rename = "ARN")]
    arn: &'a str,
    name: &'a str,
    version_id: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    secret_string: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    secret_binary: Option<&'a str>,
    version_stages: &'a [String],
    #[serde(skip_serializing_if = "Option::is_none")]
    created_date: Option<f64>,
}

/// Why `jsonKey` could not be served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JsonKeyError {
    /// The secret is binary, or its string is not a JSON object.
    NotAnObject,
    /// The object has no such top-level key.
    NoSuchKey,
}

impl JsonKeyError {
    /// The stable code the GET API answers with.
    pub fn code(self) -> Code {
        match self {
            JsonKeyError::NotAnObject => Code::SecretNotJsonObject,
            JsonKeyError::NoSuchKey => Code::JsonKeyNotFound,
        }
    }
}

impl SecretValue {
    /// The `GetSecretValue` JSON, in a buffer that is wiped when dropped.
    pub fn to_json(&self) -> Zeroizing<Vec<u8>> {
        let string = match &self.payload {
            Payload::Text(text) => Some(text.as_str()),
            Payload::Binary(_) => None,
        };
        self.to_json_with(string)
    }

    /// The `GetSecretValue` JSON with `SecretString` replaced by the value of the top-level
    /// key `key` of the secret's JSON object: a string as it is, anything else (number,
    /// boolean, `null`, array, object) as its JSON text. The object is read in place (each value
    /// a borrowed slice of the secret), so no other field is ever copied.
    ///
    /// # Errors
    /// [`JsonKeyError`].
    pub fn json_with_key(&self, key: &str) -> Result<Zeroizing<Vec<u8>>, JsonKeyError> {
        let Payload::Text(text) = &self.payload else { return Err(JsonKeyError::NotAnObject) };
        let object: std::collections::BTreeMap<std::borrow::Cow<'_, str>, &RawValue> =
            serde_json::from_str(text).map_err(|_| JsonKeyError::NotAnObject)?;
        let raw = object.get(key).ok_or(JsonKeyError::NoSuchKey)?.get();
        let field = if raw.starts_with('"') {
            // A JSON string: decoded, straight into zeroizing memory.
            Zeroizing::new(serde_json::from_str::<String>(raw).map_err(|_| JsonKeyError::NotAnObject)?)
        } else {
            let mut copy = Zeroizing::new(String::with_capacity(raw.len()));
            copy.push_str(raw);
            copy
        };
        Ok(self.to_json_with(Some(field.as_str())))
    }

    fn to_json_with(&self, secret_string: Option<&str>) -> Zeroizing<Vec<u8>> {
        let binary = match &self.payload {
            Payload::Binary(bytes) if secret_string.is_none() => {
                Some(Zeroizing::new(aws_smithy_types::base64::encode(bytes.as_slice())))
            }
            _ => None,
        };
        let wire = Wire {
            arn: &self.arn,
            name: &self.name,
            version_id: &self.version_id,
            secret_string,
            secret_binary: binary.as_ref().map(|b| b.as_str()),
            version_stages: &self.version_stages,
            created_date: self.created_date,
        };
        // Sized so that serialisation never reallocates (a reallocation would leave a copy
        // behind in freed memory); escaping can at most sextuple a control character.
        let payload_len = secret_string.map_or(0, |text| text.len() * 6) + binary.as_ref().map_or(0, |b| b.len());
        let mut buffer = Zeroizing::new(Vec::with_capacity(payload_len + self.arn.len() + self.name.len() + 256));
        // Serialising borrowed strings into a Vec cannot fail.
        let _ = serde_json::to_writer(&mut *buffer, &wire);
        buffer
    }

    /// The secret string, or the base64 of a binary secret (a Parameter Store reference's
    /// `Value`), in zeroizing memory.
    pub fn text_or_base64(&self) -> Zeroizing<String> {
        match &self.payload {
            Payload::Text(text) => {
                let mut copy = Zeroizing::new(String::with_capacity(text.len()));
                copy.push_str(text);
                copy
            }
            Payload::Binary(bytes) => Zeroizing::new(aws_smithy_types::base64::encode(bytes.as_slice())),
        }
    }

    /// `CreatedDate`, Unix seconds.
    pub fn created_date(&self) -> Option<f64> {
        self.created_date
    }

    /// The `GetSecretValue` JSON as a response body that shares the value's own (zeroizing)
    /// copy, made once per value: the body keeps that copy alive until hyper has sent it.
    pub fn json_body(&self) -> bytes::Bytes {
        self.json.get_or_init(|| bytes::Bytes::from_owner(self.to_json())).clone()
    }

    /// The secret's ARN.
    pub fn arn(&self) -> &str {
        &self.arn
    }

    /// The secret's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The version id, for audit lines.
    pub fn version_id(&self) -> &str {
        &self.version_id
    }

    /// Whether this version carries the staging label `stage`.
    pub fn has_stage(&self, stage: &str) -> bool {
        self.version_stages.iter().any(|s| s == stage)
    }

    #[allow(clippy::too_many_arguments)]
    pub(crate) fn from_parts(
        arn: Option<String>,
        name: Option<String>,
        version_id: Option<String>,
        secret_string: Option<String>,
        secret_binary: Option<aws_smithy_types::Blob>,
        version_stages: Option<Vec<String>>,
        created_date: Option<aws_smithy_types::DateTime>,
    ) -> Self {
        let payload = match (secret_string, secret_binary) {
            // Moved into zeroizing memory: no copy is made.
            (Some(text), binary) => {
                if let Some(blob) = binary {
                    blob.into_inner().zeroize();
                }
                Payload::Text(Zeroizing::new(text))
            }
            (None, Some(blob)) => Payload::Binary(Zeroizing::new(blob.into_inner())),
            (None, None) => Payload::Text(Zeroizing::new(String::new())),
        };
        Self {
            arn: arn.unwrap_or_default(),
            name: name.unwrap_or_default(),
            version_id: version_id.unwrap_or_default(),
            version_stages: version_stages.unwrap_or_default(),
            created_date: created_date.map(|d| d.as_secs_f64()),
            payload,
            json: std::sync::OnceLock::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn value(text: Option<&str>, binary: Option<&[u8]>) -> Arc<SecretValue> {
        Arc::new(SecretValue::from_parts(
            Some("arn:aws:secretsmanager:us-east-1:123456789012:secret:app/db-AbC123".into()),
            Some("app/db".into()),
            Some("v1".into()),
            text.map(str::to_owned),
            binary.map(|b| aws_smithy_types::Blob::new(b.to_vec())),
            Some(vec!["AWSCURRENT".into()]),
            Some(aws_smithy_types::DateTime::from_secs(1_764_000_000)),
        ))
    }

    #[test]
    fn the_answer_is_aws_shape_and_shared_not_copied() {
        let text = value(Some("s3cr\"et\n"), None);
        let json: serde_json::Value = serde_json::from_slice(&text.json_body()).expect("json");
        assert_eq!(json["SecretString"], "s3cr\"et\n");
        assert_eq!(json["Name"], "app/db");
        assert_eq!(json["VersionStages"], serde_json::json!(["AWSCURRENT"]));
        assert!(json.get("SecretBinary").is_none());
        let (first, second) = (text.json_body(), text.json_body());
        assert_eq!(first.as_ptr(), second.as_ptr(), "one serialisation per value, shared by every answer");
        let binary = value(None, Some(b"\x00\x01bin"));
        let json: serde_json::Value = serde_json::from_slice(&binary.json_body()).expect("json");
        assert_eq!(json["SecretBinary"], "AAFiaW4=");
        assert!(json.get("SecretString").is_none());
        assert_eq!(
            format!("{:?} {:?}", text, text.payload),
            "SecretValue { name: \"app/db\", version_id: \"v1\", .. } Text(<redacted>)"
        );
    }

    #[test]
    fn json_key_answers_one_field_as_text_and_never_the_others() {
        let secret = value(
            Some(r#"{"user":"app","pass":"p\"w\n","port":5432,"tls":true,"opts":{"a":[1,2]},"user2":"other-value"}"#),
            None,
        );
        let field = |key: &str| -> Result<serde_json::Value, JsonKeyError> {
            let answer = secret.json_with_key(key)?;
            assert!(!String::from_utf8_lossy(&answer).contains("other-value"), "{key}: another key's value");
            let json: serde_json::Value = serde_json::from_slice(&answer).expect("json");
            assert_eq!((json["Name"].as_str(), json["VersionId"].as_str()), (Some("app/db"), Some("v1")));
            Ok(json["SecretString"].clone())
        };
        assert_eq!(field("user"), Ok(serde_json::json!("app")));
        assert_eq!(field("pass"), Ok(serde_json::json!("p\"w\n")));
        assert_eq!(field("port"), Ok(serde_json::json!("5432")));
        assert_eq!(field("tls"), Ok(serde_json::json!("true")));
        assert_eq!(field("opts"), Ok(serde_json::json!(r#"{"a":[1,2]}"#)));
        assert_eq!(field("missing"), Err(JsonKeyError::NoSuchKey));
        for not_an_object in [Some("plain text"), Some("[1,2]"), Some("\"a string\""), Some("")] {
            assert_eq!(value(not_an_object, None).json_with_key("a").err(), Some(JsonKeyError::NotAnObject));
        }
        assert_eq!(value(None, Some(b"{\"a\":1}")).json_with_key("a").err(), Some(JsonKeyError::NotAnObject));
    }
}
