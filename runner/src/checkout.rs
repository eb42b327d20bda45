//! Shallow checkout of exactly one commit with git2: fetch the SHA at depth 1 (or, when the
//! server refuses to serve a SHA directly, the pushed ref at depth 1) and check it out.
//! Credentials go through git2's callback, never into a URL or a log line. Blocking: call it
//! from `spawn_blocking`.

use std::path::Path;

use git2::{
    AutotagOption, Cred, FetchOptions, Oid, RemoteCallbacks, RemoteRedirect, Repository, build::CheckoutBuilder,
};

/// Credentials offered when the server asks for them.
#[derive(Clone)]
pub struct GitAuth {
    pub username: String,
    pub token: String,
}

impl std::fmt::Debug for GitAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GitAuth").field("username", &self.username).field("token", &"<redacted>").finish()
    }
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
}

impl CheckoutError {
    /// A missing commit or a refused repository is the user's to fix; a network error is not.
    pub fn is_user_error(&self) -> bool {
        match self {
            CheckoutError::BadSha(_) | CheckoutError::NotFound { .. } => true,
            CheckoutError::Fetch(_) | CheckoutError::Checkout(_) => false,
        }
    }
}

/// Fetches `sha` from `url` into `dest` (an empty directory) at depth 1 and checks it out.
pub fn shallow_checkout(
    url: &str,
    sha: &str,
    git_ref: &str,
    dest: &Path,
    auth: Option<&GitAuth>,
    log: &dyn Fn(String),
) -> Result<(), CheckoutError> {
    let oid = Oid::from_str(sha).map_err(|_| CheckoutError::BadSha(sha.to_string()))?;
    if sha.len() < 40 {
        return Err(CheckoutError::BadSha(sha.to_string()));
    }
    let repo = Repository::init(dest).map_err(|e| CheckoutError::Checkout(e.message().to_string()))?;
    let mut remote = repo.remote_anonymous(url).map_err(|e| CheckoutError::Fetch(e.message().to_string()))?;
    log(format!("fetching {sha} (depth 1)"));
    let by_sha = remote.fetch(&[format!("+{sha}:refs/slipway/target")], Some(&mut fetch_options(auth)), None);
    if let Err(err) = by_sha {
        log(format!("the server would not serve the SHA directly ({}); fetching {git_ref} instead", err.message()));
        remote.fetch(&[format!("+{git_ref}:refs/slipway/target")], Some(&mut fetch_options(auth)), None).map_err(
            |e| match is_auth_or_network(&e) {
                true => CheckoutError::Fetch(e.message().to_string()),
                false => CheckoutError::NotFound { sha: sha.to_string(), message: e.message().to_string() },
            },
        )?;
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

fn fetch_options(auth: Option<&GitAuth>) -> FetchOptions<'_> {
    let mut callbacks = RemoteCallbacks::new();
    if let Some(auth) = auth {
        let mut tries = 0;
        callbacks.credentials(move |_url, _username, _allowed| {
            tries += 1;
            if tries > 1 {
                return Err(git2::Error::from_str("the repository refused the configured credentials"));
            }
            Cred::userpass_plaintext(&auth.username, &auth.token)
        });
    }
    let mut opts = FetchOptions::new();
    opts.remote_callbacks(callbacks);
    opts.depth(1);
    opts.download_tags(AutotagOption::None);
    opts.follow_redirects(RemoteRedirect::Initial);
    opts
}

fn is_auth_or_network(err: &git2::Error) -> bool {
    matches!(err.class(), git2::ErrorClass::Net | git2::ErrorClass::Ssl | git2::ErrorClass::Http)
        || err.code() == git2::ErrorCode::Auth
}
