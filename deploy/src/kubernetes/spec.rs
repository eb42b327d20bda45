//! What an app declares for Kubernetes, with defaults, and its validation: every bad value is a
//! clear error before anything is applied.

use std::collections::BTreeMap;

use serde::Deserialize;

/// How a new revision replaces the old one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum StrategyKind {
    /// Pods replaced gradually, never fewer ready than desired (maxSurge 25%, maxUnavailable 0).
    #[default]
    Rolling,
    /// All old pods stop before new ones start.
    Recreate,
    /// A second Deployment; the Service switches once it is ready.
    BlueGreen,
    /// Replica-weighted steps with a bake time each.
    Canary,
}

/// An app's Kubernetes settings (YAML for `slipway manifests --config`, or built from the app).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KubeSpec {
    pub name: String,
    pub environment: String,
    /// Default: `app-<name>`.
    pub namespace: Option<String>,
    pub port: u32,
    pub health_path: String,
    pub replicas: i32,
    /// With both set, a HorizontalPodAutoscaler owns the replica count.
    pub min_replicas: Option<i32>,
    pub max_replicas: Option<i32>,
    pub target_cpu_percent: i32,
    pub cpu_request: String,
    pub cpu_limit: String,
    pub memory_request: String,
    pub memory_limit: String,
    /// An Ingress is made when the app has a host.
    pub host: Option<String>,
    pub ingress_class: String,
    pub tls_secret: Option<String>,
    /// Namespace of the ingress controller, the only other namespace allowed to reach the app.
    pub ingress_namespace: String,
    pub env: BTreeMap<String, String>,
    pub secret_env: BTreeMap<String, String>,
    pub progress_deadline_seconds: i32,
    pub quota_cpu: String,
    pub quota_memory: String,
    pub quota_pods: String,
    pub strategy: StrategyKind,
    /// Canary steps as percentages of the desired replicas, ending at 100.
    pub canary_steps: Vec<u32>,
    pub bake_seconds: u64,
}

impl Default for KubeSpec {
    fn default() -> Self {
        Self {
            name: String::new(),
            environment: "production".into(),
            namespace: None,
            port: 8080,
            health_path: "/".into(),
            replicas: 2,
            min_replicas: None,
            max_replicas: None,
            target_cpu_percent: 70,
            cpu_request: "100m".into(),
            cpu_limit: "1".into(),
            memory_request: "128Mi".into(),
            memory_limit: "512Mi".into(),
            host: None,
            ingress_class: "nginx".into(),
            tls_secret: None,
            ingress_namespace: "ingress-nginx".into(),
            env: BTreeMap::new(),
            secret_env: BTreeMap::new(),
            progress_deadline_seconds: 300,
            quota_cpu: "8".into(),
            quota_memory: "16Gi".into(),
            quota_pods: "50".into(),
            strategy: StrategyKind::Rolling,
            canary_steps: vec![10, 50, 100],
            bake_seconds: 60,
        }
    }
}

/// A value that cannot become a valid manifest.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct SpecError {
    pub field: &'static str,
    pub message: String,
}

fn err(field: &'static str, message: impl Into<String>) -> Result<(), SpecError> {
    Err(SpecError { field, message: message.into() })
}

impl KubeSpec {
    /// The namespace the app lives in.
    pub fn namespace(&self) -> String {
        self.namespace.clone().unwrap_or_else(|| format!("app-{}", self.name))
    }

    /// Checks every field; the first problem found is the error.
    pub fn validate(&self) -> Result<(), SpecError> {
        if !is_dns_label(&self.name) || self.name.len() > 40 {
            return err(
                "name",
                format!(
                    "`{}` must be a DNS-1123 label of at most 40 characters (lowercase letters, digits, '-')",
                    self.name
                ),
            );
        }
        if !is_dns_label(&self.environment) {
            return err("environment", format!("`{}` must be a DNS-1123 label", self.environment));
        }
        if !is_dns_label(&self.namespace()) {
            return err("namespace", format!("`{}` must be a DNS-1123 label", self.namespace()));
        }
        if !is_dns_label(&self.ingress_namespace) {
            return err("ingress_namespace", format!("`{}` must be a DNS-1123 label", self.ingress_namespace));
        }
        if !(1..=65535).contains(&self.port) {
            return err("port", format!("{} is out of range 1-65535", self.port));
        }
        if !self.health_path.starts_with('/') || self.health_path.chars().any(|c| c.is_control() || c == ' ') {
            return err("health_path", "must be an absolute URL path such as /healthz");
        }
        if self.replicas < 0 {
            return err("replicas", "must not be negative");
        }
        match (self.min_replicas, self.max_replicas) {
            (Some(min), Some(max)) if min < 1 || max < min => {
                return err("min_replicas", "needs 1 <= min_replicas <= max_replicas");
            }
            (Some(_), None) | (None, Some(_)) => {
                return err("max_replicas", "min_replicas and max_replicas go together");
            }
            _ => {}
        }
        if !(1..=100).contains(&self.target_cpu_percent) {
            return err("target_cpu_percent", "must be 1-100");
        }
        for (field, q) in [
            ("cpu_request", &self.cpu_request),
            ("cpu_limit", &self.cpu_limit),
            ("memory_request", &self.memory_request),
            ("memory_limit", &self.memory_limit),
            ("quota_cpu", &self.quota_cpu),
            ("quota_memory", &self.quota_memory),
            ("quota_pods", &self.quota_pods),
        ] {
            if !is_quantity(q) {
                return err(field, format!("`{q}` is not a Kubernetes quantity (e.g. 250m, 1.5, 512Mi, 2Gi)"));
            }
        }
        if let Some(host) = &self.host
            && !is_dns_name(host.strip_prefix("*.").unwrap_or(host))
        {
            return err("host", format!("`{host}` is not a valid DNS name"));
        }
        if !is_dns_subdomain(&self.ingress_class) {
            return err("ingress_class", format!("`{}` is not a valid class name", self.ingress_class));
        }
        if let Some(tls) = &self.tls_secret
            && !is_dns_subdomain(tls)
        {
            return err("tls_secret", format!("`{tls}` is not a valid Secret name"));
        }
        for key in self.env.keys().chain(self.secret_env.keys()) {
            let ok = !key.is_empty() && key.chars().all(|c| c.is_ascii_alphanumeric() || "_-.".contains(c));
            if !ok || key.chars().next().is_some_and(|c| c.is_ascii_digit()) {
                return err("env", format!("`{key}` is not a valid environment variable name"));
            }
        }
        if let Some(k) = self.env.keys().find(|k| self.secret_env.contains_key(*k)) {
            return err("secret_env", format!("`{k}` is both a plain and a secret variable"));
        }
        if !(1..=86_400).contains(&self.progress_deadline_seconds) {
            return err("progress_deadline_seconds", "must be 1-86400");
        }
        let steps = &self.canary_steps;
        if steps.is_empty() || steps.last() != Some(&100) || steps.windows(2).any(|w| w[0] >= w[1]) || steps[0] == 0 {
            return err("canary_steps", "must rise strictly from above 0 to 100, e.g. [10, 50, 100]");
        }
        Ok(())
    }
}

/// A DNS-1123 label: 1-63 of `[a-z0-9-]`, starting and ending alphanumeric.
pub fn is_dns_label(s: &str) -> bool {
    let alnum = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit();
    !s.is_empty()
        && s.len() <= 63
        && s.chars().all(|c| alnum(c) || c == '-')
        && s.starts_with(alnum)
        && s.ends_with(alnum)
}

/// A DNS-1123 subdomain: dot-separated labels, at most 253 characters.
pub fn is_dns_subdomain(s: &str) -> bool {
    s.len() <= 253 && s.split('.').all(is_dns_label)
}

/// A host name for an Ingress: a subdomain with at least two labels, none all-numeric at the end.
pub fn is_dns_name(s: &str) -> bool {
    let s = s.to_ascii_lowercase();
    is_dns_subdomain(&s)
        && s.contains('.')
        && !s.rsplit('.').next().is_some_and(|tld| tld.chars().all(|c| c.is_ascii_digit()))
}

/// A Kubernetes resource quantity: a decimal number with an optional binary, decimal or
/// exponent suffix.
pub fn is_quantity(s: &str) -> bool {
    let body = s.strip_prefix(['+', '-']).unwrap_or(s);
    let digits_end = body.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(body.len());
    let (number, suffix) = body.split_at(digits_end);
    let number_ok = !number.is_empty()
        && number != "."
        && number.matches('.').count() <= 1
        && number.chars().any(|c| c.is_ascii_digit());
    let suffix_ok = matches!(
        suffix,
        "" | "Ki" | "Mi" | "Gi" | "Ti" | "Pi" | "Ei" | "n" | "u" | "m" | "k" | "M" | "G" | "T" | "P" | "E"
    ) || suffix.strip_prefix(['e', 'E']).is_some_and(|e| {
        let e = e.strip_prefix(['+', '-']).unwrap_or(e);
        !e.is_empty() && e.chars().all(|c| c.is_ascii_digit())
    });
    number_ok && suffix_ok && s.len() <= 64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> KubeSpec {
        KubeSpec { name: "web".into(), ..Default::default() }
    }

    #[test]
    fn defaults_are_valid() {
        spec().validate().expect("valid");
    }

    #[test]
    fn quantities() {
        for ok in ["100m", "1", "1.5", "0.5", "512Mi", "2Gi", "1e3", "1E-2", "+1", "250u", ".5"] {
            assert!(is_quantity(ok), "{ok}");
        }
        for bad in ["", "m", "1.2.3", "12 Mi", "1Gb", "abc", "1e", "--1", "."] {
            assert!(!is_quantity(bad), "{bad}");
        }
    }

    #[test]
    fn every_bad_value_is_named_before_anything_is_applied() {
        let cases: Vec<(KubeSpec, &str)> = vec![
            (KubeSpec { name: "Web_1".into(), ..spec() }, "name"),
            (KubeSpec { name: "a".repeat(41), ..spec() }, "name"),
            (KubeSpec { port: 0, ..spec() }, "port"),
            (KubeSpec { port: 70000, ..spec() }, "port"),
            (KubeSpec { memory_limit: "lots".into(), ..spec() }, "memory_limit"),
            (KubeSpec { cpu_request: "1.2.3".into(), ..spec() }, "cpu_request"),
            (KubeSpec { host: Some("not a host".into()), ..spec() }, "host"),
            (KubeSpec { host: Some("localhost".into()), ..spec() }, "host"),
            (KubeSpec { host: Some("-bad.example.com".into()), ..spec() }, "host"),
            (KubeSpec { min_replicas: Some(3), max_replicas: Some(2), ..spec() }, "min_replicas"),
            (KubeSpec { min_replicas: Some(3), ..spec() }, "max_replicas"),
            (KubeSpec { health_path: "healthz".into(), ..spec() }, "health_path"),
            (KubeSpec { canary_steps: vec![50, 10, 100], ..spec() }, "canary_steps"),
            (KubeSpec { tls_secret: Some("Bad Secret".into()), ..spec() }, "tls_secret"),
            (KubeSpec { namespace: Some("Prod".into()), ..spec() }, "namespace"),
        ];
        for (s, field) in cases {
            let e = s.validate().expect_err(field);
            assert_eq!(e.field, field, "{e}");
        }
        KubeSpec { host: Some("*.apps.example.com".into()), ..spec() }.validate().expect("wildcard host");
    }
}
