//! Shallow checkout of exactly one commit with git2: fetch the SHA at depth 1 (or, when the
//! server refuses to serve a SHA directly, the pushed ref at depth 1) and check it out.
//! Credentials go through git2's callback, never into a URL or a log line. Blocking: call it
//! from `spawn_blocking`; setting its `stop` flag interrupts the fetch at the next progress
//! callback, and [`set_network_timeouts`] bounds how long a silent server can hold it.

pub mod watch;

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use slipway_proto::outbound::{self, Guard};

use git2::{
    AutotagOption, Cred, FetchOptions, Oid, RemoteCallbacks, RemoteRedirect, Repository, build::CheckoutBuilder,
};

/// Credentials offered when the server asks for them, only to `host` and only over https.
#[derive(Clone)]
pub struct GitAuth {
    pub username: String,
    pub token: String,
    /// The host the credentials were configured for (lowercase).
    pub host: String,
}

impl std::fmt::Debug for GitAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let GitAuth { username, host, .. } = self;
        f.debug_struct("GitAuth").field("username", username).field("host", host).field("token", &"<redacted>").finish()
    }
}

impl GitAuth {
    /// The credentials, if libgit2 asks for them on behalf of `url`: only an https URL of the
    /// configured host gets them (a redirect elsewhere, or plain http, gets an error instead).
    pub fn offer(&self, url: &str) -> Result<Cred, git2::Error> {
        match outbound::target(url) {
            Ok(t) if t.scheme == "https" && t.host == self.host => {
                Cred::userpass_plaintext(&self.username, &self.token)
            }
            Ok(t) => Err(git2::Error::from_str(&format!(
                "refusing to send the credentials configured for {} to {}://{}",
                self.host, t.scheme, t.host
            ))),
            Err(_) => Err(git2::Error::from_str("refusing to send credentials to an unrecognised URL")),
        }
    }
}

/// Checks the repository URL with the outbound guard just before connecting (its host is
/// resolved again here, so a name that changed to an internal address since registration is
/// caught).
pub fn guard(url: &str, guard: &Guard) -> Result<(), CheckoutError> {
    guard.check(url).map(|_| ()).map_err(|e| CheckoutError::Refused(e.to_string()))
}

/// Why a checkout failed.
#[derive(Debug, thiserror::Error)]
pub enum CheckoutError {
    #[error("`{0}` is not a commit SHA")]
    BadSha(String),
    #[error("commit {sha} could not be fetched from the repository: {message}")]
    NotFound { sha: String, message: String },
    #[error("fetching from the repository failed: {0}")]
    Fetch(String),
    #[error("checking out the commit failed: {0}")]
    Checkout(String),
    #[error("the fetch was interrupted")]
    Interrupted,
    #[error("the repository has no {git_ref}: {message}")]
    NoRef { git_ref: String, message: String },
    #[error("{0}")]
    Refused(String),
}

/// Bounds every git network operation of this process: connecting, and each wait for the server.
/// Call once at start-up, before any fetch.
pub fn set_network_timeouts(connect: Duration, io: Duration) -> Result<(), git2::Error> {
    let ms = |d: Duration| i32::try_from(d.as_millis()).unwrap_or(i32::MAX);
    // SAFETY: these set libgit2 globals; they are called once at start-up, before any thread
    // uses libgit2, as libgit2's documentation of git_libgit2_opts requires.
    #[allow(unsafe_code)]
    unsafe {
        git2::opts::set_server_connect_timeout_in_milliseconds(ms(connect))?;
        git2::opts::set_server_timeout_in_milliseconds(ms(io))?;
    }
    Ok(())
}

/// The commit `git_ref` points at in `url` (like `git ls-remote`), for a deploy of a branch
/// head. Bounded by the network timeouts; `stop` is checked once connected.
pub fn resolve_ref(
    url: &str,
    git_ref: &str,
    auth: Option<&GitAuth>,
    stop: &AtomicBool,
) -> Result<String, CheckoutError> {
    let mut remote = git2::Remote::create_detached(url).map_err(|e| CheckoutError::Fetch(e.message().to_string()))?;
    let mut callbacks = RemoteCallbacks::new();
    if let Some(auth) = auth {
        callbacks.credentials(move |url, _, _| auth.offer(url));
    }
    let connected = remote.connect_auth(git2::Direction::Fetch, Some(callbacks), None);
    connected.map_err(|e| match is_missing(&e) {
        true => CheckoutError::NoRef { git_ref: git_ref.to_string(), message: e.message().to_string() },
        false => CheckoutError::Fetch(e.message().to_string()),
    })?;
    if stop.load(Ordering::Relaxed) {
        return Err(CheckoutError::Interrupted);
    }
    let heads = remote.list().map_err(|e| CheckoutError::Fetch(e.message().to_string()))?;
    let head = heads.iter().find(|h| h.name() == git_ref).map(|h| h.oid().to_string());
    head.ok_or_else(|| CheckoutError::NoRef { git_ref: git_ref.to_string(), message: "no such ref".into() })
}

/// Fetches `sha` from `url` into `dest` (an empty directory) at depth 1 and checks it out.
pub fn shallow_checkout(
    url: &str,
    sha: &str,
    git_ref: &str,
    dest: &Path,
    auth: Option<&GitAuth>,
    log: &dyn Fn(String),
    stop: &AtomicBool,
) -> Result<(), CheckoutError> {
    let oid = Oid::from_str(sha).map_err(|_| CheckoutError::BadSha(sha.to_string()))?;
    if sha.len() < 40 {
        return Err(CheckoutError::BadSha(sha.to_string()));
    }
    let repo = Repository::init(dest).map_err(|e| CheckoutError::Checkout(e.message().to_string()))?;
    let mut remote = repo.remote_anonymous(url).map_err(|e| CheckoutError::Fetch(e.message().to_string()))?;
    log(format!("fetching {sha} (depth 1)"));
    let by_sha = remote.fetch(&[format!("+{sha}:refs/slipway/target")], Some(&mut fetch_options(auth, stop)), None);
    if let Err(err) = by_sha {
        if stop.load(Ordering::Relaxed) {
            return Err(CheckoutError::Interrupted);
        }
        if is_unreachable(&err) {
            return Err(CheckoutError::Fetch(err.message().to_string()));
        }
        log(format!("the server would not serve the SHA directly ({}); fetching {git_ref} instead", err.message()));
        let by_ref =
            remote.fetch(&[format!("+{git_ref}:refs/slipway/target")], Some(&mut fetch_options(auth, stop)), None);
        by_ref.map_err(|e| match () {
            _ if stop.load(Ordering::Relaxed) => CheckoutError::Interrupted,
            _ if is_missing(&e) => CheckoutError::NotFound { sha: sha.to_string(), message: e.message().to_string() },
            _ => CheckoutError::Fetch(e.message().to_string()),
        })?;
    }
    let commit = repo.find_commit(oid).map_err(|_| CheckoutError::NotFound {
        sha: sha.to_string(),
        message: format!("it is not the tip of {git_ref} and the server does not allow fetching it by SHA"),
    })?;
    repo.checkout_tree(commit.as_object(), Some(CheckoutBuilder::new().force()))
        .map_err(|e| CheckoutError::Checkout(e.message().to_string()))?;
    repo.set_head_detached(oid).map_err(|e| CheckoutError::Checkout(e.message().to_string()))?;
    let summary = commit.summary().ok().flatten().unwrap_or_default().chars().take(200).collect::<String>();
    log(format!("checked out {sha}: {summary}"));
    Ok(())
}

fn fetch_options<'a>(auth: Option<&'a GitAuth>, stop: &'a AtomicBool) -> FetchOptions<'a> {
    let mut callbacks = RemoteCallbacks::new();
    // Returning false from a progress callback makes libgit2 abort the fetch.
    callbacks.transfer_progress(move |_| !stop.load(Ordering::Relaxed));
    callbacks.sideband_progress(move |_| !stop.load(Ordering::Relaxed));
    if let Some(auth) = auth {
        let mut tries = 0;
        callbacks.credentials(move |url, _username, _allowed| {
            tries += 1;
            if tries > 1 {
                return Err(git2::Error::from_str("the repository refused the configured credentials"));
            }
            auth.offer(url)
        });
    }
    let mut opts = FetchOptions::new();
    opts.remote_callbacks(callbacks);
    opts.depth(1);
    opts.download_tags(AutotagOption::None);
    // A redirect could lead the fetch (and any credentials) to another host the guard never saw.
    opts.follow_redirects(RemoteRedirect::None);
    opts
}

/// The server could not be reached at all (refused, timed out): no point asking it for the
/// ref instead; the platform's problem, retried.
fn is_unreachable(err: &git2::Error) -> bool {
    let message = err.message().to_ascii_lowercase();
    (err.class() == git2::ErrorClass::Os || message.contains("failed to connect") || message.contains("timed out"))
        && !is_missing(err)
}

/// The server answered, and what was asked for is not there: the user's to fix.
fn is_missing(err: &git2::Error) -> bool {
    let message = err.message().to_ascii_lowercase();
    err.code() == git2::ErrorCode::NotFound
        || err.class() == git2::ErrorClass::Reference
        || message.contains("couldn't find remote ref")
        || message.contains("not our ref")
        || message.contains("404")
        || message.contains("repository not found")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_go_only_over_https_to_their_host() {
        let auth = GitAuth { username: "bot".into(), token: "tok-0123456789".into(), host: "github.com".into() };
        assert!(auth.offer("https://github.com/acme/web.git").is_ok());
        assert!(auth.offer("https://GitHub.com/acme/web.git").is_ok());
        for elsewhere in [
            "http://github.com/acme/web.git",
            "https://github.com.evil.example/acme/web.git",
            "https://evil.example/acme/web.git",
            "https://0x7f000001/x.git",
            "git://github.com/acme/web.git",
            "not a url",
        ] {
            let err = auth.offer(elsewhere).err().unwrap_or_else(|| panic!("{elsewhere} got the credentials"));
            assert!(!err.message().contains("tok-0123456789"), "{}", err.message());
        }
        assert!(!format!("{auth:?}").contains("tok-0123456789"));
    }

    #[test]
    fn the_guard_refuses_before_any_connection() {
        let err = guard("http://169.254.169.254/x.git", &Guard::default()).expect_err("metadata address");
        assert!(matches!(err, CheckoutError::Refused(ref m) if m.contains("link-local")), "{err}");
        assert!(guard("git://127.0.0.1:9418/x.git", &Guard::parse("127.0.0.1").expect("allow")).is_ok());
    }
}
