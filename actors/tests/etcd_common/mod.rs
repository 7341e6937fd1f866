//! The etcd harness of the activator tests: a private etcd on loopback per test, started and killed by pid.
#![allow(dead_code)]

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tokio::time::timeout;

/// Outer bound of any single wait.
pub const WAIT: Duration = Duration::from_secs(30);

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind an ephemeral loopback port")
        .port()
}

pub fn etcd_on_path() -> bool {
    Command::new("etcd")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// `None` (after a loud message) when etcd is missing and `CI` is unset.
pub fn etcd_available(test: &str) -> bool {
    if etcd_on_path() {
        return true;
    }
    if std::env::var_os("CI").is_some() {
        panic!("CI is set but no `etcd` binary is on PATH: the etcd activator tests cannot be skipped in CI");
    }
    eprintln!(
        "\n!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!\n\
         !!! SKIPPED {test}: no `etcd` binary on PATH (apt-get install etcd-server)\n\
         !!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!\n"
    );
    false
}

/// A private etcd on loopback: free ports, its own data dir, killed by pid on drop.
pub struct Etcd {
    child: Option<Child>,
    dir: PathBuf,
    client_port: u16,
    peer_port: u16,
}

impl Etcd {
    /// Reserves ports and a data dir without starting etcd (for the "unreachable at start" test).
    pub fn prepare() -> Self {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("arbor-etcd-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create etcd data dir");
        Etcd {
            child: None,
            dir,
            client_port: free_port(),
            peer_port: free_port(),
        }
    }

    pub async fn start() -> Self {
        let mut e = Self::prepare();
        e.launch().await;
        e
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.client_port)
    }

    /// Starts (or restarts, on the same data dir and ports) and waits until a client call succeeds.
    pub async fn launch(&mut self) {
        assert!(self.child.is_none(), "etcd already running");
        let client = self.endpoint();
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("etcd.log"))
            .expect("etcd log file");
        let child = Command::new("etcd")
            .arg("--name")
            .arg("default")
            .arg("--data-dir")
            .arg(self.dir.join("data"))
            .arg("--listen-client-urls")
            .arg(&client)
            .arg("--advertise-client-urls")
            .arg(&client)
            .arg("--listen-peer-urls")
            .arg(&peer)
            .arg("--initial-advertise-peer-urls")
            .arg(&peer)
            .arg("--initial-cluster")
            .arg(format!("default={peer}"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn etcd");
        self.child = Some(child);
        let endpoint = self.endpoint();
        timeout(WAIT, async {
            loop {
                let ok = async {
                    let mut c = etcd_client::Client::connect([endpoint.as_str()], None)
                        .await
                        .ok()?;
                    c.status().await.ok()
                };
                if timeout(Duration::from_secs(1), ok).await.ok().flatten().is_some() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
        .await
        .expect("etcd did not become ready");
    }

    pub fn pid(&self) -> String {
        self.child.as_ref().expect("etcd running").id().to_string()
    }

    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .arg(sig)
            .arg(self.pid())
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "kill {sig} etcd failed");
    }

    pub fn freeze(&self) {
        self.signal("-STOP");
    }

    pub fn thaw(&self) {
        self.signal("-CONT");
    }

    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        if let Some(c) = &self.child {
            // Continue a frozen etcd so that it exits cleanly and releases its ports and data dir at once.
            let _ = Command::new("kill").arg("-CONT").arg(c.id().to_string()).status();
        }
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Returns from the test (after a loud message) when etcd is missing outside CI.
macro_rules! require_etcd {
    ($name:expr) => {
        if !etcd_common::etcd_available($name) {
            return;
        }
    };
}
