//! A private Caddy (the Debian package's binary) for one test installation: its admin API and
//! the apps' server each on a free loopback port, started with only the admin settings (Slipway
//! configures the rest through the admin API). Stopped on drop; `restart` starts it again with
//! the same empty config, as a Caddy restart without a saved config would.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::{eventually, free_port};

pub struct Caddy {
    pub admin_port: u16,
    /// Where Slipway is told to serve the apps (`SLIPWAY_EDGE_LISTEN`).
    pub edge_port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

impl Caddy {
    pub fn start() -> Self {
        let dir = tempfile::tempdir().expect("caddy dir");
        let mut me = Self { admin_port: free_port(), edge_port: free_port(), dir, child: None };
        me.spawn();
        me
    }

    pub fn admin(&self) -> String {
        format!("http://127.0.0.1:{}", self.admin_port)
    }

    fn spawn(&mut self) {
        let config = self.dir.path().join("caddy.json");
        // No autosave: a restart comes back empty, and the runners must rebuild the routes.
        let json = format!(
            r#"{{"admin": {{"listen": "127.0.0.1:{}", "config": {{"persist": false}}}}, "logging": {{"logs": {{"default": {{"level": "WARN"}}}}}}}}"#,
            self.admin_port
        );
        std::fs::write(&config, json).expect("caddy.json");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("caddy.log"))
            .expect("caddy log");
        let child = Command::new("caddy")
            .args(["run", "--config"])
            .arg(&config)
            .env("HOME", self.dir.path())
            .env("XDG_DATA_HOME", self.dir.path().join("data"))
            .env("XDG_CONFIG_HOME", self.dir.path().join("config"))
            .stdout(Stdio::from(log.try_clone().expect("log")))
            .stderr(Stdio::from(log))
            .spawn()
            .expect("start caddy (scripts/services installs the Debian package)");
        self.child = Some(child);
        let admin = format!("{}/config/", self.admin());
        let ready = std::time::Instant::now();
        while std::time::Instant::now() - ready < Duration::from_secs(20) {
            if std::net::TcpStream::connect(("127.0.0.1", self.admin_port)).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("caddy did not open its admin API ({admin}): {}", self.output());
    }

    /// Kills Caddy and starts it again with nothing but its admin settings.
    pub async fn restart(&mut self) {
        self.kill();
        eventually(Duration::from_secs(10), "the old caddy to let go of its ports", || async {
            std::net::TcpListener::bind(("127.0.0.1", self.admin_port)).ok().map(drop)
        })
        .await;
        self.spawn();
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn output(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("caddy.log")).unwrap_or_default()
    }
}

impl Drop for Caddy {
    fn drop(&mut self) {
        self.kill();
    }
}
