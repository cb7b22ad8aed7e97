//! Access control: who is calling, and what they may do. Design: `docs/access.md`.
//!
//! Credentials (kept in the registry, secrets only as argon2id hashes):
//! - people: HTTP Basic, user name and password;
//! - integrations: API keys `msk_<id>_<secret>`, sent as `Authorization: Bearer <key>`;
//! - gateways: device keys `msd_<id>_<secret>`, bound to one device id, sent the same way.
//!
//! Scopes: `admin` (everything, and credentials), `read` (every GET), `write` (writes, deletes,
//! commands), `device` (a gateway: uploads under its own device id, its own registration, its
//! own commands). A verified secret is remembered in memory by its SHA-256, so argon2 runs once
//! per secret, not per request; revoking a credential forgets it at once. Failed attempts are
//! limited per source address.

use crate::error::ApiError;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use base64::Engine as _;
use meterstream_storage::registry::{Credential, Registry};
use meterstream_storage::StorageError;
use parking_lot::Mutex;
use rand::RngCore;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;

/// A scope a credential holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// Everything.
    Admin,
    /// Every GET.
    Read,
    /// Writes, deletes, commands.
    Write,
    /// A gateway's own uploads, registration and commands.
    Device,
}

impl Scope {
    /// Parses a scope name.
    pub fn parse(s: &str) -> Option<Scope> {
        match s {
            "admin" => Some(Scope::Admin),
            "read" => Some(Scope::Read),
            "write" => Some(Scope::Write),
            "device" => Some(Scope::Device),
            _ => None,
        }
    }
}

/// The caller of a request, once authenticated.
#[derive(Debug, Clone, PartialEq)]
pub struct Principal {
    /// Credential id.
    pub id: String,
    /// Scopes.
    pub scopes: Vec<Scope>,
    /// Path prefixes it is limited to (with `groups` empty too: unlimited).
    pub prefixes: Vec<String>,
    /// Device groups it is limited to.
    pub groups: Vec<String>,
    /// The subtrees (`<device id>/`) of the devices now in `groups`, filled in per request.
    pub group_prefixes: Vec<String>,
    /// For a device key: its device.
    pub device_id: Option<String>,
}

impl Principal {
    /// Whether it holds `scope` (admin holds every scope).
    pub fn has(&self, scope: Scope) -> bool {
        self.scopes.contains(&Scope::Admin) || self.scopes.contains(&scope)
    }

    /// Fails with 403 unless it holds `scope`.
    pub fn require(&self, scope: Scope) -> Result<(), ApiError> {
        if self.has(scope) {
            Ok(())
        } else {
            Err(ApiError::Forbidden(format!(
                "this credential lacks the {} scope",
                format!("{scope:?}").to_lowercase()
            )))
        }
    }

    /// Whether it may see or touch stream `path` (its prefixes, and a device key's own device).
    pub fn covers_path(&self, path: &str) -> bool {
        if self.has(Scope::Admin) {
            return true;
        }
        let device_ok = self.device_id.as_deref().is_none_or(|d| {
            path.strip_prefix(d)
                .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
        });
        device_ok
            && (!self.limited()
                || self
                    .prefixes
                    .iter()
                    .chain(&self.group_prefixes)
                    .any(|p| path.starts_with(p.as_str())))
    }

    /// Whether it is limited to prefixes or groups.
    pub fn limited(&self) -> bool {
        !self.prefixes.is_empty() || !self.groups.is_empty()
    }

    /// Whether it may see or act on device `id`.
    pub fn covers_device(&self, id: &str) -> bool {
        if self.has(Scope::Admin) {
            return true;
        }
        if let Some(d) = &self.device_id {
            return d == id;
        }
        let with = format!("{id}/");
        !self.limited()
            || self
                .prefixes
                .iter()
                .chain(&self.group_prefixes)
                .any(|p| with.starts_with(p.as_str()) || p.starts_with(with.as_str()))
    }
}

impl Principal {
    /// The path prefixes it is limited to, `None` when unlimited (a device key: its device's
    /// subtree, narrowed further by its prefixes).
    pub fn path_prefixes(&self) -> Option<Vec<String>> {
        if self.has(Scope::Admin) {
            return None;
        }
        match &self.device_id {
            Some(d) => {
                let own = format!("{d}/");
                let inside: Vec<String> = self
                    .prefixes
                    .iter()
                    .filter(|p| p.starts_with(own.as_str()))
                    .cloned()
                    .collect();
                Some(if inside.is_empty() { vec![own] } else { inside })
            }
            None if !self.limited() => None,
            None => Some(
                self.prefixes
                    .iter()
                    .chain(&self.group_prefixes)
                    .cloned()
                    .collect(),
            ),
        }
    }

    /// Whether every path `pattern` (`*` = one segment) can match lies inside its limits: the
    /// pattern's literal prefix must start with one of its prefixes.
    pub fn covers_pattern(&self, pattern: &str) -> bool {
        match self.path_prefixes() {
            None => true,
            Some(ps) => {
                let literal = meterstream_storage::path::pattern_prefix(pattern);
                ps.iter().any(|p| literal.starts_with(p.as_str()))
            }
        }
    }

    /// Fails with 403 unless it covers stream `path` (the answer is the same whether the stream
    /// exists or not).
    pub fn require_path(&self, path: &str) -> Result<(), ApiError> {
        if self.covers_path(path) {
            Ok(())
        } else {
            Err(ApiError::Forbidden(format!(
                "{path:?} is outside this credential's scope"
            )))
        }
    }

    /// Fails with 403 unless it covers device `id`.
    pub fn require_device(&self, id: &str) -> Result<(), ApiError> {
        if self.covers_device(id) {
            Ok(())
        } else {
            Err(ApiError::Forbidden(format!(
                "device {id:?} is outside this credential's scope"
            )))
        }
    }
}

/// Fills in the subtrees of the devices now in the principal's groups (a scan of the device
/// registry; only for credentials limited to groups). Blocking.
pub fn expand_groups(p: &mut Principal, registry: &dyn Registry) -> Result<(), StorageError> {
    if p.groups.is_empty() {
        return Ok(());
    }
    let mut after: Option<String> = None;
    let mut out = Vec::new();
    loop {
        let page = registry.devices(after.as_deref(), 1000)?;
        let Some(last) = page.last() else { break };
        after = Some(last.id.clone());
        for d in page {
            if d.group.as_ref().is_some_and(|g| p.groups.contains(g)) {
                out.push(format!("{}/", d.id));
            }
        }
    }
    p.group_prefixes = out;
    Ok(())
}

/// The caller of a request (the authentication middleware put it there).
pub fn principal(req: &actix_web::HttpRequest) -> Result<Principal, ApiError> {
    use actix_web::HttpMessage;
    req.extensions()
        .get::<Principal>()
        .cloned()
        .ok_or_else(|| ApiError::Unauthorized("credentials are required".into()))
}

/// Failed attempts allowed per address within [`FAIL_WINDOW_MS`] before it is refused (429).
pub const MAX_FAILURES: u32 = 10;
/// The window of [`MAX_FAILURES`].
pub const FAIL_WINDOW_MS: i64 = 60_000;

/// Authentication state: the registry, verified secrets, failures per address.
pub struct Auth {
    registry: Arc<dyn Registry>,
    verified: Mutex<HashMap<[u8; 32], Principal>>,
    failures: Mutex<HashMap<IpAddr, (u32, i64)>>,
}

/// What to create.
#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewCredential {
    /// `user`, `api_key` or `device`.
    pub kind: String,
    /// For a user: the user name.
    #[serde(default)]
    pub name: Option<String>,
    /// For a user: the password (at least 12 characters).
    #[serde(default)]
    pub password: Option<String>,
    /// Scopes; default `read` (users, API keys) or `device` (device keys).
    #[serde(default)]
    pub scopes: Vec<String>,
    /// Path prefixes it is limited to.
    #[serde(default)]
    pub prefixes: Vec<String>,
    /// Device groups it is limited to.
    #[serde(default)]
    pub groups: Vec<String>,
    /// For a device key: its device id.
    #[serde(default)]
    pub device_id: Option<String>,
    /// Free label.
    #[serde(default)]
    pub label: String,
}

fn hash(secret: &str) -> Result<String, ApiError> {
    let salt = SaltString::generate(&mut argon2::password_hash::rand_core::OsRng);
    Argon2::default()
        .hash_password(secret.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| ApiError::Internal(format!("hashing a secret: {e}")))
}

/// `bytes` random bytes (from the OS) as URL-safe base64: ids and secrets.
pub fn random_token(bytes: usize) -> String {
    let mut b = vec![0u8; bytes];
    rand::rngs::OsRng.fill_bytes(&mut b);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
}

fn sha(s: &str) -> [u8; 32] {
    Sha256::digest(s.as_bytes()).into()
}

/// (credential id, secret) of a key `msk_<id>_<secret>` or `msd_<id>_<secret>`.
/// Digi's API-key headers, `X-API-KEY-ID` and `X-API-KEY-SECRET` (what Digi's Python client
/// sends with `api_key_id`/`api_key_secret`), as the `Authorization` value of the same key:
/// the id is the key's id (`msk_<id>_...`), the secret either the whole key or the part after
/// the id. `None` without both headers.
pub fn api_key_headers(h: &actix_web::http::header::HeaderMap) -> Option<String> {
    let get = |n: &str| h.get(n).and_then(|v| v.to_str().ok()).map(str::trim);
    let (id, secret) = (get("x-api-key-id")?, get("x-api-key-secret")?);
    let key = if split_key(secret).is_some() {
        secret.to_string()
    } else {
        format!("msk_{id}_{secret}")
    };
    // A whole key that names another id is not this id's key: it fails as a wrong secret would.
    let named = split_key(&key).map(|(i, _)| i == id).unwrap_or(false);
    Some(if named {
        format!("Bearer {key}")
    } else {
        "Bearer invalid".to_string()
    })
}

fn split_key(key: &str) -> Option<(&str, &str)> {
    let rest = key
        .strip_prefix("msk_")
        .or_else(|| key.strip_prefix("msd_"))?;
    let (id, secret) = rest.split_once('_')?;
    (!id.is_empty() && !secret.is_empty()).then_some((id, secret))
}

impl Auth {
    /// Authentication over `registry`. With `admin_key` (`METERSTREAM_ADMIN_KEY`), that key is
    /// an admin credential; without it, if no credential exists yet, one admin key is made and
    /// returned, to be shown once. Blocking.
    pub fn new(
        registry: Arc<dyn Registry>,
        admin_key: Option<&str>,
        now: i64,
    ) -> Result<(Auth, Option<String>), ApiError> {
        let auth = Auth {
            registry,
            verified: Mutex::new(HashMap::new()),
            failures: Mutex::new(HashMap::new()),
        };
        let mut shown = None;
        match admin_key {
            Some(key) => {
                let (id, _) = split_key(key).ok_or_else(|| {
                    ApiError::BadRequest(
                        "METERSTREAM_ADMIN_KEY must look like msk_<id>_<secret> (letters, digits, - only in <id>)"
                            .into(),
                    )
                })?;
                let existing = auth.registry.credential(id)?;
                let fresh = existing.as_ref().is_none_or(|c| {
                    c.revoked.is_some()
                        || PasswordHash::new(&c.secret_hash)
                            .map(|h| {
                                Argon2::default()
                                    .verify_password(key.as_bytes(), &h)
                                    .is_err()
                            })
                            .unwrap_or(true)
                });
                if fresh {
                    auth.registry.put_credential(&Credential {
                        id: id.to_string(),
                        kind: "api_key".into(),
                        label: "admin (METERSTREAM_ADMIN_KEY)".into(),
                        secret_hash: hash(key)?,
                        scopes: vec!["admin".into()],
                        prefixes: Vec::new(),
                        groups: Vec::new(),
                        device_id: None,
                        created: now,
                        revoked: None,
                    })?;
                }
            }
            None => {
                if auth.registry.credentials()?.is_empty() {
                    let (_, key) = auth.create(
                        NewCredential {
                            kind: "api_key".into(),
                            scopes: vec!["admin".into()],
                            label: "first admin".into(),
                            ..NewCredential::default()
                        },
                        now,
                    )?;
                    shown = Some(key);
                }
            }
        }
        Ok((auth, shown))
    }

    /// Authentication over `registry` without making a first admin key (the command line).
    pub fn without_bootstrap(registry: Arc<dyn Registry>) -> Auth {
        Auth {
            registry,
            verified: Mutex::new(HashMap::new()),
            failures: Mutex::new(HashMap::new()),
        }
    }

    /// Creates a credential; returns it and the secret to hand out (the key, or for a user
    /// the password given). Blocking.
    pub fn create(&self, n: NewCredential, now: i64) -> Result<(Credential, String), ApiError> {
        let bad = |m: String| Err(ApiError::BadRequest(m));
        let mut scopes = n.scopes.clone();
        if scopes.is_empty() {
            scopes.push(if n.kind == "device" { "device" } else { "read" }.into());
        }
        if let Some(s) = scopes.iter().find(|s| Scope::parse(s).is_none()) {
            return bad(format!("scopes: {s:?} is not admin, read, write or device"));
        }
        for p in &n.prefixes {
            if p.is_empty() || p.starts_with('/') || p.chars().any(char::is_control) {
                return bad(format!("prefixes: {p:?} must be a non-empty path prefix"));
            }
        }
        for g in &n.groups {
            crate::devices::check_name("groups", g)?;
        }
        if let Some(name) = &n.name {
            crate::devices::check_name("name", name)?;
        }
        let (id, secret, device_id) = match n.kind.as_str() {
            "user" => {
                let Some(name) = n.name.clone().filter(|x| !x.is_empty() && !x.contains(':'))
                else {
                    return bad("name: a user needs a name without ':'".into());
                };
                let Some(pw) = n.password.clone().filter(|p| p.chars().count() >= 12) else {
                    return bad(
                        "password: a user needs a password of at least 12 characters".into(),
                    );
                };
                (name, pw, None)
            }
            "api_key" | "device" => {
                let id = random_token(9).replace(['-', '_'], "x");
                let prefix = if n.kind == "device" { "msd" } else { "msk" };
                let device = if n.kind == "device" {
                    let Some(d) = n.device_id.clone().filter(|d| {
                        !d.contains('/') && meterstream_storage::path::validate_path(d).is_ok()
                    }) else {
                        return bad(
                            "device_id: a device key needs the device id it belongs to".into()
                        );
                    };
                    if scopes.iter().any(|s| s == "admin") {
                        return bad("scopes: a device key cannot be admin".into());
                    }
                    Some(d)
                } else {
                    None
                };
                (
                    id.clone(),
                    format!("{prefix}_{id}_{}", random_token(32)),
                    device,
                )
            }
            k => return bad(format!("kind: {k:?} is not user, api_key or device")),
        };
        if self
            .registry
            .credential(&id)?
            .is_some_and(|c| c.revoked.is_none())
        {
            return Err(ApiError::Conflict(format!(
                "a credential {id:?} exists already"
            )));
        }
        let c = Credential {
            id,
            kind: n.kind,
            label: n.label,
            secret_hash: hash(&secret)?,
            scopes,
            prefixes: n.prefixes,
            groups: n.groups,
            device_id,
            created: now,
            revoked: None,
        };
        self.registry.put_credential(&c)?;
        Ok((c, secret))
    }

    /// Forgets the secrets of credential `id` verified before (it changed elsewhere: another
    /// node of a cluster revoked it), so its next use is checked against the registry.
    pub fn forget(&self, id: &str) {
        self.verified.lock().retain(|_, v| v.id != id);
    }

    /// Revokes a credential; it stops working at once. `false` if there is none. Blocking.
    pub fn revoke(&self, id: &str, now: i64) -> Result<bool, StorageError> {
        let Some(mut c) = self.registry.credential(id)? else {
            return Ok(false);
        };
        c.revoked.get_or_insert(now);
        self.registry.put_credential(&c)?;
        self.verified.lock().retain(|_, v| v.id != id);
        Ok(true)
    }

    /// Every credential (without secrets, which are not kept).
    pub fn list(&self) -> Result<Vec<Credential>, StorageError> {
        self.registry.credentials()
    }

    /// The principal of a credential (groups not yet expanded).
    pub fn principal_of(c: &Credential) -> Principal {
        Principal {
            id: c.id.clone(),
            scopes: c.scopes.iter().filter_map(|s| Scope::parse(s)).collect(),
            prefixes: c.prefixes.clone(),
            groups: c.groups.clone(),
            group_prefixes: Vec::new(),
            device_id: c.device_id.clone(),
        }
    }

    /// The caller if `authorization` carries a secret verified before (no argon2, no registry
    /// read: cheap enough for every request on an async thread).
    pub fn remembered(&self, authorization: Option<&str>) -> Option<Principal> {
        let (id, secret) = Self::parse_header(authorization?)?;
        self.verified
            .lock()
            .get(&sha(&format!("{id}\u{0}{secret}")))
            .cloned()
    }

    /// (credential id, secret) of an `Authorization` header value.
    fn parse_header(h: &str) -> Option<(String, String)> {
        // `Token` is how InfluxDB 2 clients (Telegraf, the client libraries) send theirs.
        if let Some(key) = h
            .strip_prefix("Bearer ")
            .or_else(|| h.strip_prefix("Token "))
            .map(str::trim)
        {
            let (id, _) = split_key(key)?;
            Some((id.to_string(), key.to_string()))
        } else {
            let b = h.strip_prefix("Basic ")?.trim();
            let decoded = base64::engine::general_purpose::STANDARD.decode(b).ok()?;
            let s = String::from_utf8(decoded).ok()?;
            let (user, pw) = s.split_once(':')?;
            Some((user.to_string(), pw.to_string()))
        }
    }

    /// Who sends `authorization` from `ip`: 401 without valid credentials, 429 after too many
    /// failures from that address. Blocking (argon2 on a secret not seen before).
    pub fn authenticate(
        &self,
        authorization: Option<&str>,
        ip: Option<IpAddr>,
        now: i64,
    ) -> Result<Principal, ApiError> {
        if let Some(ip) = ip {
            if let Some((n, since)) = self.failures.lock().get(&ip) {
                if *n >= MAX_FAILURES && now - since < FAIL_WINDOW_MS {
                    return Err(ApiError::TooManyAttempts(
                        (FAIL_WINDOW_MS - (now - since)) / 1000 + 1,
                    ));
                }
            }
        }
        let Some(h) = authorization else {
            return Err(ApiError::Unauthorized(
                "credentials are required: HTTP Basic, or Authorization: Bearer <key>".into(),
            ));
        };
        let Some((id, secret)) = Self::parse_header(h) else {
            return Err(self.fail(ip, now));
        };
        let fingerprint = sha(&format!("{id}\u{0}{secret}"));
        if let Some(p) = self.verified.lock().get(&fingerprint) {
            return Ok(p.clone());
        }
        let c = match self.registry.credential(&id)? {
            Some(c) if c.revoked.is_none() => c,
            _ => return Err(self.fail(ip, now)),
        };
        let ok = PasswordHash::new(&c.secret_hash)
            .map(|h| {
                Argon2::default()
                    .verify_password(secret.as_bytes(), &h)
                    .is_ok()
            })
            .unwrap_or(false);
        if !ok {
            return Err(self.fail(ip, now));
        }
        let p = Self::principal_of(&c);
        self.verified.lock().insert(fingerprint, p.clone());
        Ok(p)
    }

    fn fail(&self, ip: Option<IpAddr>, now: i64) -> ApiError {
        if let Some(ip) = ip {
            let mut f = self.failures.lock();
            let e = f.entry(ip).or_insert((0, now));
            if now - e.1 >= FAIL_WINDOW_MS {
                *e = (0, now);
            }
            e.0 += 1;
        }
        ApiError::Unauthorized("the credentials are not valid".into())
    }
}

/// A credential as the API and the command line show it (no secret).
pub fn credential_json(c: &Credential) -> serde_json::Value {
    serde_json::json!({
        "id": c.id,
        "kind": c.kind,
        "label": c.label,
        "scopes": c.scopes,
        "prefixes": c.prefixes,
        "groups": c.groups,
        "device_id": c.device_id,
        "created": meterstream_storage::time::format_iso(c.created),
        "revoked": c.revoked.map(meterstream_storage::time::format_iso),
    })
}

/// `GET /ws/v1/credentials` (admin): every credential, without secrets.
pub async fn list_credentials(
    req: actix_web::HttpRequest,
    st: actix_web::web::Data<crate::AppState>,
) -> Result<actix_web::HttpResponse, ApiError> {
    principal(&req)?.require(Scope::Admin)?;
    crate::params::Params::parse(req.query_string())?.finish(&[])?;
    let st2 = st.clone();
    let list = actix_web::web::block(move || st2.auth.list()).await??;
    let list: Vec<_> = list.iter().map(credential_json).collect();
    Ok(actix_web::HttpResponse::Ok().json(serde_json::json!({"count": list.len(), "list": list})))
}

/// `POST /ws/v1/credentials` (admin): creates one; the answer holds its secret, once.
pub async fn create_credential(
    req: actix_web::HttpRequest,
    body: actix_web::web::Bytes,
    st: actix_web::web::Data<crate::AppState>,
) -> Result<actix_web::HttpResponse, ApiError> {
    principal(&req)?.require(Scope::Admin)?;
    crate::params::Params::parse(req.query_string())?.finish(&[])?;
    let n: NewCredential = serde_json::from_slice(&body)
        .map_err(|e| ApiError::BadRequest(format!("invalid credential body: {e}")))?;
    let st2 = st.clone();
    let (c, secret) =
        actix_web::web::block(move || st2.auth.create(n, meterstream_storage::time::now_ms()))
            .await??;
    let mut v = credential_json(&c);
    v[if c.kind == "user" { "password" } else { "key" }] = secret.into();
    Ok(actix_web::HttpResponse::Created().json(v))
}

/// `DELETE /ws/v1/credentials/{id}` (admin): revokes it, at once.
pub async fn revoke_credential(
    req: actix_web::HttpRequest,
    st: actix_web::web::Data<crate::AppState>,
) -> Result<actix_web::HttpResponse, ApiError> {
    principal(&req)?.require(Scope::Admin)?;
    crate::params::Params::parse(req.query_string())?.finish(&[])?;
    let id = req.match_info().get("id").unwrap_or_default().to_string();
    let st2 = st.clone();
    let id2 = id.clone();
    let found =
        actix_web::web::block(move || st2.auth.revoke(&id2, meterstream_storage::time::now_ms()))
            .await??;
    if !found {
        return Err(ApiError::NotFound(format!("no credential {id:?}")));
    }
    Ok(actix_web::HttpResponse::NoContent().finish())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use meterstream_storage::registry::SledRegistry;

    fn auth() -> (tempfile::TempDir, Auth, String) {
        let dir = tempfile::tempdir().unwrap();
        let reg: Arc<dyn Registry> = Arc::new(SledRegistry::open(dir.path()).unwrap());
        let (a, shown) = Auth::new(reg, None, 0).unwrap();
        (dir, a, shown.unwrap())
    }

    #[test]
    fn the_first_admin_key_works_and_is_stored_only_hashed() {
        let (_d, a, key) = auth();
        let p = a
            .authenticate(Some(&format!("Bearer {key}")), None, 1)
            .unwrap();
        assert!(p.has(Scope::Admin));
        let stored = a.list().unwrap();
        assert_eq!(stored.len(), 1);
        assert!(stored[0].secret_hash.starts_with("$argon2id$"));
        // The secret is everything after the id, and may itself hold '_' (URL-safe base64).
        let secret = key.splitn(3, '_').nth(2).unwrap();
        assert!(secret.len() >= 40, "{key}");
        assert!(!serde_json::to_string(&stored[0]).unwrap().contains(secret));
    }

    #[test]
    fn users_keys_devices_and_revocation() {
        let (_d, a, _) = auth();
        let (_, pw) = a
            .create(
                NewCredential {
                    kind: "user".into(),
                    name: Some("ana".into()),
                    password: Some("correct horse battery".into()),
                    ..Default::default()
                },
                1,
            )
            .unwrap();
        let basic = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("ana:{pw}"))
        );
        let p = a.authenticate(Some(&basic), None, 2).unwrap();
        assert!(p.has(Scope::Read) && !p.has(Scope::Write));
        let wrong = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode("ana:nope")
        );
        assert!(a.authenticate(Some(&wrong), None, 2).is_err());
        let (c, key) = a
            .create(
                NewCredential {
                    kind: "device".into(),
                    device_id: Some("gw-17".into()),
                    ..Default::default()
                },
                1,
            )
            .unwrap();
        assert!(key.starts_with("msd_"));
        let p = a
            .authenticate(Some(&format!("Bearer {key}")), None, 3)
            .unwrap();
        assert!(
            p.covers_path("gw-17/m/v")
                && !p.covers_path("gw-170/m/v")
                && !p.covers_path("gw-1/m/v")
        );
        assert!(p.covers_device("gw-17") && !p.covers_device("gw-1"));
        assert!(a.revoke(&c.id, 4).unwrap());
        assert!(
            a.authenticate(Some(&format!("Bearer {key}")), None, 5)
                .is_err(),
            "revoked at once"
        );
        for bad in [
            NewCredential {
                kind: "user".into(),
                name: Some("x".into()),
                password: Some("short".into()),
                ..Default::default()
            },
            NewCredential {
                kind: "device".into(),
                ..Default::default()
            },
            NewCredential {
                kind: "api_key".into(),
                scopes: vec!["root".into()],
                ..Default::default()
            },
            NewCredential {
                kind: "robot".into(),
                ..Default::default()
            },
            NewCredential {
                kind: "device".into(),
                device_id: Some("gw 17".into()),
                ..Default::default()
            },
            NewCredential {
                kind: "api_key".into(),
                groups: vec![String::new()],
                ..Default::default()
            },
        ] {
            assert!(a.create(bad, 1).is_err());
        }
        // None of them was stored.
        assert_eq!(a.list().unwrap().len(), 3);
    }

    #[test]
    fn failures_are_limited_per_address() {
        let (_d, a, key) = auth();
        let ip: IpAddr = "10.0.0.9".parse().unwrap();
        for _ in 0..MAX_FAILURES {
            assert!(matches!(
                a.authenticate(Some("Bearer msk_x_y"), Some(ip), 10),
                Err(ApiError::Unauthorized(_))
            ));
        }
        // Even the right key is refused from there until the window passes.
        let right = format!("Bearer {key}");
        assert!(matches!(
            a.authenticate(Some(&right), Some(ip), 20),
            Err(ApiError::TooManyAttempts(_))
        ));
        assert!(a
            .authenticate(Some(&right), Some("10.0.0.8".parse().unwrap()), 20)
            .is_ok());
        assert!(a
            .authenticate(Some(&right), Some(ip), 10 + FAIL_WINDOW_MS)
            .is_ok());
    }

    #[test]
    fn an_environment_admin_key_is_accepted() {
        let dir = tempfile::tempdir().unwrap();
        let reg: Arc<dyn Registry> = Arc::new(SledRegistry::open(dir.path()).unwrap());
        let key = "msk_ci_averylongsecretvalue123";
        let (a, shown) = Auth::new(reg.clone(), Some(key), 0).unwrap();
        assert!(shown.is_none());
        assert!(a
            .authenticate(Some(&format!("Bearer {key}")), None, 1)
            .unwrap()
            .has(Scope::Admin));
        drop(a);
        // Again on the same registry: still one credential, still valid.
        let (a, _) = Auth::new(reg, Some(key), 0).unwrap();
        assert_eq!(a.list().unwrap().len(), 1);
        assert!(Auth::new(
            Arc::new(SledRegistry::open(tempfile::tempdir().unwrap().path()).unwrap()),
            Some("nokey"),
            0
        )
        .is_err());
    }
}
