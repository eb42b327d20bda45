//! Masking of secret values in everything a runner sends: each value is looked for in every form
//! output commonly carries it in — plain, base64 (standard and URL-safe, padded or not), percent-
//! encoded, hex (lower and upper case) and JSON-escaped — with one multi-pattern automaton, and
//! every match is replaced by `***`.

use std::borrow::Cow;

use aho_corasick::{AhoCorasick, MatchKind};
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};

/// Replaces secret values, in any of their common encodings, by `***`.
#[derive(Debug, Clone, Default)]
pub struct Masker {
    automaton: Option<AhoCorasick>,
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
        match automaton {
            Ok(automaton) => Self { automaton: Some(automaton), withheld: false },
            Err(err) => {
                // Only a pattern set beyond the automaton's size limits gets here; showing output
                // unmasked would leak, so none is shown.
                tracing::error!(error = %err, "could not build the secret masker; output is withheld");
                Self { automaton: None, withheld: true }
            }
        }
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
}
