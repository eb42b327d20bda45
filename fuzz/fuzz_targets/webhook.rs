//! A forge's webhook delivery: headers and body as the scheduler's endpoints read them, then the
//! signature check, the push's intent and skip markers and the repository URLs' normal form.
//!
//! Input: the forge (first byte: 0 GitHub's endpoint, which also takes Gitea and Forgejo,
//! 1 GitLab, 2 Bitbucket, 3 Gitea), then `name: value` header lines, a blank line, the body.
#![no_main]

use http::{HeaderMap, HeaderName, HeaderValue};
use libfuzzer_sys::fuzz_target;
use slipway_scheduler::forge::{self, Event, Forge};
use slipway_scheduler::webhook::{Push, intent};

fuzz_target!(|data: &[u8]| {
    let Some((&which, rest)) = data.split_first() else { return };
    let (head, body) = match rest.windows(2).position(|w| w == b"\n\n") {
        Some(at) => (&rest[..at], &rest[at + 2..]),
        None => (rest, &[][..]),
    };
    let mut headers = HeaderMap::new();
    for line in head.split(|&b| b == b'\n') {
        let Some(colon) = line.iter().position(|&b| b == b':') else { continue };
        let (Ok(name), Ok(value)) =
            (HeaderName::from_bytes(&line[..colon]), HeaderValue::from_bytes(line[colon + 1..].trim_ascii()))
        else {
            continue;
        };
        headers.append(name, value);
    }
    let forge = match which % 4 {
        0 => forge::detect(&headers),
        1 => Forge::GitLab,
        2 => Forge::Bitbucket,
        _ => Forge::Gitea,
    };
    if forge::precheck(forge, &headers).is_err() {
        // The endpoint answers 400/401 here without reading the body; the parser must still
        // cope with what a caller that skipped the check would give it.
    }
    let Ok(delivery) = forge::read(forge, &headers, body) else { return };
    for secret in ["", "s3cret-webhook-key", "\u{1F600}"] {
        let _ = forge::verifies(&delivery.proof, secret, &delivery.signed_body, 1_700_000_000);
    }
    for url in &delivery.repo_urls {
        let _ = slipway_scheduler::apps::normalize_repo_url(url);
    }
    if let Event::Push(changes) = delivery.event {
        for change in changes {
            if let Some(message) = &change.message {
                let _ = forge::skip_marker(message);
            }
            let push = Push {
                git_ref: change.git_ref,
                after: change.after,
                deleted: change.deleted,
                repository: Default::default(),
            };
            let _ = intent(&push);
        }
    }
});
