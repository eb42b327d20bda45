//! The build-context walker on generated trees: files, directories and links (inside the
//! checkout, out of it, absolute), odd names, and a `.dockerignore`. The tarball must hold only
//! what is in the checkout and not ignored, under relative paths, within the size limit, and
//! never the bytes of a file outside the checkout.
#![no_main]

use std::io::Read;
use std::path::Component;

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use slipway_runner::context::{self, DockerIgnore};

const OUTSIDE: &[u8] = b"HOST-FILE-OUTSIDE-THE-CHECKOUT";

#[derive(Arbitrary, Debug)]
struct Input {
    ignore: Option<String>,
    entries: Vec<Entry>,
    limit: u16,
    generated: Option<String>,
}

#[derive(Arbitrary, Debug)]
enum Entry {
    File { path: Vec<Name>, content: Vec<u8>, executable: bool },
    Dir { path: Vec<Name> },
    Link { path: Vec<Name>, target: Target },
}

#[derive(Arbitrary, Debug)]
enum Name {
    Known(u8),
    Other(String),
}

#[derive(Arbitrary, Debug)]
enum Target {
    Outside,
    OutsideFile,
    Absolute,
    Inside(Vec<Name>),
    Up(u8),
    Other(String),
}

const KNOWN: &[&str] = &[
    "a",
    "b",
    "src",
    "node_modules",
    ".git",
    "Dockerfile",
    ".dockerignore",
    ".env",
    "x y",
    "é",
    "Dockerfile.slipway-generated",
    "..\\..\\escape",
    "a\\b",
    "-",
    "#hash",
    "!bang",
    "**",
];

fn name(n: &Name) -> Option<String> {
    let s = match n {
        Name::Known(i) => KNOWN[*i as usize % KNOWN.len()].to_string(),
        Name::Other(s) => s.clone(),
    };
    let ok = !s.is_empty() && s != "." && s != ".." && !s.contains(['/', '\0']) && s.len() < 120;
    ok.then_some(s)
}

fn path(names: &[Name]) -> Option<String> {
    let parts: Option<Vec<String>> = names.iter().take(4).map(name).collect();
    parts.filter(|p| !p.is_empty()).map(|p| p.join("/"))
}

fuzz_target!(|input: Input| {
    let Ok(tmp) = tempfile::tempdir() else { return };
    let (root, outside) = (tmp.path().join("repo"), tmp.path().join("outside"));
    std::fs::create_dir_all(&root).expect("root");
    std::fs::create_dir_all(&outside).expect("outside");
    std::fs::write(outside.join("secret"), OUTSIDE).expect("outside file");
    if let Some(text) = &input.ignore {
        let _ = std::fs::write(root.join(".dockerignore"), text);
    }
    for entry in input.entries.iter().take(24) {
        let names = match entry {
            Entry::File { path, .. } | Entry::Dir { path } | Entry::Link { path, .. } => path,
        };
        let Some(rel) = path(names) else { continue };
        let at = root.join(&rel);
        if let Some(parent) = at.parent() {
            let _ = std::fs::create_dir_all(parent);
        }
        match entry {
            Entry::File { content, executable, .. } => {
                if std::fs::write(&at, content).is_ok() && *executable {
                    use std::os::unix::fs::PermissionsExt;
                    let _ = std::fs::set_permissions(&at, std::fs::Permissions::from_mode(0o755));
                }
            }
            Entry::Dir { .. } => {
                let _ = std::fs::create_dir_all(&at);
            }
            Entry::Link { target, .. } => {
                let to: std::path::PathBuf = match target {
                    Target::Outside => outside.clone(),
                    Target::OutsideFile => outside.join("secret"),
                    Target::Absolute => "/etc".into(),
                    Target::Inside(names) => path(names).unwrap_or_default().into(),
                    Target::Up(n) => "../".repeat(usize::from(*n % 8) + 1).into(),
                    Target::Other(s) => s.into(),
                };
                let _ = std::os::unix::fs::symlink(to, &at);
            }
        }
    }
    let limit = u64::from(input.limit);
    let Ok(tarball) = context::tarball(&root, limit, input.generated.as_deref()) else { return };
    let ignore = std::fs::read_to_string(root.join(".dockerignore"))
        .ok()
        .filter(|_| std::fs::symlink_metadata(root.join(".dockerignore")).is_ok_and(|m| m.is_file()))
        .and_then(|text| DockerIgnore::parse(&text).ok())
        .unwrap_or_default();
    let mut archive = tar::Archive::new(tarball.as_slice());
    let mut total = 0u64;
    for entry in archive.entries().expect("a tarball") {
        let mut entry = entry.expect("an entry");
        let rel = entry.path().expect("a path").into_owned();
        assert!(
            rel.components().all(|c| matches!(c, Component::Normal(_))),
            "the tarball holds {rel:?}, which is not a plain relative path"
        );
        let text = rel.to_string_lossy().trim_end_matches('/').to_string();
        let kind = entry.header().entry_type();
        if kind.is_file() {
            let mut bytes = Vec::new();
            entry.read_to_end(&mut bytes).expect("the entry's bytes");
            if text == context::GENERATED_DOCKERFILE && input.generated.is_some() {
                assert_eq!(bytes, input.generated.as_deref().unwrap_or_default().as_bytes());
                continue;
            }
            total += bytes.len() as u64;
            // Exactly the bytes of the checkout's own regular file of that name: never those of
            // a file a link points at (the host file's, outside the checkout).
            let on_disk = std::fs::symlink_metadata(root.join(&rel));
            assert!(on_disk.is_ok_and(|m| m.is_file()), "{text} is in the tarball but is no file of the checkout");
            let own = std::fs::read(root.join(&rel)).expect("the checkout's file");
            assert!(bytes == own, "{text} in the tarball is not the checkout's file of that name");
            assert!(
                text == "Dockerfile" || text == ".dockerignore" || !ignore.excludes(&text),
                "{text} is in the tarball though .dockerignore leaves it out"
            );
        }
    }
    assert!(total <= limit, "{total} bytes of files in a context limited to {limit}");
});
