//! The edge: Caddy in front of the docker target's apps, driven through its admin API on
//! loopback — never discovered from container labels, never templated into a file. Each app has
//! one route on this installation's server (`slipway-<installation>`), matching its stable host
//! `<app>.<domain>` (and its own extra hosts) and proxying to the one container that serves it.
//!
//! A switch is one config change, made only once the new container is healthy: the app's hosts
//! go to the new upstream, and the old upstreams stay in the route under a host no client sends,
//! which keeps them in Caddy's upstream pool so `GET /reverse_proxy/upstreams` goes on counting
//! their in-flight requests. When they reach 0 (or the drain timeout passes) the old container
//! stops; the held entry is dropped by the next switch. Every config change makes Caddy close
//! idle keep-alive connections, so a switch costs exactly one.

use std::time::Duration;

use serde_json::{Value, json};

use crate::docker::error_chain;

/// Where the edge is and what it serves.
#[derive(Debug, Clone)]
pub struct EdgeConfig {
    /// Caddy's admin API, e.g. `http://127.0.0.1:2019`.
    pub admin: String,
    /// The address the apps' server listens on, e.g. `127.0.0.1:8880` or `:443`.
    pub listen: String,
    /// Apps answer at `<app>.<domain>`.
    pub domain: String,
    /// Caddy's automatic HTTPS for the apps' hosts (a real domain); off, plain HTTP.
    pub https: bool,
    /// This installation: its server and routes carry it, and only they are touched.
    pub installation: String,
}

/// Why the edge could not be configured.
#[derive(Debug, thiserror::Error)]
pub enum EdgeError {
    #[error("the edge proxy's admin API at {admin} is unreachable: {detail}")]
    Unreachable { admin: String, detail: String },
    #[error("the edge proxy refused {what}: {status} {body}")]
    Refused { what: String, status: u16, body: String },
}

/// This installation's handle on Caddy.
#[derive(Debug, Clone)]
pub struct Edge {
    config: EdgeConfig,
    http: reqwest::Client,
}

impl Edge {
    pub fn new(config: EdgeConfig) -> Self {
        // A fresh connection per call: Caddy replaces its admin server when it loads a config,
        // closing the idle connections a pool would keep (found under load: "connection reset").
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .pool_max_idle_per_host(0)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap_or_default();
        Self { config, http }
    }

    /// The stable host name of the app's environment: `<app>.<domain>`, and for a pull
    /// request's preview (`pr-<n>`) `pr-<n>.<app>.<domain>`.
    pub fn host(&self, app: &str, environment: &str) -> String {
        match slipway_proto::preview_number(environment) {
            Some(n) => format!("pr-{n}.{app}.{}", self.config.domain),
            None => format!("{app}.{}", self.config.domain),
        }
    }

    /// The stable URL of the app's environment: `http://<app>.localhost:8880`,
    /// `https://<app>.example.com`, `https://pr-7.<app>.example.com`.
    pub fn url(&self, app: &str, environment: &str) -> String {
        let scheme = if self.config.https { "https" } else { "http" };
        let port = self.config.listen.rsplit_once(':').map(|(_, p)| p).unwrap_or("");
        let default = if self.config.https { "443" } else { "80" };
        let host = self.host(app, environment);
        match port {
            "" => format!("{scheme}://{host}"),
            p if p == default => format!("{scheme}://{host}"),
            p => format!("{scheme}://{host}:{p}"),
        }
    }

    fn server(&self) -> String {
        format!("slipway-{}", self.config.installation)
    }

    fn route_id(&self, app: &str, environment: &str) -> String {
        format!("slipway-{}-{app}-{environment}", self.config.installation)
    }

    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<(u16, String), EdgeError> {
        let url = format!("{}{path}", self.config.admin.trim_end_matches('/'));
        let mut request = self.http.request(method, &url);
        if let Some(body) = body {
            request = request.header("content-type", "application/json").body(body.to_string());
        }
        let response = request
            .send()
            .await
            .map_err(|err| EdgeError::Unreachable { admin: self.config.admin.clone(), detail: error_chain(&err) })?;
        let status = response.status().as_u16();
        let text = response.text().await.unwrap_or_default();
        Ok((status, text))
    }

    async fn expect_ok(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&Value>,
        what: &str,
    ) -> Result<String, EdgeError> {
        let (status, text) = self.call(method, path, body).await?;
        match status {
            200..=299 => Ok(text),
            _ => Err(EdgeError::Refused { what: what.to_string(), status, body: text.chars().take(500).collect() }),
        }
    }

    /// Creates `path` with `value` unless something is there already (safe against another
    /// runner doing the same at once: Caddy's PUT refuses to replace).
    async fn create(&self, path: &str, value: Value) -> Result<(), EdgeError> {
        let (status, text) = self.call(reqwest::Method::PUT, path, Some(&value)).await?;
        match status {
            200..=299 => Ok(()),
            _ if text.contains("already exists") => Ok(()),
            _ => Err(EdgeError::Refused {
                what: format!("creating {path}"),
                status,
                body: text.chars().take(500).collect(),
            }),
        }
    }

    /// Whether this installation's server is configured (it is not after Caddy restarted with an
    /// empty config).
    pub async fn has_server(&self) -> Result<bool, EdgeError> {
        let (status, text) =
            self.call(reqwest::Method::GET, &format!("/config/apps/http/servers/{}", self.server()), None).await?;
        Ok(status == 200 && text.trim() != "null")
    }

    /// Makes sure this installation's server exists, creating what is missing above it.
    pub async fn ensure_server(&self) -> Result<(), EdgeError> {
        if self.has_server().await? {
            return Ok(());
        }
        self.create("/config/apps", json!({"http": {"servers": {}}})).await?;
        self.create("/config/apps/http", json!({"servers": {}})).await?;
        self.create("/config/apps/http/servers", json!({})).await?;
        // The last route answers a host no app has (a torn-down preview, a typo) with a 404;
        // app routes are inserted before it.
        let unrouted = json!({
            "@id": format!("{}-unrouted", self.server()),
            "handle": [{"handler": "static_response", "status_code": 404, "body": "no app answers at this address\n"}],
        });
        let mut server = json!({"listen": [self.config.listen], "routes": [unrouted]});
        if !self.config.https {
            server["automatic_https"] = json!({"disable": true});
        }
        self.create(&format!("/config/apps/http/servers/{}", self.server()), server).await
    }

    /// The app's route: its hosts go to `dial`; `draining` upstreams stay referenced under a host
    /// no client sends, so Caddy keeps counting their in-flight requests after the switch.
    fn route_value(&self, id: &str, hosts: &[String], dial: &str, draining: &[String]) -> Value {
        let proxy = |dials: &[String]| {
            let upstreams: Vec<Value> = dials.iter().map(|d| json!({"dial": d})).collect();
            json!([{"handler": "reverse_proxy", "upstreams": upstreams}])
        };
        let drain_host = format!("{id}.drain.invalid");
        let mut all_hosts = hosts.to_vec();
        let mut routes = vec![json!({"match": [{"host": hosts}], "handle": proxy(&[dial.to_string()])})];
        if !draining.is_empty() {
            all_hosts.push(drain_host.clone());
            routes.push(json!({"match": [{"host": [drain_host]}], "handle": proxy(draining)}));
        }
        json!({
            "@id": id,
            "match": [{"host": all_hosts}],
            "handle": [{"handler": "subroute", "routes": routes}],
            "terminal": true,
        })
    }

    /// Sets the route with id `id` (replacing it whole, or adding it).
    async fn put_route(&self, id: &str, value: Value) -> Result<(), EdgeError> {
        let (status, text) = self.call(reqwest::Method::PATCH, &format!("/id/{id}"), Some(&value)).await?;
        match status {
            200..=299 => Ok(()),
            _ if text.contains("unknown object ID") => {
                // Inserted first, so the catch-all 404 stays last.
                let path = format!("/config/apps/http/servers/{}/routes/0", self.server());
                self.expect_ok(reqwest::Method::PUT, &path, Some(&value), "adding a route").await.map(|_| ())
            }
            _ => Err(EdgeError::Refused {
                what: format!("replacing route {id}"),
                status,
                body: text.chars().take(500).collect(),
            }),
        }
    }

    /// Routes the stable host of the app's environment (and `extra_hosts`, never for a preview:
    /// those are the app's own) to `dial` and holds `draining` (the versions it replaces) for
    /// their in-flight requests — one config change.
    pub async fn route(
        &self,
        app: &str,
        environment: &str,
        extra_hosts: &[String],
        dial: &str,
        draining: &[String],
    ) -> Result<(), EdgeError> {
        self.ensure_server().await?;
        let stable = self.host(app, environment);
        let mut hosts = vec![stable.clone()];
        if slipway_proto::preview_number(environment).is_none() {
            hosts.extend(extra_hosts.iter().filter(|h| **h != stable).cloned());
        }
        let id = self.route_id(app, environment);
        self.put_route(&id, self.route_value(&id, &hosts, dial, draining)).await
    }

    /// Removes the route of the app's environment; true if there was one.
    pub async fn remove_route(&self, app: &str, environment: &str) -> Result<bool, EdgeError> {
        let id = self.route_id(app, environment);
        let (status, text) = self.call(reqwest::Method::DELETE, &format!("/id/{id}"), None).await?;
        match status {
            200..=299 => Ok(true),
            _ if text.contains("unknown object ID") || status == 404 => Ok(false),
            _ => Err(EdgeError::Refused {
                what: format!("removing route {id}"),
                status,
                body: text.chars().take(500).collect(),
            }),
        }
    }

    /// The upstream the app's route sends its hosts to now, if it has a route.
    pub async fn routed(&self, app: &str, environment: &str) -> Result<Option<String>, EdgeError> {
        let (status, text) =
            self.call(reqwest::Method::GET, &format!("/id/{}", self.route_id(app, environment)), None).await?;
        if status != 200 {
            return Ok(None);
        }
        let route: Value = serde_json::from_str(&text).unwrap_or_default();
        Ok(route["handle"][0]["routes"][0]["handle"][0]["upstreams"][0]["dial"].as_str().map(str::to_string))
    }

    /// Requests in flight to `dial`, as Caddy counts them (0 once Caddy no longer knows it).
    pub async fn in_flight(&self, dial: &str) -> Result<u64, EdgeError> {
        let text = self.expect_ok(reqwest::Method::GET, "/reverse_proxy/upstreams", None, "listing upstreams").await?;
        let upstreams: Vec<Value> = serde_json::from_str(&text).unwrap_or_default();
        Ok(upstreams
            .iter()
            .filter(|u| u["address"].as_str() == Some(dial))
            .filter_map(|u| u["num_requests"].as_u64())
            .sum())
    }

    /// Waits until no request is in flight to any of `dials`, or `timeout`; returns what was
    /// still in flight when it gave up (0: drained). A count that cannot be read is read again
    /// until the timeout; only then is the error returned.
    pub async fn wait_drained(&self, dials: &[String], timeout: Duration) -> Result<u64, EdgeError> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let mut busy = Ok(0);
            for dial in dials {
                busy = match (busy, self.in_flight(dial).await) {
                    (Ok(sum), Ok(n)) => Ok(sum + n),
                    (Err(err), _) | (_, Err(err)) => Err(err),
                };
            }
            let over = tokio::time::Instant::now() >= deadline;
            match busy {
                Ok(0) => return Ok(0),
                Ok(n) if over => return Ok(n),
                Err(err) if over => return Err(err),
                _ => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn edge(listen: &str, domain: &str, https: bool) -> Edge {
        Edge::new(EdgeConfig {
            admin: "http://127.0.0.1:2019".into(),
            listen: listen.into(),
            domain: domain.into(),
            https,
            installation: "slipway".into(),
        })
    }

    #[test]
    fn stable_urls_leave_out_the_default_port() {
        let p = "production";
        assert_eq!(edge("127.0.0.1:8880", "localhost", false).url("web", p), "http://web.localhost:8880");
        assert_eq!(edge(":80", "apps.example.com", false).url("web", p), "http://web.apps.example.com");
        assert_eq!(edge(":443", "apps.example.com", true).url("web", p), "https://web.apps.example.com");
        assert_eq!(edge(":8443", "example.com", true).url("api", p), "https://api.example.com:8443");
        // A preview has a host of its own under the app's.
        assert_eq!(edge(":443", "example.com", true).url("api", "pr-12"), "https://pr-12.api.example.com");
        assert_eq!(edge("127.0.0.1:8880", "localhost", false).host("web", "pr-3"), "pr-3.web.localhost");
        assert_eq!(edge("127.0.0.1:8880", "localhost", false).host("web", "staging"), "web.localhost");
    }

    #[test]
    fn routes_are_named_after_the_installation_app_and_environment() {
        let e = edge("127.0.0.1:8880", "localhost", false);
        assert_eq!(e.route_id("web", "production"), "slipway-slipway-web-production");
        let route = e.route_value("r", &["web.localhost".into()], "127.0.0.1:32768", &[]);
        assert_eq!(route["handle"][0]["routes"][0]["handle"][0]["upstreams"], json!([{"dial": "127.0.0.1:32768"}]));
        assert_eq!(route["match"][0]["host"], json!(["web.localhost"]));
        let switching = e.route_value("r", &["web.localhost".into()], "127.0.0.1:2", &["127.0.0.1:1".into()]);
        assert_eq!(switching["match"][0]["host"], json!(["web.localhost", "r.drain.invalid"]));
        assert_eq!(switching["handle"][0]["routes"][1]["handle"][0]["upstreams"], json!([{"dial": "127.0.0.1:1"}]));
    }
}
