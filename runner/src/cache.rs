//! What the layer cache did in a build, and why it missed: the builder's output says which
//! steps were reused (`---> Using cache`); the runner compares this build with the last
//! successful build of the app on this runner (its engine holds the cache) to say why the first
//! rebuilt step was rebuilt: the files it copies that changed, a changed base image, or a
//! changed instruction. The manifest of each successful build (the context's files and their
//! hashes, and the Dockerfile's steps) is kept in the runner's work directory.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use slipway_proto::CacheSummary;

/// One step of a build as the builder reported it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StepSeen {
    pub number: u32,
    pub total: u32,
    pub instruction: String,
    /// Whether the layer came from the cache (`None` for `FROM`, which makes no layer).
    pub cached: Option<bool>,
    /// For `FROM`: the image id the builder resolved it to.
    pub image: Option<String>,
}

/// Follows the classic builder's output.
#[derive(Debug, Default)]
pub struct Observer {
    pub steps: Vec<StepSeen>,
}

impl Observer {
    /// Takes one line of the builder's output.
    pub fn line(&mut self, line: &str) {
        let line = line.trim_end();
        if let Some(rest) = line.strip_prefix("Step ")
            && let Some((count, instruction)) = rest.split_once(" : ")
            && let Some((n, total)) = count.split_once('/')
            && let (Ok(number), Ok(total)) = (n.parse(), total.parse())
        {
            self.close();
            self.steps.push(StepSeen {
                number,
                total,
                instruction: instruction.to_string(),
                cached: None,
                image: None,
            });
            return;
        }
        let Some(step) = self.steps.last_mut() else { return };
        let trimmed = line.trim();
        if trimmed == "---> Using cache" {
            step.cached = Some(true);
        } else if let Some(id) = trimmed.strip_prefix("---> ")
            && step.instruction.to_ascii_uppercase().starts_with("FROM ")
            && step.image.is_none()
            && id.chars().all(|c| c.is_ascii_hexdigit())
        {
            step.image = Some(id.to_string());
        }
    }

    /// Ends the last step: one that was not reused was rebuilt.
    fn close(&mut self) {
        if let Some(step) = self.steps.last_mut()
            && step.cached.is_none()
            && !step.instruction.to_ascii_uppercase().starts_with("FROM ")
        {
            step.cached = Some(false);
        }
    }

    /// The steps, the last one closed.
    pub fn finish(mut self) -> Vec<StepSeen> {
        self.close();
        self.steps
    }
}

/// What is kept of a successful build to explain the next one.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// Every regular file of the context and the SHA-256 of its content.
    pub files: BTreeMap<String, String>,
    /// Each step's instruction (`FROM` with the image id it resolved to).
    pub steps: Vec<String>,
}

/// The files of a context tarball and their hashes.
pub fn files_of(tar: &[u8]) -> BTreeMap<String, String> {
    let mut files = BTreeMap::new();
    let mut archive = tar::Archive::new(tar);
    let Ok(entries) = archive.entries() else { return files };
    for mut entry in entries.flatten() {
        if entry.header().entry_type() != tar::EntryType::Regular {
            continue;
        }
        let Ok(path) = entry.path().map(|p| p.to_string_lossy().into_owned()) else { continue };
        let mut hasher = Sha256::new();
        let mut buf = [0u8; 64 * 1024];
        loop {
            match entry.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => hasher.update(&buf[..n]),
            }
        }
        files.insert(path, hex::encode(hasher.finalize()));
    }
    files
}

fn steps_of(seen: &[StepSeen]) -> Vec<String> {
    seen.iter()
        .map(|s| match &s.image {
            Some(id) => format!("{} @{id}", s.instruction),
            None => s.instruction.clone(),
        })
        .collect()
}

/// Where the manifest of `app`'s last successful build on this runner is kept.
pub fn manifest_path(dir: &Path, app: &str) -> PathBuf {
    let safe: String = app.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' { c } else { '_' }).collect();
    dir.join(format!("{safe}.json"))
}

/// The manifest kept for `app`, if any (an unreadable one counts as none).
pub fn load(dir: &Path, app: &str) -> Option<Manifest> {
    let text = std::fs::read(manifest_path(dir, app)).ok()?;
    serde_json::from_slice(&text).ok()
}

/// Keeps the manifest of this successful build of `app`.
pub fn save(dir: &Path, app: &str, files: BTreeMap<String, String>, seen: &[StepSeen]) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let manifest = Manifest { files, steps: steps_of(seen) };
    let path = manifest_path(dir, app);
    let tmp = path.with_extension("json.tmp");
    std::fs::write(&tmp, serde_json::to_vec(&manifest).unwrap_or_default())?;
    std::fs::rename(tmp, path)
}

/// The sources of a `COPY`/`ADD` instruction, none when it copies from another stage.
fn copy_sources(instruction: &str) -> Option<Vec<String>> {
    let (verb, rest) = instruction.split_once(' ')?;
    if !matches!(verb.to_ascii_uppercase().as_str(), "COPY" | "ADD") {
        return None;
    }
    let mut rest = rest.trim();
    while let Some(flag) = rest.strip_prefix("--") {
        let (flag, after) = flag.split_once(' ').unwrap_or((flag, ""));
        if flag.starts_with("from=") {
            return Some(Vec::new());
        }
        rest = after.trim_start();
    }
    let mut parts: Vec<String> = match serde_json::from_str::<Vec<String>>(rest) {
        Ok(parts) => parts,
        Err(_) => rest.split_whitespace().map(str::to_string).collect(),
    };
    parts.pop(); // the destination
    Some(parts.into_iter().map(|p| p.trim_start_matches("./").trim_end_matches('/').to_string()).collect())
}

fn under(path: &str, source: &str) -> bool {
    source.is_empty() || source == "." || source == "*" || path == source || path.starts_with(&format!("{source}/"))
}

/// The summary of this build and why its first rebuilt step was rebuilt, compared with `before`.
pub fn explain(
    app: &str,
    seen: &[StepSeen],
    files: &BTreeMap<String, String>,
    before: Option<&Manifest>,
) -> CacheSummary {
    let reused = seen.iter().filter(|s| s.cached == Some(true)).count() as u32;
    let rebuilt = seen.iter().filter(|s| s.cached == Some(false)).count() as u32;
    let Some(miss) = seen.iter().find(|s| s.cached == Some(false)) else {
        return CacheSummary { reused, rebuilt, first_miss: None };
    };
    let at = format!("step {}/{} `{}`", miss.number, miss.total, miss.instruction);
    let why = match before {
        None => format!("no earlier build of {app} on this runner (the layer cache is this runner's engine's)"),
        Some(before) => {
            let index = seen.iter().position(|s| s.number == miss.number).unwrap_or(0);
            let now = steps_of(seen);
            // A base image that resolved to another image invalidates everything after it.
            let base = seen[..index].iter().rev().find(|s| s.image.is_some());
            let base_changed = base.is_some_and(|b| {
                let i = seen.iter().position(|s| s.number == b.number).unwrap_or(0);
                before
                    .steps
                    .get(i)
                    .is_some_and(|was| was.split(" @").next() == Some(b.instruction.as_str()) && *was != now[i])
            });
            let sources = copy_sources(&miss.instruction);
            let changed: Vec<String> = match &sources {
                Some(sources) if !sources.is_empty() => {
                    let mut changed: Vec<String> = files
                        .iter()
                        .filter(|(p, _)| sources.iter().any(|s| under(p, s)))
                        .filter(|(p, h)| before.files.get(*p) != Some(*h))
                        .map(|(p, _)| p.clone())
                        .collect();
                    changed.extend(
                        before
                            .files
                            .keys()
                            .filter(|p| sources.iter().any(|s| under(p, s)) && !files.contains_key(*p))
                            .map(|p| format!("{p} (removed)")),
                    );
                    changed
                }
                _ => Vec::new(),
            };
            if base_changed {
                let b = base.map(|b| b.instruction.clone()).unwrap_or_default();
                format!("the base image of `{b}` changed since the last build of {app} here")
            } else if !changed.is_empty() {
                let shown: Vec<&str> = changed.iter().take(5).map(String::as_str).collect();
                let more = if changed.len() > 5 { format!(" and {} more", changed.len() - 5) } else { String::new() };
                let n = changed.len();
                let files = if n == 1 { "file" } else { "files" };
                format!("{n} {files} it copies changed since the last build of {app} here: {}{more}", shown.join(", "))
            } else if before.steps.get(index) != now.get(index) {
                let was = before.steps.get(index).map(|w| format!(" (was `{w}`)")).unwrap_or_default();
                format!("the instruction changed{was}")
            } else if sources.is_some_and(|s| s.is_empty()) {
                "it copies from a stage that was rebuilt".to_string()
            } else {
                "its layer was no longer in this engine's cache (pruned), or an earlier stage changed".to_string()
            }
        }
    };
    CacheSummary { reused, rebuilt, first_miss: Some(format!("{at}: {why}")) }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn observe(lines: &str) -> Vec<StepSeen> {
        let mut o = Observer::default();
        lines.lines().for_each(|l| o.line(l));
        o.finish()
    }

    const BUILD: &str = "Step 1/5 : FROM node:22 AS deps\n ---> 1a2b3c4d5e6f\nStep 2/5 : COPY [\"package.json\",\"./package.json\"]\n ---> Using cache\n ---> 77aa\nStep 3/5 : RUN npm ci\n ---> Using cache\n ---> 88bb\nStep 4/5 : COPY . .\n ---> 99cc\nStep 5/5 : RUN npm run build\n ---> Running in abc\nbuilt\n ---> ddee\n";

    #[test]
    fn the_builders_output_says_what_was_reused() {
        let seen = observe(BUILD);
        let cached: Vec<Option<bool>> = seen.iter().map(|s| s.cached).collect();
        assert_eq!(cached, vec![None, Some(true), Some(true), Some(false), Some(false)]);
        assert_eq!(seen[0].image.as_deref(), Some("1a2b3c4d5e6f"));
        assert_eq!(seen[3].instruction, "COPY . .");
    }

    #[test]
    fn the_first_miss_names_the_files_it_copies_that_changed() {
        let seen = observe(BUILD);
        let mut before = BTreeMap::from([
            ("package.json".to_string(), "a".to_string()),
            ("src/index.js".to_string(), "b".to_string()),
            ("src/old.js".to_string(), "c".to_string()),
        ]);
        let manifest = Manifest { files: before.clone(), steps: steps_of(&seen) };
        before.insert("src/index.js".into(), "B".into());
        before.remove("src/old.js");
        let summary = explain("web", &seen, &before, Some(&manifest));
        assert_eq!((summary.reused, summary.rebuilt), (2, 2));
        let why = summary.first_miss.expect("a miss");
        assert!(why.starts_with("step 4/5 `COPY . .`: 2 files it copies changed"), "{why}");
        assert!(why.contains("src/index.js") && why.contains("src/old.js (removed)"), "{why}");
        assert!(!why.contains("package.json"), "{why}");

        // A lockfile change: the dependency step, and the lockfile named.
        let lock = observe(&BUILD.replacen(" ---> Using cache\n ---> 77aa", " ---> 77aa", 1));
        let mut files = manifest.files.clone();
        files.insert("package.json".into(), "A".into());
        let why = explain("web", &lock, &files, Some(&manifest)).first_miss.expect("a miss");
        assert!(
            why.starts_with("step 2/5 `COPY [\"package.json\",\"./package.json\"]`: 1 file it copies changed"),
            "{why}"
        );
        assert!(why.ends_with("package.json"), "{why}");

        // No earlier build here, a changed base image, a changed instruction.
        assert!(explain("web", &seen, &files, None).first_miss.expect("miss").contains("no earlier build of web"));
        let rebased = observe(&BUILD.replace("1a2b3c4d5e6f", "ffff00001111").replacen(
            " ---> Using cache\n ---> 77aa",
            " ---> 77aa",
            1,
        ));
        let why = explain("web", &rebased, &manifest.files, Some(&manifest)).first_miss.expect("miss");
        assert!(why.contains("the base image of `FROM node:22 AS deps` changed"), "{why}");
        let edited = observe(
            &BUILD
                .replace("Step 5/5 : RUN npm run build", "Step 5/5 : RUN npm run build:prod")
                .replace("Step 4/5 : COPY . .\n ---> 99cc", "Step 4/5 : COPY . .\n ---> Using cache\n ---> 99cc"),
        );
        let why = explain("web", &edited, &manifest.files, Some(&manifest)).first_miss.expect("miss");
        assert!(why.contains("the instruction changed (was `RUN npm run build`)"), "{why}");
        let all = observe(
            &BUILD
                .replace(" ---> 99cc", " ---> Using cache\n ---> 99cc")
                .replace(" ---> Running in abc\nbuilt", " ---> Using cache"),
        );
        assert_eq!(explain("web", &all, &manifest.files, Some(&manifest)).first_miss, None);
    }

    #[test]
    fn copy_sources_are_read_in_both_forms() {
        assert_eq!(copy_sources("COPY . ."), Some(vec![".".to_string()]));
        assert_eq!(copy_sources("COPY [\"a.txt\",\"./b/\",\"/dst\"]"), Some(vec!["a.txt".into(), "b".into()]));
        assert_eq!(copy_sources("COPY --chown=1:1 src /app/src"), Some(vec!["src".into()]));
        assert_eq!(copy_sources("COPY --from=build /app /app"), Some(Vec::new()));
        assert_eq!(copy_sources("RUN echo"), None);
    }
}
