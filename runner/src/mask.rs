//! Masking of secret values in everything a runner sends: each value is looked for in every form
//! output commonly carries it in — plain, base64 (standard and URL-safe, padded or not), percent-
//! encoded, hex (lower and upper case) and JSON-escaped — with one multi-pattern automaton, and
//! every match is replaced by `***`.

use std::borrow::Cow;

use aho_corasick::automaton::Automaton;
use aho_corasick::{AhoCorasick, Anchored, MatchKind};
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};

/// Replaces secret values, in any of their common encodings, by `***`.
#[derive(Debug, Clone, Default)]
pub struct Masker {
    automaton: Option<AhoCorasick>,
    /// The same patterns, for asking whether a text ends with the start of one (a secret a
    /// line break may have split).
    prefixes: Option<aho_corasick::dfa::DFA>,
    /// The longest pattern, in bytes.
    longest: usize,
    /// The automaton could not be built: nothing is shown rather than something unmasked.
    withheld: bool,
}

/// Every form of `value` to look for.
fn forms(value: &str) -> Vec<String> {
    let bytes = value.as_bytes();
    let mut out = vec![value.to_string()];
    for engine in [&STANDARD, &STANDARD_NO_PAD, &URL_SAFE, &URL_SAFE_NO_PAD] {
        out.push(engine.encode(bytes));
    }
    out.push(percent_encoding::utf8_percent_encode(value, percent_encoding::NON_ALPHANUMERIC).to_string());
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    out.push(hex.to_ascii_uppercase());
    out.push(hex);
    if let Ok(json) = serde_json::to_string(value) {
        out.push(json.trim_matches('"').to_string());
    }
    out
}

impl Masker {
    /// A masker for `values` (values shorter than [`slipway_proto::message::MIN_SECRET_LEN`] are
    /// too common to mask; registration refuses them as secrets).
    pub fn new(values: &[String]) -> Self {
        let min = slipway_proto::message::MIN_SECRET_LEN;
        let mut patterns: Vec<String> =
            values.iter().filter(|v| v.len() >= min).flat_map(|v| forms(v)).filter(|p| p.len() >= min).collect();
        patterns.sort();
        patterns.dedup();
        if patterns.is_empty() {
            return Self::default();
        }
        let automaton = AhoCorasick::builder().match_kind(MatchKind::LeftmostLongest).build(&patterns);
        let prefixes = aho_corasick::dfa::DFA::new(&patterns);
        let longest = patterns.iter().map(String::len).max().unwrap_or(0);
        match (automaton, prefixes) {
            (Ok(automaton), Ok(prefixes)) => {
                Self { automaton: Some(automaton), prefixes: Some(prefixes), longest, withheld: false }
            }
            (Err(err), _) | (_, Err(err)) => {
                // Only a pattern set beyond the automaton's size limits gets here; showing output
                // unmasked would leak, so none is shown.
                tracing::error!(error = %err, "could not build the secret masker; output is withheld");
                Self { withheld: true, ..Self::default() }
            }
        }
    }

    /// Whether `text` ends with the beginning of a secret form (so the next line may hold its
    /// rest). Looks at the last bytes only.
    pub fn ends_in_prefix(&self, text: &str) -> bool {
        let Some(dfa) = &self.prefixes else { return false };
        let Ok(mut sid) = dfa.start_state(Anchored::No) else { return false };
        let tail = &text.as_bytes()[text.len().saturating_sub(self.longest.saturating_sub(1))..];
        for &byte in tail {
            sid = dfa.next_state(Anchored::No, sid, byte);
        }
        !dfa.is_start(sid)
    }

    /// A text of several lines masked, also where a secret is split over two of them.
    pub fn mask_lines(&self, text: &str) -> String {
        if !text.contains('\n') {
            return self.mask(text).into_owned();
        }
        let mut out: Vec<String> = Vec::new();
        let mut pending: Option<String> = None;
        for line in text.split('\n') {
            let current = match pending.take() {
                Some(previous) => {
                    let (first, second) = self.mask_pair(&previous, line);
                    out.push(first);
                    second
                }
                None => self.mask(line).into_owned(),
            };
            pending = Some(current);
        }
        out.extend(pending);
        out.join("\n")
    }

    /// `first` and `second` (consecutive lines) masked, also where a secret form begins at the
    /// end of `first` and ends at the start of `second`: both parts become `***`.
    pub fn mask_pair(&self, first: &str, second: &str) -> (String, String) {
        if self.withheld {
            return (self.mask(first).into_owned(), self.mask(second).into_owned());
        }
        let Some(ac) = &self.automaton else { return (first.to_string(), second.to_string()) };
        let joined = format!("{first}{second}");
        let boundary = first.len();
        let (mut a, mut b) = (String::with_capacity(first.len()), String::with_capacity(second.len()));
        let mut at = 0;
        for m in ac.find_iter(&joined) {
            let (start, end) = (m.start(), m.end());
            if end <= boundary {
                a.push_str(&joined[at..start]);
                a.push_str("***");
            } else if start >= boundary {
                if at < boundary {
                    a.push_str(&joined[at..boundary]);
                    at = boundary;
                }
                b.push_str(&joined[at..start]);
                b.push_str("***");
            } else {
                a.push_str(&joined[at..start]);
                a.push_str("***");
                b.push_str("***");
            }
            at = end;
        }
        if at < boundary {
            a.push_str(&joined[at..boundary]);
            at = boundary;
        }
        b.push_str(&joined[at..]);
        (a, b)
    }

    /// `text` with every secret form replaced by `***`.
    pub fn mask<'a>(&self, text: &'a str) -> Cow<'a, str> {
        if self.withheld {
            return Cow::Borrowed("[output withheld: the secret masker could not be built]");
        }
        match &self.automaton {
            Some(ac) if ac.is_match(text) => Cow::Owned(ac.replace_all(text, &vec!["***"; ac.patterns_len()])),
            _ => Cow::Borrowed(text),
        }
    }
}

/// The secrets of every job this process runs (and its own), for masking the runner's own log:
/// a job's reporter registers its values ([`register`]) for as long as any copy of it lives.
#[derive(Default)]
struct Registry {
    next: u64,
    values: std::collections::BTreeMap<u64, Vec<String>>,
    masker: std::sync::Arc<Masker>,
}

static REGISTRY: std::sync::LazyLock<std::sync::Mutex<Registry>> = std::sync::LazyLock::new(Default::default);

fn registry() -> std::sync::MutexGuard<'static, Registry> {
    REGISTRY.lock().unwrap_or_else(|e| e.into_inner())
}

impl Registry {
    fn rebuild(&mut self) {
        let all: Vec<String> = self.values.values().flatten().cloned().collect();
        self.masker = std::sync::Arc::new(Masker::new(&all));
    }
}

/// Values masked in the runner's own log until this is dropped.
#[derive(Debug)]
pub struct Registration(u64);

impl Drop for Registration {
    fn drop(&mut self) {
        let mut registry = registry();
        registry.values.remove(&self.0);
        registry.rebuild();
    }
}

/// Masks `values` in the runner's own log until the registration is dropped.
pub fn register(values: Vec<String>) -> Registration {
    let mut registry = registry();
    registry.next += 1;
    let id = registry.next;
    registry.values.insert(id, values);
    registry.rebuild();
    Registration(id)
}

/// `text` with every registered secret masked.
pub fn mask_own_log(text: &str) -> String {
    let masker = registry().masker.clone();
    masker.mask_lines(text)
}

/// The runner's own log on stderr, each event masked before it is written
/// (`tracing_subscriber::fmt().with_writer(MaskedStderr::default)`).
#[derive(Debug, Default)]
pub struct MaskedStderr {
    buf: Vec<u8>,
}

impl std::io::Write for MaskedStderr {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for MaskedStderr {
    /// An event is formatted into the buffer in several writes; it is masked whole here.
    fn drop(&mut self) {
        use std::io::Write;
        let text = String::from_utf8_lossy(&self.buf);
        let _ = std::io::stderr().lock().write_all(mask_own_log(&text).as_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_secret_kind_is_masked_in_every_encoding() {
        let secrets = [
            "s3cr3t-token-value".to_string(),
            "postgres://app:pa55word@db.internal:5432/app".to_string(),
            "AKIAIOSFODNN7EXAMPLE".to_string(),
            "line1\nline2 \"quoted\" \\ back".to_string(),
            "ünïcödé-pässwörd".to_string(),
        ];
        let masker = Masker::new(&secrets);
        let mut leaks = Vec::new();
        for secret in &secrets {
            for form in forms(secret) {
                let text = format!("before {form} after");
                let masked = masker.mask(&text);
                if masked.contains(&form) || !masked.contains("***") {
                    leaks.push(format!("{secret:?} as {form:?}: {masked}"));
                }
            }
        }
        assert!(leaks.is_empty(), "leaks: {leaks:#?}");
        assert_eq!(masker.mask("nothing secret here"), "nothing secret here");
    }

    #[test]
    fn the_runner_log_masks_what_is_registered_while_it_is() {
        let value = "registered-secret-0001".to_string();
        assert_eq!(mask_own_log(&format!("error: {value}")), format!("error: {value}"));
        let registration = register(vec![value.clone()]);
        assert_eq!(mask_own_log(&format!("error: {value}")), "error: ***");
        let encoded = STANDARD.encode(&value);
        assert_eq!(mask_own_log(&format!("b64 {encoded}")), "b64 ***");
        drop(registration);
        assert_eq!(mask_own_log(&format!("error: {value}")), format!("error: {value}"));
    }

    #[test]
    fn a_secret_split_over_two_lines_is_masked_on_both() {
        let secret = "s3cr3t-token-value".to_string();
        let masker = Masker::new(std::slice::from_ref(&secret));
        for form in forms(&secret) {
            for cut in 1..form.len() {
                if !form.is_char_boundary(cut) {
                    continue;
                }
                let (head, tail) = form.split_at(cut);
                let first = format!("value: {head}");
                assert!(masker.ends_in_prefix(&first), "{first:?} should be held");
                let (a, b) = masker.mask_pair(&first, &format!("{tail} (end)"));
                assert_eq!((a.as_str(), b.as_str()), ("value: ***", "*** (end)"), "{form} cut at {cut}");
            }
        }
        // Whole secrets on either line, and lines that merely look alike, are kept apart.
        let (a, b) = masker.mask_pair("x s3cr3t-token-value y", "s3cr3t-token-value");
        assert_eq!((a.as_str(), b.as_str()), ("x *** y", "***"));
        let (a, b) = masker.mask_pair("ends with s3cr3t", "-but the rest differs");
        assert_eq!((a.as_str(), b.as_str()), ("ends with s3cr3t", "-but the rest differs"));
        assert!(!masker.ends_in_prefix("nothing here."));
        assert_eq!(masker.mask_lines("a s3cr3t-\ntoken-value b\nc s3cr3t-token-value"), "a ***\n*** b\nc ***");
        assert!(!Masker::new(&[]).ends_in_prefix("s3cr3t"));
    }
}
