//! Database snapshots around the release command: `pg_dump -Fc` of the app's PostgreSQL
//! database before the command runs, kept under the runner's snapshot directory with a count
//! retention, and `pg_restore --clean --if-exists` of one on request. Both run in one-off
//! containers of the PostgreSQL client image on the app's network, the URL passed in the
//! environment (never on a command line) and masked in the output like every secret.

use std::path::{Path, PathBuf};

use slipway_deploy::Release;
use slipway_proto::Step;

use crate::failure::JobError;
use crate::suite::{self, Verdict};

/// The variable read when the image names none.
pub const DEFAULT_VARIABLE: &str = "DATABASE_URL";

/// The variable the one-off container reads the URL from.
const URL_VARIABLE: &str = "SLIPWAY_SNAPSHOT_DATABASE_URL";

/// Where the app's snapshots are mounted in the container.
const MOUNT: &str = "/snapshots";

/// The database to snapshot for a release, if it has one: `named` is the image's
/// `snapshot_database` (`Some("")` turns snapshots off). A variable the image names must hold a
/// PostgreSQL URL; the default `DATABASE_URL` is used only when it does.
pub fn database_url(release: &Release, named: Option<&str>) -> Result<Option<(String, String)>, JobError> {
    let is_postgres = |url: &str| url.starts_with("postgres://") || url.starts_with("postgresql://");
    match named {
        Some("") => Ok(None),
        Some(name) => match release.env.get(name) {
            Some(url) if is_postgres(url) => Ok(Some((name.to_string(), url.clone()))),
            Some(_) => Err(JobError::SnapshotFailed(format!("`{name}` (snapshot_database) is not a postgres:// URL"))),
            None => Err(JobError::SnapshotFailed(format!("`{name}` (snapshot_database) is not set for the app"))),
        },
        None => Ok(release
            .env
            .get(DEFAULT_VARIABLE)
            .filter(|url| is_postgres(url))
            .map(|url| (DEFAULT_VARIABLE.to_string(), url.clone()))),
    }
}

/// A snapshot's file name: the app, the UTC time (so names sort by age), the deployment and
/// the attempt.
pub fn file_name(release: &Release, now: chrono::DateTime<chrono::Utc>) -> String {
    let id: String = release.deployment_id.simple().to_string().chars().take(8).collect();
    format!("{}-{}-{id}-{}.dump", release.app, now.format("%Y%m%dT%H%M%SZ"), release.attempt)
}

/// The app's directory of snapshots.
pub fn app_dir(root: &Path, app: &str) -> PathBuf {
    root.join(app)
}

/// A one-off run of the client image on the app's network with the app's snapshot directory
/// mounted (`read_only` for a restore).
pub struct Run<'a> {
    pub docker: &'a bollard::Docker,
    pub image: &'a str,
    pub network: String,
    pub dir: &'a Path,
    pub read_only: bool,
    pub url: &'a str,
    pub limits: suite::Limits,
    pub labels: std::collections::HashMap<String, String>,
}

impl Run<'_> {
    /// Runs `script` with `sh -c`, its `$0` the file name.
    pub async fn script(self, script: &str, file: &str, log: slipway_deploy::LogFn<'_>) -> Result<Verdict, JobError> {
        let mode = if self.read_only { ":ro" } else { "" };
        let one = suite::OneOff {
            image: self.image,
            cmd: vec!["/bin/sh".into(), "-c".into(), script.into(), file.into()],
            env: vec![format!("{URL_VARIABLE}={}", self.url)],
            limits: self.limits,
            network: self.network,
            labels: self.labels,
            binds: vec![format!("{}:{MOUNT}{mode}", self.dir.display())],
        };
        suite::run_once(self.docker, one, log, &tokio_util::sync::CancellationToken::new())
            .await
            .map_err(JobError::ReleaseRun)
    }
}

/// `pg_dump -Fc` to a partial file, renamed when complete.
pub fn dump_script() -> String {
    format!(
        "set -e; pg_dump -Fc --no-owner -f \"{MOUNT}/$0.partial\" \"${URL_VARIABLE}\"; mv \"{MOUNT}/$0.partial\" \"{MOUNT}/$0\""
    )
}

/// `pg_restore` in one transaction that stops at the first error: all of the snapshot, or
/// nothing changed.
pub fn restore_script() -> String {
    format!(
        "exec pg_restore --clean --if-exists --no-owner --no-privileges --single-transaction --exit-on-error -d \"${URL_VARIABLE}\" \"{MOUNT}/$0\""
    )
}

/// Removes the app's oldest snapshots beyond `keep` (and partial files of runs that died);
/// returns the names of the snapshots removed.
pub fn prune(dir: &Path, keep: usize) -> std::io::Result<Vec<String>> {
    let mut dumps = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let name = entry?.file_name().to_string_lossy().into_owned();
        if name.ends_with(".dump") {
            dumps.push(name);
        } else if name.ends_with(".dump.partial") {
            let _ = std::fs::remove_file(dir.join(&name));
        }
    }
    // `<app>-<time>-...`: within one app's directory the names sort by time.
    dumps.sort();
    let excess = dumps.len().saturating_sub(keep);
    let mut pruned = Vec::new();
    for name in dumps.into_iter().take(excess) {
        std::fs::remove_file(dir.join(&name))?;
        pruned.push(name);
    }
    Ok(pruned)
}

/// The step a snapshot's lines are logged under.
pub const STEP: Step = Step::Release;

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn release(env: &[(&str, &str)]) -> Release {
        Release {
            app: "shop".into(),
            environment: "production".into(),
            deployment_id: uuid::Uuid::parse_str("0197a1b2-0000-7000-8000-000000000000").expect("uuid"),
            attempt: 2,
            sha: "a".repeat(40),
            image: "img".into(),
            port: 8080,
            health_path: "/".into(),
            env: env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect::<BTreeMap<_, _>>(),
            secrets: Vec::new(),
            limits: None,
            hosts: Vec::new(),
            drain: None,
            rollback: false,
            settings: None,
        }
    }

    #[test]
    fn the_database_is_the_named_variable_or_a_postgres_database_url() {
        let pg = "postgres://u:p@db:5432/shop";
        assert_eq!(
            database_url(&release(&[("DATABASE_URL", pg)]), None).expect("ok").map(|d| d.0).as_deref(),
            Some("DATABASE_URL")
        );
        assert!(database_url(&release(&[("DATABASE_URL", "mysql://db/shop")]), None).expect("ok").is_none());
        assert!(database_url(&release(&[]), None).expect("ok").is_none());
        assert!(database_url(&release(&[("DATABASE_URL", pg)]), Some("")).expect("ok").is_none(), "off");
        let named = database_url(&release(&[("PRIMARY", "postgresql://db/x")]), Some("PRIMARY")).expect("ok");
        assert_eq!(named.map(|d| d.1).as_deref(), Some("postgresql://db/x"));
        let err = database_url(&release(&[]), Some("PRIMARY")).expect_err("not set").to_string();
        assert!(err.contains("`PRIMARY` (snapshot_database) is not set"), "{err}");
        let err = database_url(&release(&[("PRIMARY", "redis://x")]), Some("PRIMARY")).expect_err("not pg").to_string();
        assert!(err.contains("not a postgres:// URL") && !err.contains("redis://x"), "no value in the error: {err}");
    }

    #[test]
    fn names_sort_by_time_and_retention_keeps_the_newest() {
        let r = release(&[]);
        let at = |s: &str| chrono::DateTime::parse_from_rfc3339(s).expect("time").with_timezone(&chrono::Utc);
        assert_eq!(file_name(&r, at("2026-11-23T01:02:03Z")), "shop-20261123T010203Z-0197a1b2-2.dump");
        let dir = tempfile::tempdir().expect("dir");
        let names: Vec<String> = (1..=4).map(|h| file_name(&r, at(&format!("2026-11-23T0{h}:00:00Z")))).collect();
        for name in names.iter().rev() {
            std::fs::write(dir.path().join(name), b"x").expect("write");
        }
        std::fs::write(dir.path().join("shop-x.dump.partial"), b"x").expect("write");
        let pruned = prune(dir.path(), 2).expect("prune");
        assert_eq!(pruned, names[..2].to_vec(), "the two oldest");
        let mut left: Vec<String> = std::fs::read_dir(dir.path())
            .expect("read")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(left, names[2..].to_vec(), "partial files of dead runs go too");
    }
}
