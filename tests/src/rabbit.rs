//! A RabbitMQ node of the test's own (through `scripts/rabbitmq-node`), which the test may stop
//! and start again without disturbing other tests.

use std::path::PathBuf;
use std::process::Command;

/// A private broker node; stopped on drop.
pub struct PrivateBroker {
    pub name: String,
    pub port: u16,
    dir: tempfile::TempDir,
}

fn script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../scripts/rabbitmq-node")
}

impl PrivateBroker {
    /// Starts a node with the given extra `rabbitmq.conf` lines and `advanced.config` terms
    /// (the part inside `[{rabbit, [...]}]`, empty for none).
    pub fn start(conf: &str, advanced_rabbit: &str) -> Self {
        let name = crate::unique("slipwaytest").replace('-', "");
        // Both ports below the ephemeral range (32768 and up here): while a test has the node
        // stopped, an outgoing connection or a container's published port could otherwise take
        // them, and the node could not start again.
        let port = 20000 + (rand_u16() % 8000);
        let dir = tempfile::Builder::new().prefix("slipway-rabbit-").tempdir().expect("broker dir");
        std::fs::write(
            dir.path().join("rabbitmq.conf"),
            format!("loopback_users = none\nlisteners.tcp.default = 127.0.0.1:{port}\n{conf}\n"),
        )
        .expect("rabbitmq.conf");
        std::fs::write(dir.path().join("advanced.config"), format!("[{{rabbit, [{advanced_rabbit}]}}].\n"))
            .expect("advanced.config");
        // The node runs as the rabbitmq user: it must be able to enter and write the directory.
        let _ = Command::new("chmod").args(["755", &dir.path().display().to_string()]).status();
        let broker = Self { name, port, dir };
        broker.run("start");
        broker
    }

    /// The AMQP URL of the node.
    pub fn url(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.port)
    }

    /// Stops the node (blocking until it is down).
    pub fn stop(&self) {
        self.run("stop");
    }

    /// Starts the node again with its data.
    pub fn restart(&self) {
        self.run("start");
    }

    fn run(&self, verb: &str) {
        let out = Command::new(script())
            .args([verb, &self.name, &self.port.to_string(), &self.dir.path().display().to_string()])
            .env("SLIPWAY_RABBIT_DIST_PORT", (self.port + 4000).to_string())
            .output()
            .expect("run scripts/rabbitmq-node");
        assert!(
            out.status.success(),
            "rabbitmq-node {verb}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for PrivateBroker {
    fn drop(&mut self) {
        self.run("stop");
    }
}

fn rand_u16() -> u16 {
    let b = uuid::Uuid::new_v4();
    u16::from_le_bytes([b.as_bytes()[0], b.as_bytes()[1]])
}

/// Deletes the queues and exchanges of a test's prefix (best effort; the broker may be gone).
pub fn delete_topology(url: &str, prefix: &str) {
    use lapin::options::{ExchangeDeleteOptions, QueueDeleteOptions};
    let Ok(rt) = tokio::runtime::Builder::new_current_thread().enable_all().build() else {
        return;
    };
    rt.block_on(async {
        let connect = lapin::Connection::connect(url, lapin::ConnectionProperties::default());
        let Ok(Ok(conn)) = tokio::time::timeout(std::time::Duration::from_secs(3), connect).await else {
            return;
        };
        let Ok(channel) = conn.create_channel().await else {
            return;
        };
        for queue in ["jobs", "runner"] {
            let _ =
                channel.queue_delete(format!("{prefix}.{queue}").as_str().into(), QueueDeleteOptions::default()).await;
        }
        for exchange in ["control", "events"] {
            let _ = channel
                .exchange_delete(format!("{prefix}.{exchange}").as_str().into(), ExchangeDeleteOptions::default())
                .await;
        }
        let _ = conn.close(200, "done".into()).await;
    });
}
