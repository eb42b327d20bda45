//! `.dockerignore` rules and the paths they are matched against.
//!
//! Input: the file's text, a NUL, then one path a line.
#![no_main]

use libfuzzer_sys::fuzz_target;
use slipway_runner::context::DockerIgnore;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let (rules, paths) = text.split_once('\0').unwrap_or((&text, "a/b/c\nnode_modules/x\n.git/config"));
    let Ok(ignore) = DockerIgnore::parse(rules) else { return };
    for path in paths.lines() {
        let _ = ignore.excludes(path);
    }
    // A file or directory the rules never mention is never left out.
    if !rules.lines().any(|l| l.contains(['*', '?', '[', '{', '\\']) || l.contains("zzq")) {
        assert!(!ignore.excludes("zzq-never-named/zzq"));
    }
});
