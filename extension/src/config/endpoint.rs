//! The extension's own AWS endpoints (`AWS_ENDPOINT_URL`, `_STS`, `_IAM`), and the INIT check
//! that none points at the extension itself (it would call itself and fail every read).
//!
//! A URL is parsed with the `http` crate's `Uri` (user info, port and all), and its host is
//! read as a resolver would read it, without asking DNS: `localhost` in any case, with or
//! without the trailing dot, and `*.localhost` (RFC 6761); IPv4 in every form `inet_aton`
//! accepts (`127.1`, `0x7f.1`, `2130706433`); IPv6 `[::1]`, `[::]` and v4-mapped addresses.
//! Loopback (127/8, `::1`) and the unspecified address (`0.0.0.0`, `::`, which connects to the
//! host itself on Linux) count, on the effective port (the scheme's default when none is
//! given). A name that only DNS could map to loopback is not looked up: configuration is
//! parsed without I/O, and such an endpoint fails closed (every read answers 502).

use std::net::{Ipv4Addr, Ipv6Addr};

use http::Uri;

use super::{AwsEndpoints, ConfigError, Env};

pub(super) fn endpoints(env: &Env, port: u16) -> Result<AwsEndpoints, ConfigError> {
    let mut endpoints = AwsEndpoints::default();
    for (name, slot) in [("AWS_ENDPOINT_URL", 0), ("AWS_ENDPOINT_URL_STS", 1), ("AWS_ENDPOINT_URL_IAM", 2)] {
        let Some(url) = env.get(name).map(str::trim) else {
            continue;
        };
        let parsed = url.parse::<Uri>().ok().filter(|uri| {
            matches!(uri.scheme_str(), Some("http" | "https")) && uri.authority().is_some_and(|a| !a.host().is_empty())
        });
        let Some(uri) = parsed else {
            return Err(ConfigError::new(name, "must be an http:// or https:// URL."));
        };
        if points_at(&uri, port) {
            return Err(ConfigError::new(
                name,
                format!("points at this extension's own port {port}; the extension would call itself."),
            ));
        }
        match slot {
            0 => {
                endpoints.secrets_manager = Some(url.to_owned());
                endpoints.ssm = Some(url.to_owned());
                endpoints.sts.get_or_insert_with(|| url.to_owned());
                endpoints.iam.get_or_insert_with(|| url.to_owned());
            }
            1 => endpoints.sts = Some(url.to_owned()),
            _ => endpoints.iam = Some(url.to_owned()),
        }
    }
    Ok(endpoints)
}

/// Whether `uri` reaches this host on `port`.
fn points_at(uri: &Uri, port: u16) -> bool {
    let Some(authority) = uri.authority() else { return false };
    let default = if uri.scheme_str() == Some("https") { 443 } else { 80 };
    authority.port_u16().unwrap_or(default) == port && is_this_host(authority.host())
}

/// Whether `host` (as a URL carries it) names this host.
fn is_this_host(host: &str) -> bool {
    let host = host.strip_suffix('.').unwrap_or(host).to_ascii_lowercase();
    if host == "localhost" || host.ends_with(".localhost") {
        return true;
    }
    if let Some(v6) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        return v6
            .parse::<Ipv6Addr>()
            .is_ok_and(|ip| ip.is_loopback() || ip.is_unspecified() || ip.to_ipv4_mapped().is_some_and(is_this_v4));
    }
    inet_aton(&host).is_some_and(is_this_v4)
}

fn is_this_v4(ip: Ipv4Addr) -> bool {
    ip.is_loopback() || ip.is_unspecified()
}

/// An IPv4 address in any form `inet_aton(3)` takes: one to four parts, each decimal, octal
/// (leading `0`) or hexadecimal (`0x`), the last filling the bytes left.
fn inet_aton(text: &str) -> Option<Ipv4Addr> {
    let parts: Vec<&str> = text.split('.').collect();
    if parts.len() > 4 {
        return None;
    }
    let mut numbers = Vec::with_capacity(parts.len());
    for part in parts {
        let (digits, radix) = match part.strip_prefix("0x").or_else(|| part.strip_prefix("0X")) {
            Some(hex) => (hex, 16),
            None if part.len() > 1 && part.starts_with('0') => (&part[1..], 8),
            None => (part, 10),
        };
        if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        numbers.push(u32::from_str_radix(digits, radix).ok()?);
    }
    let (last, leading) = numbers.split_last()?;
    if leading.iter().any(|n| *n > 255) || u64::from(*last) >= 1u64 << (32 - 8 * leading.len()) {
        return None;
    }
    let value = leading.iter().enumerate().fold(*last, |value, (index, n)| value | n << (24 - 8 * index));
    Some(Ipv4Addr::from(value))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(url: &str) -> bool {
        points_at(&url.parse::<Uri>().expect("a URI"), 2773)
    }

    #[test]
    fn every_spelling_of_this_host_on_the_port_is_caught() {
        for url in [
            "http://127.0.0.1:2773",
            "http://localhost:2773/",
            "http://LOCALHOST:2773",
            "http://localhost.:2773",
            "http://api.localhost:2773",
            "http://127.1:2773",
            "http://127.0.1:2773",
            "http://0x7f.1:2773",
            "http://0177.0.0.1:2773",
            "http://2130706433:2773",
            "http://127.255.255.254:2773",
            "http://0.0.0.0:2773",
            "http://0:2773",
            "http://[::1]:2773",
            "http://[::]:2773",
            "http://[::ffff:127.0.0.1]:2773",
            "http://127.0.0.1:02773",
            "http://user@127.0.0.1:2773",
            "http://user:pass@localhost:2773/path?q=1",
        ] {
            assert!(at(url), "{url}");
        }
        for url in [
            "http://127.0.0.1:4566",
            "http://localhost:27730",
            "http://example.com:2773",
            "http://10.0.0.1:2773",
            "http://127.0.0.1.example.com:2773",
            "http://localhost.example:2773",
            "http://[::2]:2773",
            "http://256.0.0.1:2773",
            "http://127.0.0.1",
        ] {
            assert!(!at(url), "{url}");
        }
        assert!(points_at(&"http://localhost".parse::<Uri>().expect("a URI"), 80), "the scheme's default port");
        // Malformed authorities are refused as URLs, never a panic.
        for url in
            ["http://user@:2773", "http://@", "http://user@/", "http://:2773", "ftp://127.0.0.1:2773", "127.0.0.1:2773"]
        {
            let env = Env::from_pairs([("AWS_ENDPOINT_URL", url)]);
            assert!(endpoints(&env, 2773).is_err(), "{url}");
        }
        assert!(points_at(&"https://127.1".parse::<Uri>().expect("a URI"), 443));
    }

    #[test]
    fn inet_aton_reads_every_ipv4_form_and_nothing_else() {
        let cases = [
            ("127.0.0.1", Some([127, 0, 0, 1])),
            ("127.1", Some([127, 0, 0, 1])),
            ("10.1.2", Some([10, 1, 0, 2])),
            ("0x0A.0x1", Some([10, 0, 0, 1])),
            ("012.1", Some([10, 0, 0, 1])),
            ("1", Some([0, 0, 0, 1])),
            ("4294967295", Some([255, 255, 255, 255])),
            ("4294967296", None),
            ("1.2.3.4.5", None),
            ("1.256.1", None),
            ("1.2.65536", None),
            ("+1", None),
            ("08", None),
            ("", None),
            ("a.b", None),
        ];
        for (text, expected) in cases {
            assert_eq!(inet_aton(text), expected.map(Ipv4Addr::from), "{text}");
        }
    }
}
