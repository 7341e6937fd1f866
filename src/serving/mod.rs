//! What every server arbor runs shares — the tunnel service, the introspection server and its Prometheus
//! listener: TLS from PEM files, api keys (tokens) checked on every call and never shown, gRPC reflection, and a
//! loopback default.
//!
//! Each server binds `127.0.0.1` unless told otherwise and warns when it listens beyond loopback without TLS.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tonic::codegen::http;
use tonic::transport::{Identity, ServerTlsConfig};
use tonic::{Request, Status};

mod grpc;
mod supervised;

pub use grpc::ServingFailed;
pub(crate) use grpc::{BoundGrpc, BringUpError, GrpcServing};
pub use supervised::ServerExited;
pub(crate) use supervised::{serve_child_spec, Serving, StartServer};

/// Certificate chain and private key, PEM files.
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "tree", derive(serde::Deserialize), serde(deny_unknown_fields))]
pub struct TlsFiles {
    /// The certificate chain.
    pub cert: PathBuf,
    /// The private key.
    pub key: PathBuf,
}

/// Why a server's TLS or keys could not be set up. Never carries a key.
#[derive(Debug, thiserror::Error)]
pub enum SecurityError {
    /// A TLS file could not be read, or the certificate or key was refused.
    #[error("TLS setup failed ({path})")]
    Tls {
        /// The file, or both files when the pair was refused.
        path: String,
        /// Why.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The certificate to serve is a CA's (basic constraints `cA`): clients (webpki) refuse it as a server's.
    #[error("{path}: this certificate is a CA; serve a leaf signed by it (clients refuse a CA as the server's certificate)")]
    CaAsLeaf {
        /// The certificate file.
        path: String,
    },
    /// The api key (token) setting is invalid.
    #[error("invalid api keys{}: {reason}", path.as_ref().map(|p| format!(" in {}", p.display())).unwrap_or_default())]
    ApiKeys {
        /// The key file, if keys came from one.
        path: Option<PathBuf>,
        /// Why (never the key itself).
        reason: String,
    },
}

/// What an api key may do on the tunnel service. The introspection server ignores roles: any of its keys
/// may call anything there.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// CreateTunnel, DeleteTunnel, SealChannel (and everything read-only).
    Admin,
    /// Append (and DescribeTunnel, ListTunnels, GetLimits).
    Produce,
    /// ConnectTunnel and the session calls: Heartbeat, GetCheckpoint, ReadRecords, Checkpoint, Shutdown (and
    /// DescribeTunnel, ListTunnels, GetLimits).
    Consume,
}

impl Role {
    /// Every role, as a key line without roles grants.
    pub const ALL: [Role; 3] = [Role::Admin, Role::Produce, Role::Consume];

    /// The role's name in key files and messages.
    pub fn name(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Produce => "produce",
            Role::Consume => "consume",
        }
    }

    fn bit(self) -> u8 {
        1 << self as u8
    }

    /// The role a key file names, if any.
    pub fn from_name(name: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|r| r.name() == name)
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The roles the key of a request holds, as the interceptor finds them; put in the request's extensions for
/// the service to check against each call's role.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Granted(u8);

impl Granted {
    /// Every role: the grant when the server requires no key.
    pub const ALL: Granted = Granted(0b111);

    /// Whether `role` is granted.
    pub fn allows(self, role: Role) -> bool {
        self.0 & role.bit() != 0
    }

    fn of(roles: &[Role]) -> Granted {
        Granted(roles.iter().fold(0, |bits, r| bits | r.bit()))
    }
}

/// One accepted key: its SHA-256 digest (the key itself is not kept) and its roles.
#[derive(Clone, PartialEq, Eq)]
struct AcceptedKey {
    digest: [u8; 32],
    roles: Granted,
}

fn sha256(bytes: &[u8]) -> [u8; 32] {
    let mut digest = [0u8; 32];
    digest.copy_from_slice(ring::digest::digest(&ring::digest::SHA256, bytes).as_ref());
    digest
}

/// The api keys (tokens) a server accepts, as `api-key: <key>` or `authorization: Bearer <key>`, each with its
/// roles. Debug never shows them.
#[derive(Clone, PartialEq, Eq)]
pub struct ApiKeys(Arc<Vec<AcceptedKey>>);

impl fmt::Debug for ApiKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ApiKeys({} redacted)", self.0.len())
    }
}

impl ApiKeys {
    /// Accepts any of `keys` (at least one, none empty), each with every role.
    ///
    /// # Errors
    /// [`SecurityError::ApiKeys`] when there is no key, or one is empty or not a valid header value.
    pub fn new(keys: Vec<String>) -> Result<ApiKeys, SecurityError> {
        ApiKeys::with_roles(keys.into_iter().map(|k| (k, Role::ALL.to_vec())).collect())
    }

    /// Accepts any of `keys`, each with its roles (an empty list: every role).
    ///
    /// # Errors
    /// [`SecurityError::ApiKeys`] when there is no key, or one is empty or not a valid header value.
    pub fn with_roles(keys: Vec<(String, Vec<Role>)>) -> Result<ApiKeys, SecurityError> {
        if keys.is_empty() {
            return Err(SecurityError::ApiKeys {
                path: None,
                reason: "no key given".into(),
            });
        }
        let mut accepted = Vec::with_capacity(keys.len());
        for (i, (key, roles)) in keys.iter().enumerate() {
            if key.is_empty() || !key.bytes().all(|b| (0x21..0x7f).contains(&b)) {
                return Err(SecurityError::ApiKeys {
                    path: None,
                    reason: format!("key {} is empty or has characters a header cannot carry", i + 1),
                });
            }
            let roles = if roles.is_empty() { &Role::ALL[..] } else { roles };
            accepted.push(AcceptedKey {
                digest: sha256(key.as_bytes()),
                roles: Granted::of(roles),
            });
        }
        Ok(ApiKeys(Arc::new(accepted)))
    }

    /// Reads the keys from a file: one per line, `<key> [role ...]` (the key ends at the first space), roles
    /// among `admin`, `produce` and `consume` separated by spaces or commas; a line without roles grants every role (so files of bare keys
    /// keep their meaning). Blank lines and `#` comments are ignored; several keys allow rotation.
    ///
    /// # Errors
    /// [`SecurityError::ApiKeys`] naming the file, and the line of an unknown role (never the key).
    pub fn from_file(path: &Path) -> Result<ApiKeys, SecurityError> {
        let invalid = |reason: String| SecurityError::ApiKeys {
            path: Some(path.to_path_buf()),
            reason,
        };
        let text = std::fs::read_to_string(path).map_err(|e| invalid(e.to_string()))?;
        let mut keys = Vec::new();
        for (number, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            // The key ends at the first space (a key may contain commas, as before roles existed).
            let (key, roles) = line.split_once(char::is_whitespace).unwrap_or((line, ""));
            let key = key.to_string();
            let roles = roles
                .split(|c: char| c.is_whitespace() || c == ',')
                .filter(|w| !w.is_empty())
                .map(|word| {
                    Role::from_name(word).ok_or_else(|| {
                        invalid(format!(
                            "line {}: unknown role {word:?} (roles: admin, produce, consume)",
                            number + 1
                        ))
                    })
                })
                .collect::<Result<Vec<Role>, _>>()?;
            keys.push((key, roles));
        }
        ApiKeys::with_roles(keys).map_err(|e| match e {
            SecurityError::ApiKeys { reason, .. } => invalid(reason),
            other => other,
        })
    }

    /// The keys of both.
    #[cfg(feature = "introspection")]
    pub(crate) fn union(&self, other: &ApiKeys) -> ApiKeys {
        ApiKeys(Arc::new(self.0.iter().chain(other.0.iter()).cloned().collect()))
    }

    /// The roles of the presented key, if it is one of ours.
    ///
    /// Constant time: the presented key is hashed once and its digest compared with every key's digest with
    /// `subtle` (no early exit, no branch on a byte), so the time taken depends neither on how much of a key a
    /// guess got right nor on the keys' lengths.
    fn accepts(&self, presented: &[u8]) -> Option<Granted> {
        use subtle::{ConditionallySelectable, ConstantTimeEq};
        let presented = sha256(presented);
        let mut roles = 0u8;
        let mut found = subtle::Choice::from(0);
        for key in self.0.iter() {
            let same = key.digest.ct_eq(&presented);
            roles |= u8::conditional_select(&0, &key.roles.0, same);
            found |= same;
        }
        bool::from(found).then_some(Granted(roles))
    }

    /// Checks the `api-key` or `authorization: Bearer` header of a request (gRPC metadata or plain HTTP) and
    /// answers the key's roles.
    ///
    /// # Errors
    /// Why the request is refused, in words that show no key.
    pub(crate) fn verify(&self, headers: &http::HeaderMap) -> Result<Granted, &'static str> {
        let api_key = headers.get("api-key").map(|v| v.as_bytes());
        let bearer = headers
            .get("authorization")
            .and_then(|v| v.as_bytes().strip_prefix(b"Bearer "));
        match api_key.or(bearer) {
            Some(presented) => self.accepts(presented).ok_or("the api key is not accepted"),
            None => Err("an api key is required (`api-key` or `authorization: Bearer` metadata)"),
        }
    }

    /// The interceptor check: `Ok` if the request carries an accepted key (its roles put in the request's
    /// extensions as [`Granted`]), else UNAUTHENTICATED (with the tunnel protocol's FATAL kind in the
    /// metadata, which other clients ignore).
    #[allow(clippy::result_large_err)]
    pub(crate) fn check(&self, mut request: Request<()>) -> Result<Request<()>, Status> {
        match self.verify(request.metadata().as_ref()) {
            Ok(granted) => {
                request.extensions_mut().insert(granted);
                Ok(request)
            }
            Err(why) => Err(arbor_proto::tunnel::error::status(
                tonic::Code::Unauthenticated,
                why,
                None,
            )),
        }
    }
}

fn read_pem(path: &Path) -> Result<Vec<u8>, SecurityError> {
    std::fs::read(path).map_err(|e| SecurityError::Tls {
        path: path.display().to_string(),
        source: Box::new(e),
    })
}

/// Reads the certificate chain to serve, refusing one whose first (leaf) certificate is a CA's.
fn read_leaf_pem(path: &Path) -> Result<Vec<u8>, SecurityError> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::CertificateDer;
    let pem = read_pem(path)?;
    if let Some(Ok(leaf)) = CertificateDer::pem_slice_iter(&pem).next() {
        if is_ca(&leaf) {
            return Err(SecurityError::CaAsLeaf {
                path: path.display().to_string(),
            });
        }
    }
    Ok(pem)
}

/// Whether a DER certificate's basic constraints extension (OID 2.5.29.19) says `cA: TRUE`.
fn is_ca(der: &[u8]) -> bool {
    const BASIC_CONSTRAINTS: [u8; 5] = [0x06, 0x03, 0x55, 0x1d, 0x13];
    let Some(at) = der.windows(5).position(|w| w == BASIC_CONSTRAINTS) else {
        return false;
    };
    let mut rest = &der[at + 5..];
    if rest.starts_with(&[0x01, 0x01]) {
        rest = rest.get(3..).unwrap_or_default(); // critical: BOOLEAN
    }
    // OCTET STRING { SEQUENCE { cA BOOLEAN DEFAULT FALSE, pathLenConstraint INTEGER OPTIONAL } }: short lengths.
    matches!(rest, [0x04, _, 0x30, _, 0x01, 0x01, ca, ..] if *ca != 0)
}

/// tonic's TLS settings for a gRPC server, from the PEM files.
///
/// # Errors
/// [`SecurityError::Tls`] naming the file that cannot be read; [`SecurityError::CaAsLeaf`].
fn grpc_tls(tls: &TlsFiles) -> Result<ServerTlsConfig, SecurityError> {
    let identity = Identity::from_pem(read_leaf_pem(&tls.cert)?, read_pem(&tls.key)?);
    Ok(ServerTlsConfig::new().identity(identity))
}

/// A rustls server configuration for a plain HTTP/1.1 listener (ALPN `http/1.1`), from the PEM files.
///
/// # Errors
/// [`SecurityError::Tls`] naming the file that cannot be read or parsed, or both when rustls refuses the pair.
#[cfg(feature = "introspection")]
pub(crate) fn http1_tls(tls: &TlsFiles) -> Result<rustls::ServerConfig, SecurityError> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let refused = |path: &Path, source: Box<dyn std::error::Error + Send + Sync>| SecurityError::Tls {
        path: path.display().to_string(),
        source,
    };
    let certs = CertificateDer::pem_slice_iter(&read_leaf_pem(&tls.cert)?)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| refused(&tls.cert, Box::new(e)))?;
    if certs.is_empty() {
        return Err(refused(&tls.cert, "holds no PEM certificate".into()));
    }
    let key =
        PrivateKeyDer::from_pem_slice(&read_pem(&tls.key)?).map_err(|e| refused(&tls.key, Box::new(e)))?;
    let provider = arbor_actors::connection::crypto_provider();
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .and_then(|b| b.with_no_client_auth().with_single_cert(certs, key))
        .map_err(|e| SecurityError::Tls {
            path: format!("{} / {}", tls.cert.display(), tls.key.display()),
            source: Box::new(e),
        })?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// Logs a warning when `addr` is beyond loopback and nothing encrypts the traffic.
pub(crate) fn warn_if_exposed(what: &str, addr: SocketAddr, tls: bool) {
    if !tls && !addr.ip().is_loopback() {
        tracing::warn!(%addr, "{what} listening beyond loopback without TLS");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(key: &str) -> http::HeaderMap {
        let mut headers = http::HeaderMap::new();
        headers.insert("api-key", key.parse().unwrap());
        headers
    }

    #[test]
    fn a_key_grants_its_roles_and_a_bare_key_every_role() {
        let keys = ApiKeys::with_roles(vec![
            ("k-admin".into(), vec![Role::Admin]),
            ("k-both".into(), vec![Role::Produce, Role::Consume]),
            ("k-bare".into(), vec![]),
        ])
        .unwrap();
        let admin = keys.verify(&headers("k-admin")).unwrap();
        assert!(admin.allows(Role::Admin) && !admin.allows(Role::Produce) && !admin.allows(Role::Consume));
        let both = keys.verify(&headers("k-both")).unwrap();
        assert!(!both.allows(Role::Admin) && both.allows(Role::Produce) && both.allows(Role::Consume));
        assert_eq!(keys.verify(&headers("k-bare")), Ok(Granted::ALL));
        for wrong in ["k-admi", "k-admin2", "K-ADMIN", "k"] {
            assert!(keys.verify(&headers(wrong)).is_err(), "{wrong}");
        }
        assert!(keys.verify(&http::HeaderMap::new()).is_err());
        assert_eq!(
            ApiKeys::new(vec!["k".into()]).unwrap().verify(&headers("k")),
            Ok(Granted::ALL)
        );
        assert_eq!(format!("{keys:?}"), "ApiKeys(3 redacted)");
    }

    #[test]
    fn role_names_round_trip() {
        for role in Role::ALL {
            assert_eq!(Role::from_name(role.name()), Some(role));
        }
        assert_eq!(Role::from_name("root"), None);
    }
}
