//! The outbound guard: what Slipway fetches from a URL a user gave (a repository) must be on a
//! public address. A URL must be `https`, `http`, `git` or `ssh` (scp-style `user@host:path`
//! too), carry no password, and every address its host resolves to must be public — not
//! loopback, link-local (cloud metadata), private, shared, unique-local, multicast or
//! unspecified — unless the operator allowed that host or network
//! (`SLIPWAY_ALLOW_PRIVATE_GIT`). The scheduler checks at registration, the runner again right
//! before it connects. Errors name the host and the kind of address, never what answered there.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, ToSocketAddrs};

use ipnet::IpNet;

/// Why a URL was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GuardError {
    #[error("the repository URL must be https://, http://, git://, ssh:// or scp-style user@host:path")]
    Scheme,
    #[error("the repository URL must not contain a password or token; give the app git_credentials instead")]
    Credentials,
    #[error("the repository URL is malformed: {0}")]
    Malformed(String),
    #[error("the repository host `{0}` could not be resolved")]
    Unresolved(String),
    #[error(
        "the repository host `{host}` resolves to {addr}, a {kind} address; Slipway fetches only from public \
         addresses unless the operator allows it (SLIPWAY_ALLOW_PRIVATE_GIT)"
    )]
    Internal { host: String, addr: IpAddr, kind: &'static str },
}

/// A repository URL's scheme, host and port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub scheme: String,
    /// Lowercase; an IPv6 address without brackets.
    pub host: String,
    pub port: u16,
}

/// Parses a repository URL into what the guard checks; refuses other schemes and credentials.
pub fn target(raw: &str) -> Result<Target, GuardError> {
    if raw.chars().any(|c| c.is_control() || c == ' ') || raw.len() > 2048 {
        return Err(GuardError::Malformed("it contains spaces or control characters, or is too long".into()));
    }
    if !raw.contains("://") {
        return scp_style(raw);
    }
    let url = url::Url::parse(raw).map_err(|e| GuardError::Malformed(e.to_string()))?;
    let scheme = url.scheme().to_ascii_lowercase();
    let default_port = match scheme.as_str() {
        "https" => 443,
        "http" => 80,
        "git" => 9418,
        "ssh" => 22,
        _ => return Err(GuardError::Scheme),
    };
    if url.password().is_some() || (!url.username().is_empty() && scheme != "ssh") {
        return Err(GuardError::Credentials);
    }
    let host = match url.host() {
        Some(url::Host::Domain(d)) => d.to_ascii_lowercase(),
        Some(url::Host::Ipv4(ip)) => ip.to_string(),
        Some(url::Host::Ipv6(ip)) => ip.to_string(),
        None => return Err(GuardError::Malformed("it has no host".into())),
    };
    let host = host.trim_start_matches('[').trim_end_matches(']').to_string();
    if host.is_empty() {
        return Err(GuardError::Malformed("it has no host".into()));
    }
    Ok(Target { scheme, host, port: url.port().unwrap_or(default_port) })
}

/// `[user@]host:path`, as git reads it: ssh to `host`.
fn scp_style(raw: &str) -> Result<Target, GuardError> {
    let Some((authority, path)) = raw.split_once(':') else { return Err(GuardError::Scheme) };
    // `<transport>::<address>` is git's remote-helper syntax (`ext::` runs a command).
    if path.is_empty() || path.starts_with(':') || authority.contains('/') || authority.is_empty() {
        return Err(GuardError::Scheme);
    }
    let host = match authority.rsplit_once('@') {
        Some((user, _)) if user.contains(':') || user.is_empty() => return Err(GuardError::Credentials),
        Some((_, host)) => host,
        None => authority,
    };
    if host.is_empty() || host.starts_with('-') || !host.chars().all(|c| c.is_ascii_alphanumeric() || "-._".contains(c))
    {
        return Err(GuardError::Malformed(format!("`{host}` is not a host name")));
    }
    Ok(Target { scheme: "ssh".into(), host: host.to_ascii_lowercase(), port: 22 })
}

/// The kind of an address Slipway does not fetch from by default, or `None` for a public one.
pub fn internal_kind(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => v4_kind(v4),
        IpAddr::V6(v6) => v6_kind(v6),
    }
}

fn v4_kind(ip: Ipv4Addr) -> Option<&'static str> {
    let [a, b, ..] = ip.octets();
    if ip.is_loopback() {
        Some("loopback")
    } else if ip.is_link_local() {
        Some("link-local")
    } else if ip.is_private() {
        Some("private")
    } else if a == 100 && (64..128).contains(&b) {
        Some("shared (carrier-grade NAT)")
    } else if a == 0 || ip.is_unspecified() {
        Some("unspecified")
    } else if ip.is_multicast() || ip.is_broadcast() || a >= 240 {
        Some("multicast or reserved")
    } else {
        None
    }
}

fn v6_kind(ip: Ipv6Addr) -> Option<&'static str> {
    if let Some(v4) = ip.to_ipv4_mapped() {
        return v4_kind(v4);
    }
    let first = ip.segments()[0];
    // NAT64 (64:ff9b::/96) reaches the IPv4 address in its last 32 bits.
    if ip.segments()[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        let [.., c, d] = ip.segments();
        return v4_kind(Ipv4Addr::from(((c as u32) << 16) | d as u32));
    }
    if ip.is_loopback() {
        Some("loopback")
    } else if ip.is_unspecified() {
        Some("unspecified")
    } else if first & 0xffc0 == 0xfe80 {
        Some("link-local")
    } else if first & 0xfe00 == 0xfc00 {
        Some("unique-local")
    } else if ip.is_multicast() {
        Some("multicast or reserved")
    } else {
        None
    }
}

/// The hosts and networks the operator allows although they are not public.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Guard {
    hosts: Vec<String>,
    nets: Vec<IpNet>,
}

impl Guard {
    /// Parses `SLIPWAY_ALLOW_PRIVATE_GIT`: comma-separated host names, addresses and CIDRs.
    pub fn parse(spec: &str) -> Result<Self, String> {
        let mut guard = Guard::default();
        for item in spec.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            if let Ok(net) = item.parse::<IpNet>() {
                guard.nets.push(net);
            } else if let Ok(ip) = item.trim_start_matches('[').trim_end_matches(']').parse::<IpAddr>() {
                guard.nets.push(IpNet::from(ip));
            } else if item.chars().all(|c| c.is_ascii_alphanumeric() || "-._".contains(c)) && !item.starts_with('-') {
                guard.hosts.push(item.to_ascii_lowercase());
            } else {
                return Err(format!("SLIPWAY_ALLOW_PRIVATE_GIT: `{item}` is not a host name, address or CIDR"));
            }
        }
        Ok(guard)
    }

    /// Whether `addr` of `host` may be fetched from.
    pub fn check_addr(&self, host: &str, addr: IpAddr) -> Result<(), GuardError> {
        let Some(kind) = internal_kind(addr) else { return Ok(()) };
        if self.hosts.iter().any(|h| h == host) || self.nets.iter().any(|n| n.contains(&addr)) {
            return Ok(());
        }
        Err(GuardError::Internal { host: host.to_string(), addr, kind })
    }

    /// Checks a URL and every address its host resolves to now. Blocking (name resolution).
    pub fn check(&self, raw: &str) -> Result<(Target, Vec<SocketAddr>), GuardError> {
        let target = target(raw)?;
        let addrs: Vec<SocketAddr> = match target.host.parse::<IpAddr>() {
            Ok(ip) => vec![SocketAddr::new(ip, target.port)],
            Err(_) => (target.host.as_str(), target.port)
                .to_socket_addrs()
                .map_err(|_| GuardError::Unresolved(target.host.clone()))?
                .collect(),
        };
        if addrs.is_empty() {
            return Err(GuardError::Unresolved(target.host.clone()));
        }
        for addr in &addrs {
            self.check_addr(&target.host, addr.ip())?;
        }
        Ok((target, addrs))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_four_schemes_without_credentials() {
        for ok in [
            "https://github.com/acme/web.git",
            "http://example.com/r",
            "git://example.com:9418/r.git",
            "ssh://git@example.com/acme/web.git",
            "git@github.com:acme/web.git",
            "github.com:acme/web.git",
        ] {
            assert!(target(ok).is_ok(), "{ok}");
        }
        for (bad, want) in [
            ("file:///etc/passwd", GuardError::Scheme),
            ("/srv/repo.git", GuardError::Scheme),
            ("ext::sh -c touch% /tmp/pwned", GuardError::Malformed(String::new())),
            ("ext::true", GuardError::Scheme),
            ("https://user:token@github.com/a/b", GuardError::Credentials),
            ("https://token@github.com/a/b", GuardError::Credentials),
            ("ssh://git:secret@example.com/r", GuardError::Credentials),
            ("ftp://example.com/r", GuardError::Scheme),
        ] {
            let err = target(bad).expect_err(bad);
            assert_eq!(std::mem::discriminant(&err), std::mem::discriminant(&want), "{bad}: {err}");
        }
    }

    #[test]
    fn odd_spellings_of_an_address_are_read_as_that_address() {
        assert_eq!(target("http://0x7f000001/r").expect("hex").host, "127.0.0.1");
        assert_eq!(target("http://2130706433/r").expect("decimal").host, "127.0.0.1");
        assert_eq!(target("http://[::1]:5432/r").expect("v6").host, "::1");
        assert_eq!(target("HTTPS://GitHub.COM/a").expect("case").host, "github.com");
    }

    #[test]
    fn internal_addresses_are_refused_unless_allowed() {
        let guard = Guard::default();
        for url in [
            "http://169.254.169.254/latest/meta-data/",
            "http://127.0.0.1:5432/r",
            "http://127.0.0.1:5672/r",
            "http://127.0.0.1:5000/r",
            "http://[::1]/r",
            "http://0x7f000001/r",
            "http://2130706433/r",
            "http://10.1.2.3/r",
            "http://192.168.1.1/r",
            "http://172.16.0.1/r",
            "http://100.64.0.1/r",
            "http://0.0.0.0/r",
            "http://[fd00::1]/r",
            "http://[fe80::1]/r",
            "http://[::ffff:127.0.0.1]/r",
            "http://[64:ff9b::a9fe:a9fe]/r",
            "git://localhost:9418/r",
        ] {
            match guard.check(url) {
                Err(GuardError::Internal { .. }) => {}
                other => panic!("{url} should be refused as internal, got {other:?}"),
            }
        }
        assert!(guard.check("https://93.184.216.34/r").is_ok());
        let allowed = Guard::parse("127.0.0.1, 10.0.0.0/8, git.internal").expect("spec");
        assert!(allowed.check("git://127.0.0.1:9418/r").is_ok());
        assert!(allowed.check("http://10.9.9.9/r").is_ok());
        assert!(allowed.check("http://[::1]/r").is_err(), "only what is listed");
        assert!(allowed.check_addr("git.internal", "10.0.0.1".parse().expect("ip")).is_ok());
        assert!(allowed.check_addr("git.internal", "192.168.0.1".parse().expect("ip")).is_ok());
    }

    #[test]
    fn the_error_names_the_kind_not_what_listens() {
        let err = Guard::default().check("http://127.0.0.1:5432/r").expect_err("refused").to_string();
        assert!(err.contains("loopback") && err.contains("SLIPWAY_ALLOW_PRIVATE_GIT"), "{err}");
        assert!(!err.contains("5432"), "{err}");
    }

    #[test]
    fn allow_lists_are_parsed_strictly() {
        assert!(Guard::parse("").expect("empty") == Guard::default());
        assert!(Guard::parse("127.0.0.1,::1,fd00::/8,git.example.com").is_ok());
        assert!(Guard::parse("not a host").is_err());
        assert!(Guard::parse("10.0.0.0/99").is_err());
    }
}
