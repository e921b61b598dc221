//! A parameter's value as `GetParameter` returns it, held in zeroizing memory (a `SecureString`
//! is a secret in all but name, and a `String` may be one too), and the two JSON forms it is
//! answered in: the GET API's (every field of AWS's `Parameter`, `null` where absent, as AWS's
//! extension answers) and the SDK protocol's (absent fields left out, as Parameter Store
//! answers). Also the calls that fetch parameters with a session: `GetParameter` for a read,
//! `GetParameters` (ten names a call) for the prefetch.
//! See <https://docs.aws.amazon.com/systems-manager/latest/APIReference/API_Parameter.html>.

use std::fmt;
use std::sync::OnceLock;

use aws_sdk_ssm as ssm;
use serde::Serialize;
use zeroize::Zeroizing;

use super::upstream::classify;
use super::value::SecretValue;
use crate::domain::error::ReadError;
use crate::domain::parameter::ParameterVersion;
use crate::session::Session;

/// `GetParameters` takes at most this many names.
pub const BATCH_LIMIT: usize = 10;

/// One version of a parameter.
pub struct ParameterValue {
    name: String,
    arn: String,
    kind: String,
    data_type: String,
    version: i64,
    selector: Option<String>,
    last_modified_date: Option<f64>,
    value: Zeroizing<String>,
    /// A Secrets Manager reference's `GetSecretValue` JSON.
    source_result: Option<Zeroizing<String>>,
    /// The GET API's and the SDK protocol's JSON, each made once; the GET API's is shared by
    /// its answers (a reference count each), wiped when the value and the last answer are gone.
    get_json: OnceLock<bytes::Bytes>,
    sdk_json: OnceLock<Zeroizing<Vec<u8>>>,
}

impl fmt::Debug for ParameterValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ParameterValue")
            .field("name", &self.name)
            .field("type", &self.kind)
            .field("version", &self.version)
            .finish_non_exhaustive()
    }
}

/// AWS's `Parameter`, borrowed from zeroizing memory. `Some(None)` is a `null`, `None` leaves
/// the field out.
#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct Wire<'a> {
    #[serde(rename = "ARN")]
    arn: &'a str,
    data_type: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    last_modified_date: Option<Option<f64>>,
    name: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    selector: Option<Option<&'a str>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    source_result: Option<Option<&'a str>>,
    #[serde(rename = "Type")]
    kind: &'a str,
    value: &'a str,
    version: i64,
}

/// Which JSON form.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Form {
    /// The GET API: every field, `null` where absent, wrapped in `{"Parameter": …}`.
    Get,
    /// The SDK protocol's `Parameter` object: absent fields left out.
    Sdk,
}

impl ParameterValue {
    /// From the SDK's output, the value moved (not copied) into zeroizing memory.
    pub(crate) fn from_sdk(parameter: ssm::types::Parameter) -> Self {
        let ssm::types::Parameter {
            name,
            r#type,
            value,
            version,
            selector,
            source_result,
            last_modified_date,
            arn,
            data_type,
            ..
        } = parameter;
        Self {
            name: name.unwrap_or_default(),
            arn: arn.unwrap_or_default(),
            kind: r#type.map(|t| t.as_str().to_owned()).unwrap_or_default(),
            data_type: data_type.unwrap_or_else(|| "text".to_owned()),
            version,
            selector,
            last_modified_date: last_modified_date.map(|d| d.as_secs_f64()),
            value: Zeroizing::new(value.unwrap_or_default()),
            source_result: source_result.map(Zeroizing::new),
            get_json: OnceLock::new(),
            sdk_json: OnceLock::new(),
        }
    }

    /// A Secrets Manager secret read as the parameter `name` (`/aws/reference/secretsmanager/ID`),
    /// as Parameter Store answers it: a `SecureString` whose `Value` is the secret string (or
    /// the base64 of a binary secret) and whose `SourceResult` is the `GetSecretValue` JSON.
    pub fn from_secret(name: &str, secret: &SecretValue) -> Self {
        // arn:PARTITION:secretsmanager:REGION:ACCOUNT:secret:… → the reference's own ARN.
        let parts: Vec<&str> = secret.arn().splitn(6, ':').collect();
        let arn = match parts.as_slice() {
            [_, partition, _, region, account, _] => format!("arn:{partition}:ssm:{region}:{account}:parameter{name}"),
            _ => String::new(),
        };
        let source = secret.to_json();
        Self {
            name: name.to_owned(),
            arn,
            kind: "SecureString".to_owned(),
            data_type: "text".to_owned(),
            version: 0,
            selector: None,
            last_modified_date: secret.created_date(),
            value: secret.text_or_base64(),
            source_result: Some(Zeroizing::new(String::from_utf8_lossy(&source).into_owned())),
            get_json: OnceLock::new(),
            sdk_json: OnceLock::new(),
        }
    }

    /// The parameter's name (without a selector).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its version, for audit lines.
    pub fn version(&self) -> i64 {
        self.version
    }

    /// Whether it is a `SecureString` (its value differs with and without decryption).
    pub fn is_secure(&self) -> bool {
        self.kind == "SecureString"
    }

    fn to_json(&self, form: Form) -> Zeroizing<Vec<u8>> {
        fn optional(form: Form, value: Option<&str>) -> Option<Option<&str>> {
            if form == Form::Get { Some(value) } else { value.map(Some) }
        }
        let wire = Wire {
            arn: &self.arn,
            data_type: &self.data_type,
            last_modified_date: if form == Form::Get {
                Some(self.last_modified_date)
            } else {
                self.last_modified_date.map(Some)
            },
            name: &self.name,
            selector: optional(form, self.selector.as_deref()),
            source_result: optional(form, self.source_result.as_deref().map(String::as_str)),
            kind: &self.kind,
            value: &self.value,
            version: self.version,
        };
        // Sized so that serialisation never reallocates (a reallocation would leave a copy
        // behind in freed memory); escaping can at most sextuple a control character.
        let secret_len = (self.value.len() + self.source_result.as_ref().map_or(0, |s| s.len())) * 6;
        let mut buffer = Zeroizing::new(Vec::with_capacity(secret_len + self.arn.len() + self.name.len() + 320));
        if form == Form::Get {
            buffer.extend_from_slice(b"{\"Parameter\":");
        }
        // Serialising borrowed strings into a Vec cannot fail.
        let _ = serde_json::to_writer(&mut *buffer, &wire);
        if form == Form::Get {
            buffer.push(b'}');
        }
        buffer
    }

    /// The SDK protocol's `Parameter` object, in a buffer wiped when dropped (for assembling a
    /// `GetParameters` answer).
    pub fn sdk_object(&self) -> &[u8] {
        self.sdk_json.get_or_init(|| self.to_json(Form::Sdk))
    }

    /// The GET API's answer, `{"Parameter": {…}}`, as a body sharing the value's own
    /// (zeroizing) copy, made once per value.
    pub fn get_body(&self) -> bytes::Bytes {
        self.get_json.get_or_init(|| bytes::Bytes::from_owner(self.to_json(Form::Get))).clone()
    }

    /// The SDK protocol's `GetParameter` answer, `{"Parameter": {…}}`, in a zeroizing buffer.
    pub fn sdk_body(&self) -> Zeroizing<Vec<u8>> {
        let object = self.sdk_object();
        let mut buffer = Zeroizing::new(Vec::with_capacity(object.len() + 16));
        buffer.extend_from_slice(b"{\"Parameter\":");
        buffer.extend_from_slice(object);
        buffer.push(b'}');
        buffer
    }
}

/// One `GetParameter` with `session` for `version` of `name`, the value moved into zeroizing
/// memory.
///
/// # Errors
/// [`ReadError`], never containing a value.
pub(crate) async fn get(
    session: &Session,
    name: &str,
    version: &ParameterVersion,
    decrypt: bool,
) -> Result<ParameterValue, ReadError> {
    let client = session.ssm().ok_or_else(|| ReadError::Upstream { kind: "no Systems Manager client".into() })?;
    let output = client
        .get_parameter()
        .name(selected(name, version))
        .with_decryption(decrypt)
        .send()
        .await
        .map_err(|e| classify(&e))?;
    let parameter =
        output.parameter.ok_or_else(|| ReadError::Upstream { kind: "answer without a parameter".into() })?;
    Ok(ParameterValue::from_sdk(parameter))
}

/// The name `GetParameter` takes for `version` of `name` (`/app/db:3`).
pub fn selected(name: &str, version: &ParameterVersion) -> String {
    match version.selector() {
        Some(selector) => format!("{name}{selector}"),
        None => name.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn parameter(kind: ssm::types::ParameterType, selector: Option<&str>) -> Arc<ParameterValue> {
        Arc::new(ParameterValue::from_sdk(
            ssm::types::Parameter::builder()
                .name("/app/config")
                .r#type(kind)
                .value("va\"lue\n")
                .version(3)
                .set_selector(selector.map(str::to_owned))
                .last_modified_date(aws_smithy_types::DateTime::from_secs(1_764_000_000))
                .arn("arn:aws:ssm:us-east-1:123456789012:parameter/app/config")
                .data_type("text")
                .build(),
        ))
    }

    #[test]
    fn the_get_answer_has_every_field_and_the_sdk_answer_only_those_present() {
        let value = parameter(ssm::types::ParameterType::String, None);
        let get: serde_json::Value = serde_json::from_slice(&value.get_body()).expect("json");
        let fields: Vec<&str> = get["Parameter"].as_object().expect("object").keys().map(String::as_str).collect();
        assert_eq!(
            fields,
            ["ARN", "DataType", "LastModifiedDate", "Name", "Selector", "SourceResult", "Type", "Value", "Version"]
        );
        assert_eq!(
            (get["Parameter"]["Selector"].is_null(), get["Parameter"]["Value"].as_str()),
            (true, Some("va\"lue\n"))
        );
        assert_eq!(get["Parameter"]["LastModifiedDate"], 1_764_000_000.0);
        let sdk: serde_json::Value = serde_json::from_slice(&value.sdk_body()).expect("json");
        assert!(sdk["Parameter"].get("Selector").is_none() && sdk["Parameter"].get("SourceResult").is_none());
        assert_eq!(sdk["Parameter"]["Version"], 3);
        let (first, second) = (value.get_body(), value.get_body());
        assert_eq!(first.as_ptr(), second.as_ptr(), "one serialisation per value");
        let selected = parameter(ssm::types::ParameterType::SecureString, Some(":3"));
        let sdk: serde_json::Value = serde_json::from_slice(&selected.sdk_body()).expect("json");
        assert_eq!(sdk["Parameter"]["Selector"], ":3");
        assert!(selected.is_secure() && !value.is_secure());
        assert_eq!(
            format!("{selected:?}"),
            "ParameterValue { name: \"/app/config\", type: \"SecureString\", version: 3, .. }"
        );
    }

    #[test]
    fn a_secret_reads_as_a_secure_string_parameter_with_its_source() {
        let secret = SecretValue::from_parts(
            Some("arn:aws:secretsmanager:us-east-1:123456789012:secret:app/db-AbC123".into()),
            Some("app/db".into()),
            Some("v1".into()),
            Some("s3cret".into()),
            None,
            Some(vec!["AWSCURRENT".into()]),
            Some(aws_smithy_types::DateTime::from_secs(1_764_000_000)),
        );
        let reference = Arc::new(ParameterValue::from_secret("/aws/reference/secretsmanager/app/db", &secret));
        let get: serde_json::Value = serde_json::from_slice(&reference.get_body()).expect("json");
        let parameter = &get["Parameter"];
        assert_eq!(
            (parameter["Type"].as_str(), parameter["Value"].as_str(), parameter["Name"].as_str()),
            (Some("SecureString"), Some("s3cret"), Some("/aws/reference/secretsmanager/app/db"))
        );
        assert_eq!(
            parameter["ARN"],
            "arn:aws:ssm:us-east-1:123456789012:parameter/aws/reference/secretsmanager/app/db"
        );
        let source: serde_json::Value =
            serde_json::from_str(parameter["SourceResult"].as_str().expect("source")).expect("json");
        assert_eq!((source["SecretString"].as_str(), source["VersionId"].as_str()), (Some("s3cret"), Some("v1")));
        assert_eq!(selected("/app/db", &ParameterVersion::Label("prod".into())), "/app/db:prod");
    }
}
