//! Connection strings: `scheme://[user:pass@]host[:port][,host2[:port]...][?key=value&...]`, and the bare
//! `server_address` form `host:port`.
//!
//! | scheme | TLS | default port |
//! |---|---|---|
//! | `grpc` | on unless `disableTls=true` | 443 with TLS, 80 without |
//! | `https` | on (`disableTls=true` is an error) | 443 |
//! | `http` | off (`disableTls=false` is an error) | 80 |
//! | `chronicle` | on unless `disableTls=true` | 35000 (kept so that connection strings of the Chronicle client, which this module learned from, work unchanged) |
//!
//! Query parameters (names are case-sensitive, each at most once, values percent-decoded):
//! `disableTls` (`true`/`false`), `apiKey`, `authPort` (port of the OAuth2 token endpoint, default 8080),
//! `caFile` (PEM file of the trust anchors to use instead of the system's), `certFile` and `keyFile` (PEM client
//! certificate chain and its private key, for mutual TLS; both or neither), `tlsServerName` (name the certificate
//! must carry, default the first host). `user:pass` and `apiKey` together are an error. Secrets never appear in
//! `Display` or `Debug`.

use std::collections::hash_map::RandomState;
use std::fmt;
use std::hash::{BuildHasher, Hash, Hasher};
use std::net::Ipv6Addr;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::OnceLock;

/// A secret string (password, api key, token). `Debug` and `Display` print `***`.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Secret(String);

impl Secret {
    /// Wrap a secret.
    pub fn new(s: impl Into<String>) -> Self {
        Secret(s.into())
    }
    /// The secret itself; keep it out of logs.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// One `host:port`. IPv6 hosts keep their brackets (`[::1]`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct HostPort {
    /// Host name or address.
    pub host: String,
    /// Port.
    pub port: u16,
}

impl fmt::Display for HostPort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.host, self.port)
    }
}

/// Username and password for the OAuth2 client-credentials grant.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Credentials {
    /// The client id.
    pub username: String,
    /// The client secret.
    pub password: Secret,
}

/// A parsed connection string.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Target {
    /// The scheme as written, lower-cased.
    pub scheme: String,
    /// Hosts in the order they are tried; never empty.
    pub hosts: Vec<HostPort>,
    /// Whether TLS is used.
    pub tls: bool,
    /// OAuth2 client credentials, if any.
    pub credentials: Option<Credentials>,
    /// An api key sent as the `api-key` header, if any.
    pub api_key: Option<Secret>,
    /// Port of the OAuth2 token endpoint on the first host.
    pub auth_port: Option<u16>,
    /// Trust anchors (PEM) used instead of the system's.
    pub ca_file: Option<PathBuf>,
    /// Client certificate chain (PEM), for mutual TLS; set together with `key_file`.
    pub cert_file: Option<PathBuf>,
    /// The client certificate's private key (PEM).
    pub key_file: Option<PathBuf>,
    /// Name the server certificate must carry, when it is not the first host.
    pub tls_server_name: Option<String>,
}

/// Why a connection string was refused. Never carries a secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TargetError {
    /// Nothing to parse.
    #[error("connection string is empty")]
    Empty,
    /// No `scheme://`.
    #[error("connection string has no `scheme://` prefix")]
    MissingScheme,
    /// A scheme this crate does not know.
    #[error("unsupported scheme `{scheme}` (expected chronicle, grpc, http or https)")]
    UnsupportedScheme {
        /// The scheme.
        scheme: String,
    },
    /// No host at all, or an empty entry in the host list.
    #[error("missing host (host entry {index} is empty)")]
    MissingHost {
        /// 0-based position in the host list.
        index: usize,
    },
    /// A host with characters a host name cannot have.
    #[error("invalid host `{host}`")]
    InvalidHost {
        /// The host.
        host: String,
    },
    /// A port that is not a number in 1..=65535.
    #[error("invalid port `{port}` for host `{host}`")]
    InvalidPort {
        /// The host.
        host: String,
        /// The port text.
        port: String,
    },
    /// The `user:pass@` part is malformed.
    #[error("invalid user info: {reason}")]
    InvalidUserInfo {
        /// What is wrong (never the secret).
        reason: &'static str,
    },
    /// A query parameter this crate does not know.
    #[error("unknown query parameter `{name}`")]
    UnknownParameter {
        /// The parameter.
        name: String,
    },
    /// A query parameter given twice.
    #[error("query parameter `{name}` given more than once")]
    DuplicateParameter {
        /// The parameter.
        name: String,
    },
    /// A query parameter with a bad value. Secret parameters never show their value.
    #[error("invalid value for `{name}`: {reason}")]
    InvalidParameter {
        /// The parameter.
        name: String,
        /// What is wrong.
        reason: String,
    },
    /// `user:pass@` and `apiKey` together.
    #[error("credentials (user:pass@) and apiKey are mutually exclusive")]
    CredentialsWithApiKey,
    /// TLS setting contradicts the scheme.
    #[error("scheme `{scheme}` contradicts disableTls={disable_tls}")]
    TlsConflict {
        /// The scheme.
        scheme: String,
        /// The value given.
        disable_tls: bool,
    },
}

const KNOWN_PARAMS: [&str; 7] = [
    "disableTls",
    "apiKey",
    "authPort",
    "caFile",
    "certFile",
    "keyFile",
    "tlsServerName",
];

impl Target {
    /// A bare `server_address`: `host:port` (or `host`), TLS on, default port 35000 (the Chronicle client's
    /// `server_address` option, which this form is compatible with).
    pub fn from_server_address(address: &str) -> Result<Target, TargetError> {
        if address.contains("://") || address.contains('@') || address.contains('?') {
            return Err(TargetError::InvalidHost {
                host: redact_userinfo(address),
            });
        }
        format!("chronicle://{address}").parse()
    }

    /// The default port of the scheme.
    pub fn default_port(scheme: &str, tls: bool) -> Option<u16> {
        match scheme {
            "chronicle" => Some(35000),
            "grpc" => Some(if tls { 443 } else { 80 }),
            "https" => Some(443),
            "http" => Some(80),
            _ => None,
        }
    }

    /// `http://host:port` or `https://host:port` for the first host: the URI tonic's endpoint is built from.
    pub fn endpoint_uri(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://{}", self.hosts[0])
    }

    /// The pool key: normalised `scheme://host:port[,host:port]` plus a hash of the TLS and auth settings, so
    /// two strings for the same server with different credentials get different connections. The hash uses a
    /// per-process random key: it cannot be matched against a password outside this process.
    pub fn pool_key(&self) -> String {
        static KEY: OnceLock<RandomState> = OnceLock::new();
        let mut h = KEY.get_or_init(RandomState::new).build_hasher();
        self.tls.hash(&mut h);
        self.credentials.hash(&mut h);
        self.api_key.hash(&mut h);
        self.auth_port.hash(&mut h);
        self.ca_file.hash(&mut h);
        self.cert_file.hash(&mut h);
        self.key_file.hash(&mut h);
        self.tls_server_name.hash(&mut h);
        let hosts: Vec<String> = self.hosts.iter().map(|h| h.to_string()).collect();
        format!("{}://{}#{:016x}", self.scheme, hosts.join(","), h.finish())
    }
}

impl FromStr for Target {
    type Err = TargetError;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        let input = input.trim();
        if input.is_empty() {
            return Err(TargetError::Empty);
        }
        let (scheme, rest) = input.split_once("://").ok_or(TargetError::MissingScheme)?;
        let scheme = scheme.to_ascii_lowercase();
        if Target::default_port(&scheme, true).is_none() {
            return Err(TargetError::UnsupportedScheme {
                scheme: truncate(&scheme),
            });
        }
        let (authority, query) = match rest.split_once('?') {
            Some((a, q)) => (a, Some(q)),
            None => (rest, None),
        };
        let authority = authority.strip_suffix('/').unwrap_or(authority);
        // The last '@' ends the user info: a password may contain '@' only percent-encoded, but be lenient.
        let (userinfo, hosts_part) = match authority.rfind('@') {
            Some(i) => (Some(&authority[..i]), &authority[i + 1..]),
            None => (None, authority),
        };

        let mut disable_tls = None;
        let mut api_key = None;
        let mut auth_port = None;
        let mut ca_file = None;
        let mut cert_file = None;
        let mut key_file = None;
        let mut tls_server_name = None;
        if let Some(query) = query {
            let mut seen = Vec::new();
            for pair in query.split('&').filter(|p| !p.is_empty()) {
                let (raw_name, raw_value) = pair.split_once('=').unwrap_or((pair, ""));
                let name = percent_decode(raw_name).map_err(|_| TargetError::UnknownParameter {
                    name: truncate(raw_name),
                })?;
                if !KNOWN_PARAMS.contains(&name.as_str()) {
                    return Err(TargetError::UnknownParameter {
                        name: truncate(&name),
                    });
                }
                if seen.contains(&name) {
                    return Err(TargetError::DuplicateParameter { name });
                }
                seen.push(name.clone());
                let value = percent_decode(raw_value).map_err(|reason| TargetError::InvalidParameter {
                    name: name.clone(),
                    reason: reason.to_string(),
                })?;
                let invalid = |reason: String| TargetError::InvalidParameter {
                    name: name.clone(),
                    reason,
                };
                match name.as_str() {
                    "disableTls" => {
                        disable_tls = Some(match value.to_ascii_lowercase().as_str() {
                            "true" | "1" => true,
                            "false" | "0" => false,
                            _ => return Err(invalid(format!("`{}` is not true or false", truncate(&value)))),
                        })
                    }
                    "apiKey" => {
                        if value.is_empty() {
                            return Err(invalid("is empty".into()));
                        }
                        api_key = Some(Secret::new(value));
                    }
                    "authPort" => {
                        auth_port = Some(match value.parse::<u16>() {
                            Ok(p) if p != 0 => p,
                            _ => return Err(invalid(format!("`{}` is not a port", truncate(&value)))),
                        })
                    }
                    "caFile" | "certFile" | "keyFile" => {
                        if value.is_empty() {
                            return Err(invalid("is empty".into()));
                        }
                        let slot = match name.as_str() {
                            "caFile" => &mut ca_file,
                            "certFile" => &mut cert_file,
                            _ => &mut key_file,
                        };
                        *slot = Some(PathBuf::from(value));
                    }
                    "tlsServerName" => {
                        if !valid_host_name(&value) {
                            return Err(invalid(format!("`{}` is not a host name", truncate(&value))));
                        }
                        tls_server_name = Some(value);
                    }
                    _ => unreachable!("checked against KNOWN_PARAMS"),
                }
            }
        }

        if cert_file.is_some() != key_file.is_some() {
            return Err(TargetError::InvalidParameter {
                name: if cert_file.is_some() {
                    "keyFile"
                } else {
                    "certFile"
                }
                .into(),
                reason: "certFile and keyFile go together".into(),
            });
        }

        let tls = match (scheme.as_str(), disable_tls) {
            ("https", Some(true)) | ("http", Some(false)) => {
                return Err(TargetError::TlsConflict {
                    scheme: scheme.clone(),
                    disable_tls: disable_tls.unwrap_or_default(),
                })
            }
            ("http", _) => false,
            ("https", _) => true,
            (_, d) => !d.unwrap_or(false),
        };
        let default_port = Target::default_port(&scheme, tls).expect("scheme checked above");

        let credentials = match userinfo {
            None => None,
            Some(info) => {
                let (user, pass) = info.split_once(':').ok_or(TargetError::InvalidUserInfo {
                    reason: "expected user:password",
                })?;
                let user = percent_decode(user).map_err(|_| TargetError::InvalidUserInfo {
                    reason: "bad percent-encoding in the user name",
                })?;
                let pass = percent_decode(pass).map_err(|_| TargetError::InvalidUserInfo {
                    reason: "bad percent-encoding in the password",
                })?;
                if user.is_empty() {
                    return Err(TargetError::InvalidUserInfo {
                        reason: "empty user name",
                    });
                }
                if pass.is_empty() {
                    return Err(TargetError::InvalidUserInfo {
                        reason: "empty password",
                    });
                }
                Some(Credentials {
                    username: user,
                    password: Secret::new(pass),
                })
            }
        };
        if credentials.is_some() && api_key.is_some() {
            return Err(TargetError::CredentialsWithApiKey);
        }

        let mut hosts = Vec::new();
        for (index, entry) in hosts_part.split(',').enumerate() {
            hosts.push(parse_host_port(entry, index, default_port)?);
        }

        Ok(Target {
            scheme,
            hosts,
            tls,
            credentials,
            api_key,
            auth_port,
            ca_file,
            cert_file,
            key_file,
            tls_server_name,
        })
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}://", self.scheme)?;
        if let Some(c) = &self.credentials {
            write!(f, "{}:***@", c.username)?;
        }
        for (i, h) in self.hosts.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{h}")?;
        }
        let mut params = Vec::new();
        if !self.tls && self.scheme != "http" {
            params.push("disableTls=true".to_string());
        }
        if self.api_key.is_some() {
            params.push("apiKey=***".to_string());
        }
        if let Some(p) = self.auth_port {
            params.push(format!("authPort={p}"));
        }
        for (name, file) in [
            ("caFile", &self.ca_file),
            ("certFile", &self.cert_file),
            ("keyFile", &self.key_file),
        ] {
            if let Some(p) = file {
                params.push(format!("{name}={}", p.display()));
            }
        }
        if let Some(n) = &self.tls_server_name {
            params.push(format!("tlsServerName={n}"));
        }
        if !params.is_empty() {
            write!(f, "?{}", params.join("&"))?;
        }
        Ok(())
    }
}

fn parse_host_port(entry: &str, index: usize, default_port: u16) -> Result<HostPort, TargetError> {
    if entry.is_empty() {
        return Err(TargetError::MissingHost { index });
    }
    let (host, port) = if let Some(rest) = entry.strip_prefix('[') {
        let (addr, after) = rest.split_once(']').ok_or_else(|| TargetError::InvalidHost {
            host: truncate(entry),
        })?;
        if addr.parse::<Ipv6Addr>().is_err() {
            return Err(TargetError::InvalidHost {
                host: truncate(entry),
            });
        }
        let host = format!("[{addr}]");
        match after {
            "" => (host, None),
            p if p.starts_with(':') => (host, Some(&p[1..])),
            _ => {
                return Err(TargetError::InvalidHost {
                    host: truncate(entry),
                })
            }
        }
    } else {
        match entry.split_once(':') {
            Some((h, p)) => (h.to_string(), Some(p)),
            None => (entry.to_string(), None),
        }
    };
    if host.is_empty() {
        return Err(TargetError::MissingHost { index });
    }
    if !host.starts_with('[') && !valid_host_name(&host) {
        return Err(TargetError::InvalidHost {
            host: truncate(&host),
        });
    }
    let port = match port {
        None => default_port,
        Some(p) => match p.parse::<u16>() {
            Ok(n) if n != 0 && p.bytes().all(|b| b.is_ascii_digit()) => n,
            _ => {
                return Err(TargetError::InvalidPort {
                    host: truncate(&host),
                    port: truncate(p),
                })
            }
        },
    };
    Ok(HostPort {
        host: host.to_ascii_lowercase(),
        port,
    })
}

fn valid_host_name(h: &str) -> bool {
    !h.is_empty()
        && h.len() <= 253
        && h.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-' || b == b'_')
        && !h.starts_with('.')
        && !h.starts_with('-')
}

/// Strict percent-decoding (`+` stays `+`): a malformed escape or a non-UTF-8 result is an error. The decoding is
/// `percent-encoding`'s (already in the tree through tonic); it passes malformed escapes through unchanged, so
/// they are refused first.
fn percent_decode(s: &str) -> Result<String, &'static str> {
    let bytes = s.as_bytes();
    for (i, _) in bytes.iter().enumerate().filter(|(_, b)| **b == b'%') {
        match bytes.get(i + 1..i + 3) {
            None => return Err("truncated percent escape"),
            Some(hex) if !hex.iter().all(u8::is_ascii_hexdigit) => return Err("bad percent escape"),
            Some(_) => {}
        }
    }
    percent_encoding::percent_decode(bytes)
        .decode_utf8()
        .map(|c| c.into_owned())
        .map_err(|_| "percent-decoded value is not UTF-8")
}

/// Keep error messages short whatever the input.
fn truncate(s: &str) -> String {
    const MAX: usize = 64;
    if s.chars().count() <= MAX {
        s.to_string()
    } else {
        let mut t: String = s.chars().take(MAX).collect();
        t.push('…');
        t
    }
}

fn redact_userinfo(s: &str) -> String {
    match s.rfind('@') {
        Some(i) => truncate(&format!("***@{}", &s[i + 1..])),
        None => truncate(s),
    }
}
