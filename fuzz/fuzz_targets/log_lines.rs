//! Log line framing on a runner: the engine's output cut into lines at newlines whatever its
//! chunks, then each line masked (secrets also where a line break splits one), NUL escaped, and
//! sent in numbered parts that readers join. Nothing may be lost, reordered or leak a secret.
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use slipway_proto::Step;
use slipway_runner::image::OutputLines;
use slipway_runner::report::{Outbox, Reporter};

#[derive(Arbitrary, Debug)]
struct Input {
    /// The engine's output, in the chunks it arrived in.
    chunks: Vec<String>,
    /// Secret values (kept to letters and digits, at least the masked length).
    secrets: Vec<String>,
    /// Lines sent to the reporter, each attributed to one of two steps; a `Long` line is a
    /// fragment repeated, to cross the part size.
    lines: Vec<(bool, Line)>,
}

#[derive(Arbitrary, Debug)]
enum Line {
    Text(String),
    Long(String, u16),
}

fuzz_target!(|input: Input| {
    // 1. Cutting chunks into lines loses and adds nothing.
    let mut cut = OutputLines::default();
    let mut got: Vec<String> = Vec::new();
    for chunk in &input.chunks {
        cut.push(chunk, |l| got.push(l.to_string()));
    }
    cut.finish(|l| got.push(l.to_string()));
    let whole: String = input.chunks.concat();
    let want: Vec<String> = whole
        .split('\n')
        .map(|l| l.trim_end_matches('\r'))
        .filter(|l| !l.trim().is_empty())
        .map(str::to_string)
        .collect();
    assert_eq!(got, want, "the lines of {whole:?}");

    // 2. Masking and framing.
    let secrets: Vec<String> = input
        .secrets
        .iter()
        .take(3)
        .map(|s| s.chars().filter(char::is_ascii_alphanumeric).collect::<String>())
        .filter(|s| s.len() >= slipway_proto::message::MIN_SECRET_LEN && s.len() <= 64)
        .collect();
    let lines: Vec<(Option<Step>, String)> = input
        .lines
        .iter()
        .take(64)
        .map(|(build, line)| {
            let step = Some(if *build { Step::Build } else { Step::Test });
            let text = match line {
                Line::Text(t) => t.clone(),
                Line::Long(fragment, times) if !fragment.is_empty() => {
                    fragment.repeat(usize::from(*times).min(600_000 / fragment.len().max(1)))
                }
                Line::Long(..) => String::new(),
            };
            (step, text)
        })
        .collect();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_time().build().expect("runtime");
    let _inside = runtime.enter();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let reporter = Reporter::new(Outbox::new(tx), uuid::Uuid::nil(), 1, "fuzz".into(), uuid::Uuid::nil())
        .with_secrets(secrets.clone());
    for (step, text) in &lines {
        reporter.line(*step, text);
    }
    // A last line of its own step sends any line held back.
    reporter.line(None, "");
    let mut parts = Vec::new();
    while let Ok(msg) = rx.try_recv() {
        parts.extend(msg.log_lines().iter().cloned());
    }
    let mut out: Vec<(Option<Step>, String)> = Vec::new();
    let mut open = false;
    for (i, part) in parts.iter().enumerate() {
        assert_eq!(part.seq, i as u64 + 1, "lines are numbered in order, without gaps");
        match open {
            true => out.last_mut().expect("a line to continue").1.push_str(&part.line),
            false => out.push((part.step, part.line.clone())),
        }
        open = part.more;
    }
    assert!(!open, "the last part of a line says more follows");
    assert_eq!(out.pop().map(|(s, l)| (s, l.is_empty())), Some((None, true)), "the last line");
    assert_eq!(out.len(), lines.len(), "one line out for each line in");
    for (i, ((step, sent), (want_step, text))) in out.iter().zip(&lines).enumerate() {
        assert_eq!(step, want_step, "line {i}'s step");
        for secret in &secrets {
            assert!(!sent.contains(secret.as_str()), "line {i} shows a secret: {sent:?}");
        }
        if secrets.is_empty() {
            let raw = text.trim_end_matches(['\r', '\n']);
            assert_eq!(sent, &slipway_proto::text::escape_str(raw), "line {i} arrives as it was sent");
        }
    }
    // A secret split over two lines of one step is masked on both.
    for pair in out.windows(2).zip(lines.windows(2)) {
        let ([(_, a), (_, b)], [(sa, _), (sb, _)]) = pair else { continue };
        if sa != sb {
            continue;
        }
        for secret in &secrets {
            for k in 1..secret.len() {
                let (head, tail) = secret.split_at(k);
                assert!(
                    !(a.ends_with(head) && b.starts_with(tail)),
                    "a secret split over two lines shows: {a:?} / {b:?}"
                );
            }
        }
    }
});
