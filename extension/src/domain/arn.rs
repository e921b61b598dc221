//! The scoped role's ARN: the role every session assumes, and the account and partition that
//! secrets configured by name are taken to live in.
//! See <https://docs.aws.amazon.com/IAM/latest/UserGuide/reference_identifiers.html#identifiers-arns>.

/// The IAM role that every session assumes, e.g. `arn:aws:iam::123456789012:role/app-secrets`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoleArn {
    arn: String,
    partition: String,
    account_id: String,
}

impl RoleArn {
    /// Parses `arn:PARTITION:iam::ACCOUNT:role/[PATH/]NAME`.
    ///
    /// # Errors
    /// A sentence saying which part is malformed.
    pub fn parse(value: &str) -> Result<Self, String> {
        let parts: Vec<&str> = value.splitn(6, ':').collect();
        let [arn, partition, service, region, account, resource] = parts.as_slice() else {
            return Err("must be an IAM role ARN of the form arn:aws:iam::ACCOUNT:role/NAME.".into());
        };
        if *arn != "arn" || !matches!(*partition, "aws" | "aws-cn" | "aws-us-gov") {
            return Err("must start with arn:aws:, arn:aws-cn: or arn:aws-us-gov:.".into());
        }
        if *service != "iam" || !region.is_empty() {
            return Err("must name an IAM role (arn:PARTITION:iam::ACCOUNT:role/NAME).".into());
        }
        if !is_account_id(account) {
            return Err("must carry a 12-digit account id.".into());
        }
        let Some(path_and_name) = resource.strip_prefix("role/") else {
            return Err("must name a role (its resource part must start with role/).".into());
        };
        let name = path_and_name.rsplit('/').next().unwrap_or_default();
        let name_ok = !name.is_empty()
            && name.len() <= 64
            && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"+=,.@_-".contains(&b));
        let path_ok = path_and_name.len() <= 512 + 64
            && path_and_name.bytes().all(|b| b.is_ascii_graphic() && b != b'*' && b != b'?');
        if !name_ok || !path_ok {
            return Err("must end in a valid role name (1 to 64 of A-Z a-z 0-9 +=,.@_-).".into());
        }
        Ok(Self { arn: value.to_owned(), partition: (*partition).to_owned(), account_id: (*account).to_owned() })
    }

    /// The whole ARN.
    pub fn as_str(&self) -> &str {
        &self.arn
    }

    /// `aws`, `aws-cn` or `aws-us-gov`.
    pub fn partition(&self) -> &str {
        &self.partition
    }

    /// The role's account: secrets configured by name are taken to live in it.
    pub fn account_id(&self) -> &str {
        &self.account_id
    }

    /// The role's name (`…:role/path/NAME` → `NAME`), as IAM's role APIs take it.
    pub fn name(&self) -> &str {
        self.arn.rsplit('/').next().unwrap_or(&self.arn)
    }
}

/// Whether `text` is a 12-digit AWS account id.
pub fn is_account_id(text: &str) -> bool {
    text.len() == 12 && text.bytes().all(|b| b.is_ascii_digit())
}

/// Whether `text` is a region name's shape (`us-east-1`): lower-case letters, digits, `-`.
pub fn is_region(text: &str) -> bool {
    !text.is_empty() && text.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_role_arn_names_its_partition_account_and_role() {
        let role = RoleArn::parse("arn:aws-cn:iam::123456789012:role/path/to/scoped").expect("valid");
        assert_eq!((role.partition(), role.account_id(), role.name()), ("aws-cn", "123456789012", "scoped"));
        for invalid in [
            "arn:aws:iam::123456789012:user/x",
            "arn:aws:iam:us-east-1:123456789012:role/x",
            "arn:aws:iam::12345678901:role/x",
            "arn:aws:iam::123456789012:role/",
            "arn:aws:iam::123456789012:role/a*b",
            "arn:evil:iam::123456789012:role/x",
        ] {
            assert!(RoleArn::parse(invalid).is_err(), "{invalid}");
        }
        assert!(is_region("eu-west-1") && !is_region("us east") && !is_region(""));
    }
}
