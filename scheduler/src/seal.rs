//! Secrets at rest. An app's secret environment values, webhook secret, Kubernetes `secret_env`
//! and repository credentials are sealed together with ChaCha20-Poly1305 (ring) before they
//! reach PostgreSQL, bound to the app's id so a sealed value cannot be moved to another app.
//!
//! A sealed value reads `s1.<key id>.<base64url(nonce ‖ ciphertext ‖ tag)>`; the key id (the
//! first 8 hex digits of the key's SHA-256) says which key of the [`Keyring`] opens it, so a key
//! rotation ([`rotate`]) can re-encrypt everything and a crash halfway leaves every value
//! readable.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use ring::aead::{Aad, CHACHA20_POLY1305, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::rand::{SecureRandom, SystemRandom};
use serde::{Deserialize, Serialize};
use slipway_proto::message::GitCredentials;
use sqlx::PgPool;
use uuid::Uuid;

/// Why sealing or opening failed; never carries a secret.
#[derive(Debug, thiserror::Error)]
pub enum SealError {
    #[error("{0}")]
    Key(String),
    #[error("a sealed value is not in the s1.<key>.<data> form")]
    Malformed,
    #[error("a value was sealed with key {0}, which is not configured (SLIPWAY_SECRET_KEY or the key file)")]
    UnknownKey(String),
    #[error("a sealed value did not authenticate with key {0}: wrong key or tampered data")]
    Tampered(String),
    #[error("the random source failed")]
    Random,
    #[error("sealed data is not the expected JSON: {0}")]
    Json(#[from] serde_json::Error),
}

/// One 256-bit key and its id.
#[derive(Clone)]
struct Key {
    id: String,
    bytes: [u8; 32],
}

impl Key {
    fn new(bytes: [u8; 32]) -> Self {
        let digest = ring::digest::digest(&ring::digest::SHA256, &bytes);
        Key { id: hex::encode(&digest.as_ref()[..4]), bytes }
    }

    fn parse(text: &str, source: &str) -> Result<Self, SealError> {
        let text = text.trim();
        let decoded = STANDARD
            .decode(text)
            .or_else(|_| URL_SAFE_NO_PAD.decode(text.trim_end_matches('=')))
            .map_err(|_| SealError::Key(format!("{source} is not base64")))?;
        let bytes: [u8; 32] = decoded.try_into().map_err(|_| {
            SealError::Key(format!("{source} must be 32 random bytes in base64 (`openssl rand -base64 32`)"))
        })?;
        Ok(Key::new(bytes))
    }

    fn generate() -> Result<Self, SealError> {
        let mut bytes = [0u8; 32];
        SystemRandom::new().fill(&mut bytes).map_err(|_| SealError::Random)?;
        Ok(Key::new(bytes))
    }

    fn encoded(&self) -> String {
        STANDARD.encode(self.bytes)
    }

    fn aead(&self) -> LessSafeKey {
        // 32 bytes is exactly ChaCha20-Poly1305's key length, so this cannot fail.
        LessSafeKey::new(UnboundKey::new(&CHACHA20_POLY1305, &self.bytes).expect("a 256-bit key"))
    }
}

/// The key new values are sealed with, and every key that may still open older ones.
#[derive(Clone)]
pub struct Keyring {
    current: Key,
    others: Vec<Key>,
}

impl std::fmt::Debug for Keyring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let others: Vec<&str> = self.others.iter().map(|k| k.id.as_str()).collect();
        f.debug_struct("Keyring").field("current", &self.current.id).field("others", &others).finish()
    }
}

/// Where the keys come from.
#[derive(Debug, Clone)]
pub struct KeySource {
    /// `SLIPWAY_SECRET_KEY`: the key itself, in base64; when set, no key file is read or created.
    pub key: Option<String>,
    /// `SLIPWAY_SECRET_KEY_FILE`: created (0600) with a new random key on first start.
    pub file: PathBuf,
    /// `SLIPWAY_PREVIOUS_SECRET_KEYS`: older keys (base64, comma-separated) that may still open values.
    pub previous: Vec<String>,
}

impl KeySource {
    fn next_file(&self) -> PathBuf {
        with_suffix(&self.file, ".next")
    }

    fn previous_file(&self) -> PathBuf {
        with_suffix(&self.file, ".previous")
    }
}

fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

/// Writes `contents` to a new file only the owner can read, creating its directory.
pub fn write_private(path: &Path, contents: &str) -> std::io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir)?;
    }
    let tmp = with_suffix(path, &format!(".tmp{}", std::process::id()));
    let mut file = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&tmp)?;
    file.write_all(contents.as_bytes())?;
    file.sync_all()?;
    std::fs::rename(&tmp, path)
}

/// Writes a new private file at `path` only if there is none (atomically: a complete file or
/// nothing); false when one exists already.
pub fn create_private(path: &Path, contents: &str) -> std::io::Result<bool> {
    let tmp = with_suffix(path, &format!(".new{}", uuid::Uuid::new_v4().simple()));
    write_private(&tmp, contents)?;
    let linked = std::fs::hard_link(&tmp, path);
    let _ = std::fs::remove_file(&tmp);
    match linked {
        Ok(()) => Ok(true),
        Err(err) if err.kind() == std::io::ErrorKind::AlreadyExists => Ok(false),
        Err(err) => Err(err),
    }
}

impl Keyring {
    /// Loads the keys; with neither `SLIPWAY_SECRET_KEY` nor a key file, creates the key file.
    pub fn load(source: &KeySource) -> Result<Self, SealError> {
        let current = match &source.key {
            Some(text) => Key::parse(text, "SLIPWAY_SECRET_KEY")?,
            None => match std::fs::read_to_string(&source.file) {
                Ok(text) => Key::parse(&text, &source.file.display().to_string())?,
                Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
                    let key = Key::generate()?;
                    let created = create_private(&source.file, &key.encoded())
                        .map_err(|e| SealError::Key(format!("creating the key file {}: {e}", source.file.display())))?;
                    match created {
                        true => {
                            tracing::info!(file = %source.file.display(), key_id = %key.id, "created a new secret key file");
                            key
                        }
                        // Another scheduler starting at the same moment created it first: theirs it is.
                        false => {
                            let text = std::fs::read_to_string(&source.file)
                                .map_err(|e| SealError::Key(format!("reading {}: {e}", source.file.display())))?;
                            Key::parse(&text, &source.file.display().to_string())?
                        }
                    }
                }
                Err(err) => return Err(SealError::Key(format!("reading {}: {err}", source.file.display()))),
            },
        };
        let mut others = Vec::new();
        for (i, text) in source.previous.iter().enumerate().filter(|(_, t)| !t.trim().is_empty()) {
            others.push(Key::parse(text, &format!("SLIPWAY_PREVIOUS_SECRET_KEYS[{i}]"))?);
        }
        // A rotation interrupted after its commit left values under the `.next` key; a finished
        // one left the key before it as `.previous`.
        for path in [source.next_file(), source.previous_file()] {
            if let Ok(text) = std::fs::read_to_string(&path) {
                others.push(Key::parse(&text, &path.display().to_string())?);
            }
        }
        Ok(Keyring { current, others })
    }

    /// A keyring of one key, for tests.
    pub fn from_key(bytes: [u8; 32]) -> Self {
        Keyring { current: Key::new(bytes), others: Vec::new() }
    }

    /// The id of the key new values are sealed with.
    pub fn current_id(&self) -> &str {
        &self.current.id
    }

    /// Seals `plain`, bound to `context` (which must be given again to open it).
    pub fn seal(&self, plain: &[u8], context: &str) -> Result<String, SealError> {
        seal_with(&self.current, plain, context)
    }

    /// Opens a value sealed with any key of the ring.
    pub fn open(&self, sealed: &str, context: &str) -> Result<Vec<u8>, SealError> {
        let mut parts = sealed.splitn(3, '.');
        let (Some("s1"), Some(id), Some(data)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(SealError::Malformed);
        };
        let key = std::iter::once(&self.current)
            .chain(&self.others)
            .find(|k| k.id == id)
            .ok_or_else(|| SealError::UnknownKey(id.to_string()))?;
        let mut bytes = URL_SAFE_NO_PAD.decode(data).map_err(|_| SealError::Malformed)?;
        if bytes.len() < NONCE_LEN + CHACHA20_POLY1305.tag_len() {
            return Err(SealError::Malformed);
        }
        let mut in_out = bytes.split_off(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(&bytes).map_err(|_| SealError::Malformed)?;
        let plain = key
            .aead()
            .open_in_place(nonce, Aad::from(context.as_bytes()), &mut in_out)
            .map_err(|_| SealError::Tampered(id.to_string()))?;
        Ok(plain.to_vec())
    }

    /// Seals a value as JSON.
    pub fn seal_json<T: Serialize>(&self, value: &T, context: &str) -> Result<String, SealError> {
        self.seal(&serde_json::to_vec(value)?, context)
    }

    /// Opens a value sealed as JSON.
    pub fn open_json<T: for<'de> Deserialize<'de>>(&self, sealed: &str, context: &str) -> Result<T, SealError> {
        Ok(serde_json::from_slice(&self.open(sealed, context)?)?)
    }
}

fn seal_with(key: &Key, plain: &[u8], context: &str) -> Result<String, SealError> {
    let mut nonce = [0u8; NONCE_LEN];
    SystemRandom::new().fill(&mut nonce).map_err(|_| SealError::Random)?;
    let mut in_out = plain.to_vec();
    key.aead()
        .seal_in_place_append_tag(Nonce::assume_unique_for_key(nonce), Aad::from(context.as_bytes()), &mut in_out)
        .map_err(|_| SealError::Random)?;
    let mut out = nonce.to_vec();
    out.extend_from_slice(&in_out);
    Ok(format!("s1.{}.{}", key.id, URL_SAFE_NO_PAD.encode(out)))
}

/// Everything secret of one app, sealed as one value in `apps.sealed`.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppSecrets {
    pub webhook_secret: String,
    /// The values of the variables marked secret.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// The values of the Kubernetes settings' `secret_env`.
    #[serde(default)]
    pub kube_secret_env: BTreeMap<String, String>,
    #[serde(default)]
    pub git: Option<GitCredentials>,
    /// The token commit statuses are set with.
    #[serde(default)]
    pub status_token: Option<String>,
}

impl std::fmt::Debug for AppSecrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppSecrets")
            .field("env", &self.env.keys().collect::<Vec<_>>())
            .field("kube_secret_env", &self.kube_secret_env.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

/// What an app's sealed secrets are bound to.
pub fn app_context(app_id: Uuid) -> String {
    format!("slipway/apps/{app_id}")
}

/// Re-encrypts every sealed value with a new key, in one transaction. With a key file, the new
/// key is written beside it first (`.next`), and after the commit it becomes the key file (the
/// old one stays as `.previous`); with `SLIPWAY_SECRET_KEY`, the new key is written to `to`, for
/// the operator to set. Returns the number of values re-encrypted and the new key's id.
pub async fn rotate(pool: &PgPool, source: &KeySource, to: Option<&Path>) -> anyhow::Result<(usize, String)> {
    use anyhow::Context;
    let ring = Keyring::load(source)?;
    let new = Key::generate()?;
    let new_file = match (to, &source.key) {
        (Some(path), _) => path.to_path_buf(),
        (None, None) => source.next_file(),
        (None, Some(_)) => anyhow::bail!("with SLIPWAY_SECRET_KEY set, give --to FILE to receive the new key"),
    };
    write_private(&new_file, &new.encoded())
        .with_context(|| format!("writing the new key to {}", new_file.display()))?;
    let mut tx = pool.begin().await?;
    let rows: Vec<(Uuid, String)> =
        sqlx::query_as("SELECT id, sealed FROM apps WHERE sealed IS NOT NULL FOR UPDATE").fetch_all(&mut *tx).await?;
    for (id, sealed) in &rows {
        let context = app_context(*id);
        let plain = ring.open(sealed, &context).with_context(|| format!("opening the secrets of app {id}"))?;
        let resealed = seal_with(&new, &plain, &context)?;
        sqlx::query("UPDATE apps SET sealed = $2 WHERE id = $1").bind(id).bind(resealed).execute(&mut *tx).await?;
    }
    // Every release keeps the secrets it was made with, sealed in its app's release context.
    let releases: Vec<(Uuid, Uuid, String)> =
        sqlx::query_as("SELECT deployment_id, app_id, sealed FROM releases FOR UPDATE").fetch_all(&mut *tx).await?;
    for (deployment, app, sealed) in &releases {
        let context = crate::releases::context(*app);
        let plain =
            ring.open(sealed, &context).with_context(|| format!("opening the release of deployment {deployment}"))?;
        let resealed = seal_with(&new, &plain, &context)?;
        sqlx::query("UPDATE releases SET sealed = $2 WHERE deployment_id = $1")
            .bind(deployment)
            .bind(resealed)
            .execute(&mut *tx)
            .await?;
    }
    // Notification targets' URLs and signing secrets.
    let targets: Vec<(Uuid, String)> =
        sqlx::query_as("SELECT id, sealed FROM notification_targets FOR UPDATE").fetch_all(&mut *tx).await?;
    for (id, sealed) in &targets {
        let context = crate::notify::context(*id);
        let plain = ring.open(sealed, &context).with_context(|| format!("opening notification target {id}"))?;
        let resealed = seal_with(&new, &plain, &context)?;
        sqlx::query("UPDATE notification_targets SET sealed = $2 WHERE id = $1")
            .bind(id)
            .bind(resealed)
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await?;
    if to.is_none() && source.key.is_none() {
        std::fs::rename(&source.file, source.previous_file()).context("keeping the old key as .previous")?;
        std::fs::rename(source.next_file(), &source.file).context("installing the new key file")?;
    }
    Ok((rows.len() + releases.len() + targets.len(), new.id.clone()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sealed_value_opens_only_with_its_key_and_context() {
        let ring = Keyring::from_key([7; 32]);
        let sealed = ring.seal(b"hunter2-hunter2", "slipway/apps/a").expect("seal");
        assert!(!sealed.contains("hunter2"));
        assert_eq!(ring.open(&sealed, "slipway/apps/a").expect("open"), b"hunter2-hunter2");
        assert!(matches!(ring.open(&sealed, "slipway/apps/b"), Err(SealError::Tampered(_))));
        let other = Keyring::from_key([8; 32]);
        assert!(matches!(other.open(&sealed, "slipway/apps/a"), Err(SealError::UnknownKey(_))));
        // Two seals of one value differ (a fresh nonce each time).
        assert_ne!(sealed, ring.seal(b"hunter2-hunter2", "slipway/apps/a").expect("seal"));
    }

    #[test]
    fn tampered_or_malformed_values_are_errors_not_panics() {
        let ring = Keyring::from_key([7; 32]);
        let sealed = ring.seal(b"value", "c").expect("seal");
        let mut flipped = sealed.clone().into_bytes();
        let last = flipped.len() - 2;
        flipped[last] = if flipped[last] == b'A' { b'B' } else { b'A' };
        let flipped = String::from_utf8(flipped).expect("ascii");
        assert!(matches!(ring.open(&flipped, "c"), Err(SealError::Tampered(_))));
        for bad in [
            "",
            "s1",
            "s1.x",
            "s2.abc.def",
            &format!("s1.{}.!!", ring.current_id()),
            &format!("s1.{}.AA", ring.current_id()),
        ] {
            assert!(ring.open(bad, "c").is_err(), "{bad}");
        }
    }

    #[test]
    fn keys_must_be_32_bytes_of_base64() {
        assert!(Key::parse(&STANDARD.encode([1u8; 32]), "k").is_ok());
        assert!(Key::parse(&URL_SAFE_NO_PAD.encode([1u8; 32]), "k").is_ok());
        for bad in ["", "short", &STANDARD.encode([1u8; 16]), "not base64 at all!"] {
            let err = Key::parse(bad, "SLIPWAY_SECRET_KEY").err().expect(bad).to_string();
            assert!(err.contains("SLIPWAY_SECRET_KEY"), "{err}");
        }
    }

    #[test]
    fn a_missing_key_file_is_created_private_and_read_back() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("dir");
        let source = KeySource { key: None, file: dir.path().join("state/secret.key"), previous: Vec::new() };
        let first = Keyring::load(&source).expect("created");
        let mode = std::fs::metadata(&source.file).expect("file").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let again = Keyring::load(&source).expect("read back");
        assert_eq!(first.current_id(), again.current_id());
        // Schedulers starting at the same moment on a fresh directory agree on one key.
        let fresh = tempfile::tempdir().expect("dir");
        let shared = KeySource { key: None, file: fresh.path().join("secret.key"), previous: Vec::new() };
        let ids: Vec<String> = std::thread::scope(|scope| {
            let loads: Vec<_> = (0..8).map(|_| scope.spawn(|| Keyring::load(&shared).expect("load"))).collect();
            loads.into_iter().map(|l| l.join().expect("thread").current_id().to_string()).collect()
        });
        assert!(ids.windows(2).all(|w| w[0] == w[1]), "{ids:?}");
        let left: Vec<_> = std::fs::read_dir(fresh.path()).expect("dir").flatten().map(|e| e.file_name()).collect();
        assert_eq!(left, [std::ffi::OsString::from("secret.key")], "no temporary file left");
        let sealed = first.seal(b"x", "c").expect("seal");
        assert_eq!(again.open(&sealed, "c").expect("open"), b"x");
    }
}
