//! Validation of names that become image names, container names and hostnames.

/// Why a name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("{what} must not be empty")]
    Empty { what: &'static str },
    #[error("{what} `{name}` is longer than 63 characters")]
    TooLong { what: &'static str, name: String },
    #[error(
        "{what} `{name}` may contain only lowercase letters, digits and '-', and must start and end with a letter or digit"
    )]
    Invalid { what: &'static str, name: String },
}

/// Checks `name` against the DNS-1123 label rules (what Kubernetes and image names accept).
pub fn validate_dns_label(what: &'static str, name: &str) -> Result<(), NameError> {
    if name.is_empty() {
        return Err(NameError::Empty { what });
    }
    if name.len() > 63 {
        return Err(NameError::TooLong { what, name: name.chars().take(80).collect() });
    }
    let ok_char = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-';
    let alnum = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit();
    let first = name.chars().next().is_some_and(alnum);
    let last = name.chars().last().is_some_and(alnum);
    if !(first && last && name.chars().all(ok_char)) {
        return Err(NameError::Invalid { what, name: name.to_string() });
    }
    Ok(())
}

/// The environment of a pull request's preview: `pr-<number>`. Apps may not name their own
/// environment so; everything that serves an app tells a preview by this name (its host on the
/// edge is `pr-<number>.<app>.<domain>`, its Kubernetes namespace its own).
pub fn preview_environment(number: u64) -> String {
    format!("pr-{number}")
}

/// The pull request number of a preview environment (`pr-<number>`, no leading zero).
pub fn preview_number(environment: &str) -> Option<u64> {
    let digits = environment.strip_prefix("pr-")?;
    let plain = !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) && !digits.starts_with('0');
    plain.then(|| digits.parse().ok()).flatten()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn preview_environments_are_pr_and_a_number() {
        assert_eq!(preview_environment(12), "pr-12");
        assert_eq!(preview_number("pr-12"), Some(12));
        for not in ["production", "pr-", "pr-0", "pr-012", "pr-1a", "pr--1", "xpr-1", "pr-99999999999999999999999"] {
            assert_eq!(preview_number(not), None, "{not}");
        }
    }

    #[test]
    fn accepts_dns_labels() {
        for ok in ["a", "web", "my-app-2", "0abc", &"a".repeat(63)] {
            assert_eq!(validate_dns_label("app name", ok), Ok(()), "{ok}");
        }
    }

    #[test]
    fn refuses_what_is_not_a_dns_label() {
        for bad in ["", "Web", "-web", "web-", "my_app", "a.b", "ä", "web app", &"a".repeat(64)] {
            let err = validate_dns_label("app name", bad).expect_err(bad);
            assert!(err.to_string().contains("app name"), "{err}");
        }
    }
}
