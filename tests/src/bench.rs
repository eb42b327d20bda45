//! What every benchmark prints: one line a figure, with Slipway's value, the baseline measured in
//! the same run, their ratio and the target; and the same as a JSON line appended to the file
//! `SLIPWAY_BENCH_JSON` names (`scripts/bench --json` gathers them).

use std::io::Write;
use std::time::Duration;

/// A figure's unit, which says how it prints.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unit {
    Milliseconds,
    Seconds,
    PerSecond,
    Megabytes,
    /// A share of the ideal (scaling efficiency): higher is better.
    Efficiency,
}

impl Unit {
    fn name(self) -> &'static str {
        match self {
            Unit::Milliseconds => "ms",
            Unit::Seconds => "s",
            Unit::PerSecond => "/s",
            Unit::Megabytes => "MB",
            Unit::Efficiency => "",
        }
    }

    fn show(self, value: f64) -> String {
        match self {
            Unit::Milliseconds if value < 10.0 => format!("{value:.2} ms"),
            Unit::Milliseconds => format!("{value:.1} ms"),
            Unit::Seconds => format!("{value:.2} s"),
            Unit::PerSecond => format!("{value:.0}/s"),
            Unit::Megabytes => format!("{value:.1} MB"),
            Unit::Efficiency => format!("{value:.3}"),
        }
    }
}

/// One figure of a benchmark.
#[derive(Debug, Clone)]
pub struct Figure<'a> {
    /// The benchmark (`dispatch`, `intake`, ...).
    pub bench: &'a str,
    /// What was measured (`p50`, `cold build`, ...).
    pub what: &'a str,
    pub unit: Unit,
    /// Slipway's value.
    pub ours: f64,
    /// What the baseline is, in words (`raw publish+consume x2`), and its value.
    pub baseline: Option<(&'a str, f64)>,
    /// The target ratio ours / baseline (at most), or for a figure without a baseline, the
    /// target value (at most, or at least for a rate).
    pub target: Option<f64>,
}

impl Figure<'_> {
    /// Whether more is better (a rate, an efficiency) rather than less (a time, a size).
    fn higher_is_better(&self) -> bool {
        matches!(self.unit, Unit::PerSecond | Unit::Efficiency)
    }

    /// Ours over the baseline (where more is better, the baseline over ours: above 1 is worse
    /// either way).
    pub fn ratio(&self) -> Option<f64> {
        let (_, base) = self.baseline?;
        Some(match self.higher_is_better() {
            true => base / self.ours,
            false => self.ours / base,
        })
    }

    /// Whether the target is met (`None`: there is none).
    pub fn met(&self) -> Option<bool> {
        let target = self.target?;
        Some(match (self.ratio(), self.higher_is_better()) {
            (Some(ratio), _) => ratio <= target,
            (None, true) => self.ours >= target,
            (None, false) => self.ours <= target,
        })
    }

    /// The line printed for it.
    pub fn line(&self) -> String {
        let mut out = format!("bench {} {}: {}", self.bench, self.what, self.unit.show(self.ours));
        if let (Some((name, base)), Some(ratio)) = (self.baseline, self.ratio()) {
            out.push_str(&format!("; {name} {}; ratio {ratio:.2}x", self.unit.show(base)));
        }
        if let Some(target) = self.target {
            let shown = match (self.baseline.is_some(), self.higher_is_better()) {
                (true, _) => format!("<= {target:.2}x"),
                (false, true) => format!(">= {}", self.unit.show(target)),
                (false, false) => format!("<= {}", self.unit.show(target)),
            };
            let met = if self.met() == Some(true) { "met" } else { "MISSED" };
            out.push_str(&format!(" (target {shown}: {met})"));
        }
        out
    }

    /// The JSON line for it.
    pub fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "bench": self.bench,
            "what": self.what,
            "unit": self.unit.name(),
            "ours": self.ours,
            "baseline": self.baseline.map(|(name, _)| name),
            "baseline_value": self.baseline.map(|(_, value)| value),
            "ratio": self.ratio(),
            "target": self.target,
            "met": self.met(),
        })
    }
}

/// Prints `figure` and appends it to the JSON file of the run, if any.
pub fn report(figure: &Figure<'_>) {
    println!("{}", figure.line());
    let Ok(path) = std::env::var("SLIPWAY_BENCH_JSON") else { return };
    let mut file = std::fs::OpenOptions::new().create(true).append(true).open(&path).expect("the benchmark JSON file");
    writeln!(file, "{}", figure.json()).expect("writing the benchmark JSON file");
}

/// What one would do by hand before running an app: `git clone --depth 1` of `url`'s `main`,
/// `docker build` (classic builder, as Slipway's engine API builds) tagged `image`, `docker push`.
/// Milliseconds each took. Blocking.
pub fn build_by_hand(url: &str, image: &str) -> [f64; 3] {
    let timed = |command: &mut std::process::Command| {
        let started = std::time::Instant::now();
        let out = command.output().expect("the command starts");
        assert!(out.status.success(), "{command:?}: {}", String::from_utf8_lossy(&out.stderr));
        ms(started.elapsed())
    };
    let dir = tempfile::tempdir().expect("a checkout dir");
    let checkout = dir.path().join("app");
    let clone = timed(
        std::process::Command::new("git").args(["clone", "-q", "--depth", "1", "--branch", "main", url]).arg(&checkout),
    );
    let build = timed(
        std::process::Command::new("docker")
            .args(["build", "-q", "--force-rm", "-t", image])
            .arg(&checkout)
            .env("DOCKER_BUILDKIT", "0"),
    );
    let push = timed(std::process::Command::new("docker").args(["push", "-q", image]));
    [clone, build, push]
}

/// Starts `image` as one would by hand with the Docker CLI: a network of its own, `docker run`
/// with port 8080 published on 127.0.0.1, then `GET /healthz` every 5 ms until it answers 200.
/// Returns the name of the container (and of its network), for [`remove_by_hand`]. Blocking.
pub fn run_by_hand(image: &str, within: Duration) -> String {
    let name = crate::unique("by-hand");
    crate::docker(&["network", "create", &name]).expect("docker network create");
    crate::docker(&["run", "-d", "--name", &name, "--network", &name, "-p", "127.0.0.1::8080", image])
        .expect("docker run");
    let port = crate::docker(&["port", &name, "8080"]).expect("docker port");
    let address: std::net::SocketAddr = port
        .lines()
        .next()
        .and_then(|l| l.trim().rsplit_once(':'))
        .and_then(|(_, p)| format!("127.0.0.1:{p}").parse().ok())
        .expect("a published port");
    let healthy = || {
        use std::io::{Read, Write};
        let Ok(mut stream) = std::net::TcpStream::connect_timeout(&address, Duration::from_millis(500)) else {
            return false;
        };
        let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
        let mut answer = String::new();
        stream.write_all(b"GET /healthz HTTP/1.0\r\n\r\n").is_ok()
            && stream.read_to_string(&mut answer).is_ok()
            && answer.split_whitespace().nth(1) == Some("200")
    };
    let deadline = std::time::Instant::now() + within;
    while !healthy() {
        assert!(std::time::Instant::now() < deadline, "{name} ({image}) did not answer within {within:?}");
        std::thread::sleep(Duration::from_millis(5));
    }
    name
}

/// Removes what [`run_by_hand`] made, and `image`.
pub fn remove_by_hand(name: &str, image: &str) {
    let _ = crate::docker(&["rm", "-f", name]);
    let _ = crate::docker(&["network", "rm", name]);
    let _ = crate::docker(&["rmi", image]);
}

/// The `q` quantile (0 to 1) of `samples`, nearest rank.
pub fn quantile(samples: &[f64], q: f64) -> f64 {
    let mut sorted = samples.to_vec();
    sorted.sort_by(f64::total_cmp);
    sorted.get(((sorted.len().max(1) - 1) as f64 * q).round() as usize).copied().unwrap_or(f64::NAN)
}

/// Milliseconds of `d`.
pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn figure(unit: Unit, ours: f64, baseline: Option<f64>, target: Option<f64>) -> Figure<'static> {
        Figure { bench: "b", what: "w", unit, ours, baseline: baseline.map(|b| ("base", b)), target }
    }

    #[test]
    fn a_ratio_above_one_is_slower_for_times_and_for_rates() {
        assert_eq!(figure(Unit::Milliseconds, 30.0, Some(20.0), None).ratio(), Some(1.5));
        assert_eq!(figure(Unit::PerSecond, 500.0, Some(1000.0), None).ratio(), Some(2.0));
    }

    #[test]
    fn targets_are_met_or_missed_by_ratio_or_by_value() {
        assert_eq!(figure(Unit::Milliseconds, 30.0, Some(20.0), Some(1.5)).met(), Some(true));
        assert_eq!(figure(Unit::Milliseconds, 31.0, Some(20.0), Some(1.5)).met(), Some(false));
        assert_eq!(figure(Unit::Megabytes, 25.0, None, Some(20.0)).met(), Some(false));
        assert_eq!(figure(Unit::PerSecond, 250.0, None, Some(200.0)).met(), Some(true));
        assert_eq!(figure(Unit::Efficiency, 0.949, None, Some(0.95)).met(), Some(false));
        assert_eq!(figure(Unit::Seconds, 1.0, None, None).met(), None);
        let line = figure(Unit::Milliseconds, 31.0, Some(20.0), Some(1.5)).line();
        assert_eq!(line, "bench b w: 31.0 ms; base 20.0 ms; ratio 1.55x (target <= 1.50x: MISSED)");
        assert_eq!(figure(Unit::Milliseconds, 31.0, Some(20.0), None).json()["ratio"], 1.55);
    }

    #[test]
    fn quantiles_are_nearest_rank() {
        let samples: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(quantile(&samples, 0.5), 51.0);
        assert_eq!(quantile(&samples, 0.99), 99.0);
        assert!(quantile(&[], 0.5).is_nan());
    }
}
