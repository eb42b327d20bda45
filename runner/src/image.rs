//! Images: the reference a job's image gets, building it through the Docker API from a context
//! tarball, and pushing it to the registry.

use bollard::Docker;
use bollard::auth::DockerCredentials;
use bollard::errors::Error as DockerError;
use bollard::query_parameters::{BuildImageOptionsBuilder, CreateImageOptionsBuilder, PushImageOptionsBuilder};
use futures_util::StreamExt;
use oci_spec::distribution::Reference;
use slipway_deploy::LogFn;

/// Why building or pushing failed.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("`{0}` is not a valid image reference: {1}")]
    Reference(String, String),
    /// The Dockerfile or the code failed to build: the user's to fix.
    #[error("the build failed: {0}")]
    BuildFailed(String),
    #[error("the registry refused the push: {0}")]
    PushFailed(String),
    #[error("pulling the image from the registry failed: {0}")]
    PullFailed(String),
    #[error("the Docker engine failed while {action}")]
    Engine {
        action: &'static str,
        #[source]
        source: DockerError,
    },
}

/// `<registry>/<app>:<sha>`, checked to be a valid, lowercase OCI reference.
pub fn reference(registry: &str, app: &str, sha: &str) -> Result<Reference, ImageError> {
    let raw = format!("{registry}/{app}:{}", sha.to_ascii_lowercase());
    let parsed: Reference = raw
        .parse()
        .map_err(|e: oci_spec::distribution::ParseError| ImageError::Reference(raw.clone(), e.to_string()))?;
    if parsed.whole() != raw || raw.chars().any(|c| c.is_ascii_uppercase()) {
        return Err(ImageError::Reference(raw.clone(), "it must be lowercase and fully qualified".into()));
    }
    Ok(parsed)
}

/// The digest the registry holds for `image`, if it holds it.
pub async fn registry_digest(docker: &Docker, image: &str, auth: Option<&DockerCredentials>) -> Option<String> {
    let inspected = docker.inspect_registry_image(image, auth.cloned()).await;
    inspected.ok().and_then(|d| d.descriptor.digest).filter(|d| !d.is_empty())
}

/// Makes sure the engine has `image` at exactly `digest` (another runner may have built it):
/// pulls `<repository>@<digest>` unless an image with that digest is already local, and tags
/// it as `image`.
pub async fn ensure_local(
    docker: &Docker,
    image: &Reference,
    digest: &str,
    auth: Option<&DockerCredentials>,
    log: LogFn<'_>,
) -> Result<(), ImageError> {
    let name = format!("{}/{}", image.registry(), image.repository());
    let pinned = format!("{name}@{digest}");
    if docker.inspect_image(&pinned).await.is_ok() {
        return Ok(());
    }
    log(format!("pulling {pinned} (built on another runner)"));
    let options = CreateImageOptionsBuilder::default().from_image(&pinned).build();
    let mut stream = docker.create_image(Some(options), None, auth.cloned());
    while let Some(item) = stream.next().await {
        match item {
            Ok(info) => {
                if let Some(detail) = info.error_detail {
                    return Err(ImageError::PullFailed(detail.message.unwrap_or_default()));
                }
            }
            Err(DockerError::DockerStreamError { error }) => return Err(ImageError::PullFailed(error)),
            Err(source) => return Err(ImageError::Engine { action: "pulling", source }),
        }
    }
    let tag = bollard::query_parameters::TagImageOptionsBuilder::default()
        .repo(&name)
        .tag(image.tag().unwrap_or("latest"))
        .build();
    docker.tag_image(&pinned, Some(tag)).await.map_err(|source| ImageError::Engine { action: "tagging", source })
}

/// Builds `context` (a tar) as `tag`, sending every line the builder prints to `log`. Dropping
/// the future closes the connection, which stops the build in the engine; `forcerm` removes
/// its intermediate containers either way. `labels` mark temporary images (a test stage) with
/// the runner and deployment; the image that is pushed gets none (they would defeat the cache).
pub async fn build(
    docker: &Docker,
    context: Vec<u8>,
    tag: &str,
    dockerfile: &str,
    target: Option<&str>,
    labels: &std::collections::HashMap<&str, &str>,
    log: LogFn<'_>,
) -> Result<(), ImageError> {
    let options = BuildImageOptionsBuilder::default()
        .dockerfile(dockerfile)
        .target(target.unwrap_or(""))
        .t(tag)
        .rm(true)
        .forcerm(true)
        .labels(labels)
        .build();
    let mut stream = docker.build_image(options, None, Some(bollard::body_full(context.into())));
    let mut lines = OutputLines::default();
    let emit = |line: &str| log(line.to_string());
    while let Some(item) = stream.next().await {
        match item {
            Ok(info) => {
                if let Some(text) = info.stream.as_deref().or(info.status.as_deref()) {
                    lines.push(text, emit);
                }
                if let Some(detail) = info.error_detail {
                    return Err(ImageError::BuildFailed(
                        detail.message.unwrap_or_else(|| "unknown build error".into()),
                    ));
                }
            }
            Err(DockerError::DockerStreamError { error }) => {
                log(error.clone());
                return Err(ImageError::BuildFailed(error));
            }
            Err(DockerError::DockerResponseServerError { status_code, message })
                if (400..500).contains(&status_code) =>
            {
                log(message.clone());
                return Err(ImageError::BuildFailed(message));
            }
            Err(source) => {
                return Err(ImageError::Engine { action: "building", source });
            }
        }
    }
    lines.finish(emit);
    Ok(())
}

/// Cuts output that arrives in chunks (the engine's, which may end mid-line) into lines, only at
/// newlines; a trailing `\r` is dropped and blank lines are left out.
#[derive(Debug, Default)]
pub struct OutputLines {
    partial: String,
}

impl OutputLines {
    /// Adds a chunk; `emit` gets each line it completed.
    pub fn push(&mut self, chunk: &str, mut emit: impl FnMut(&str)) {
        self.partial.push_str(chunk);
        // One pass over the complete lines, one move of the rest (not one per line).
        let complete = self.partial.rfind('\n').map_or(0, |i| i + 1);
        for line in self.partial[..complete].lines() {
            Self::emit_line(line, &mut emit);
        }
        self.partial.drain(..complete);
    }

    /// The output ended: `emit` gets the last line if it had no newline.
    pub fn finish(self, mut emit: impl FnMut(&str)) {
        Self::emit_line(&self.partial, &mut emit);
    }

    fn emit_line(line: &str, emit: &mut impl FnMut(&str)) {
        let line = line.trim_end_matches('\r');
        if !line.trim().is_empty() {
            emit(line);
        }
    }
}

/// Pushes `image` and returns its digest when the registry reports one.
pub async fn push(
    docker: &Docker,
    image: &Reference,
    auth: Option<&DockerCredentials>,
    log: LogFn<'_>,
) -> Result<Option<String>, ImageError> {
    let name = format!("{}/{}", image.registry(), image.repository());
    let options = PushImageOptionsBuilder::default().tag(image.tag().unwrap_or("latest")).build();
    let mut stream = docker.push_image(&name, Some(options), auth.cloned());
    let mut digest = None;
    while let Some(item) = stream.next().await {
        match item {
            Ok(info) => {
                if let Some(detail) = info.error_detail {
                    return Err(ImageError::PushFailed(detail.message.unwrap_or_default()));
                }
                if let Some(status) = info.status {
                    if let Some(d) = status.split_whitespace().skip_while(|w| *w != "digest:").nth(1) {
                        digest = Some(d.to_string());
                    }
                    if !matches!(status.as_str(), "Pushing" | "Preparing" | "Waiting") {
                        log(status);
                    }
                }
            }
            Err(DockerError::DockerStreamError { error }) => {
                return Err(ImageError::PushFailed(error));
            }
            Err(source) => {
                return Err(ImageError::Engine { action: "pushing", source });
            }
        }
    }
    Ok(digest)
}

/// Tags the local image `source` (a name, or `name@digest`) as `to`.
pub async fn tag(docker: &Docker, source: &str, to: &Reference) -> Result<(), ImageError> {
    let options = bollard::query_parameters::TagImageOptionsBuilder::default()
        .repo(&format!("{}/{}", to.registry(), to.repository()))
        .tag(to.tag().unwrap_or("latest"))
        .build();
    docker.tag_image(source, Some(options)).await.map_err(|source| ImageError::Engine { action: "tagging", source })
}

/// The image labels that carry the app's release command and deploy hooks (JSON arrays, argv).
pub const RELEASE_LABEL: &str = "dev.slipway.release";
pub const PRE_DEPLOY_LABEL: &str = "dev.slipway.pre_deploy";
pub const POST_DEPLOY_LABEL: &str = "dev.slipway.post_deploy";
/// The image label naming the variable with the app's PostgreSQL URL (a JSON string; `""`: no
/// snapshots), from `slipway.toml`'s `snapshot_database`.
pub const SNAPSHOT_DATABASE_LABEL: &str = "dev.slipway.snapshot_database";

/// The commands an image was built with ([`RELEASE_LABEL`] and the hooks).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Commands {
    pub release: Option<Vec<String>>,
    pub pre_deploy: Option<Vec<String>>,
    pub post_deploy: Option<Vec<String>>,
    /// The variable with the database to snapshot before the release command, when the image
    /// names one (`Some("")`: none).
    pub snapshot_database: Option<String>,
}

/// The commands recorded in `image`'s labels. An image the engine cannot inspect has none here:
/// the deploy step finds it missing soon enough.
pub async fn commands(docker: &Docker, image: &str) -> Commands {
    let labels =
        docker.inspect_image(image).await.ok().and_then(|i| i.config).and_then(|c| c.labels).unwrap_or_default();
    let argv = |key: &str| {
        labels.get(key).and_then(|l| serde_json::from_str::<Vec<String>>(l).ok()).filter(|argv| !argv.is_empty())
    };
    Commands {
        release: argv(RELEASE_LABEL),
        pre_deploy: argv(PRE_DEPLOY_LABEL),
        post_deploy: argv(POST_DEPLOY_LABEL),
        snapshot_database: labels.get(SNAPSHOT_DATABASE_LABEL).and_then(|l| serde_json::from_str::<String>(l).ok()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_is_cut_into_lines_only_at_newlines_whatever_its_chunks() {
        let mut cut = OutputLines::default();
        let mut lines = Vec::new();
        for chunk in ["Step 1/2 : FR", "OM x\r", "\n\n   \nStep 2/2", " : RUN true\nlast without newline"] {
            cut.push(chunk, |l| lines.push(l.to_string()));
        }
        assert_eq!(lines, ["Step 1/2 : FROM x", "Step 2/2 : RUN true"]);
        cut.finish(|l| lines.push(l.to_string()));
        assert_eq!(lines.last().map(String::as_str), Some("last without newline"));
    }

    #[test]
    fn references_are_lowercase_and_qualified() {
        let r = reference("127.0.0.1:5000", "web", "ABCDEF0123456789abcdef0123456789abcdef01").expect("valid");
        assert_eq!(r.whole(), "127.0.0.1:5000/web:abcdef0123456789abcdef0123456789abcdef01");
        assert_eq!(r.registry(), "127.0.0.1:5000");
        assert_eq!(r.repository(), "web");
        let r = reference("registry.example.com/team", "web", "0123456789abcdef0123456789abcdef01234567")
            .expect("namespace");
        assert_eq!(r.repository(), "team/web");
        assert!(reference("Registry.Example.com", "Web", "x").is_err());
        assert!(reference("127.0.0.1:5000", "we b", "0123").is_err());
    }
}
