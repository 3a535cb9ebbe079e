//! Test support for rtq: a private `redis-server` per test.
//!
//! Each [`RedisServer`] runs on a free port with no persistence (unless
//! asked), in a temporary directory, and is killed on drop, so tests run in
//! parallel on any machine. It can be killed and restarted on the same port
//! for fault-injection tests. When a test fails while a server is alive,
//! the server's log is printed.
//!
//! # Layout
//! - this file: [`RedisServer`] and its [`Options`];
//! - [`proxy`]: [`Proxy`], a TCP fault-injection proxy between a client and
//!   a server (drop one command's reply and cut its connection, cut all).
//! - [`cluster`]: [`RedisCluster`], a local Redis Cluster (3 masters and 3
//!   replicas by default) created with `redis-cli --cluster create`.
//! - [`tls`]: [`Pki`], certificates made by the test (CA, server, client,
//!   an unrelated CA) for TLS servers ([`Options::tls`]).

pub mod cluster;
pub mod proxy;
pub mod tls;

pub use cluster::RedisCluster;
pub use proxy::Proxy;
pub use tls::Pki;

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Options for a test server.
#[derive(Clone, Debug, Default)]
pub struct Options {
    /// Require this password (`requirepass`).
    pub password: Option<String>,
    /// Keep an append-only file (fsync always) so data survives a restart.
    pub appendonly: bool,
    /// Serve TLS only (`--port 0 --tls-port <port>`).
    pub tls: Option<TlsOptions>,
    /// Run as a Redis Cluster node with this `cluster-node-timeout` in
    /// milliseconds (see [`RedisCluster`]).
    pub cluster_node_timeout_ms: Option<u64>,
}

/// A TLS-only server's certificates.
#[derive(Clone, Debug)]
pub struct TlsOptions {
    /// Server certificate (PEM).
    pub cert: PathBuf,
    /// Server key (PEM).
    pub key: PathBuf,
    /// CA that clients' certificates must chain to (PEM); also the CA the
    /// testkit's own connections trust.
    pub ca: PathBuf,
    /// Client certificate (PEM) and key the testkit's own connections
    /// present.
    pub client: (PathBuf, PathBuf),
    /// Refuse clients without a certificate (`--tls-auth-clients yes`).
    pub require_client_cert: bool,
}

impl TlsOptions {
    /// A server with `pki`'s server certificate; clients' certificates
    /// are required when `require_client_cert`.
    pub fn from_pki(pki: &Pki, require_client_cert: bool) -> Self {
        Self {
            cert: pki.server_cert(),
            key: pki.server_key(),
            ca: pki.ca(),
            client: (pki.client_cert(), pki.client_key()),
            require_client_cert,
        }
    }
}

/// A private redis-server process.
pub struct RedisServer {
    child: Option<Child>,
    port: u16,
    dir: tempfile::TempDir,
    options: Options,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("no free port on 127.0.0.1")
}

impl RedisServer {
    /// Starts a server without persistence.
    ///
    /// # Panics
    /// If redis-server cannot be started (it must be on PATH).
    pub fn start() -> Self {
        Self::start_with(Options::default())
    }

    /// Starts a server with options.
    ///
    /// # Panics
    /// If redis-server cannot be started (it must be on PATH).
    pub fn start_with(options: Options) -> Self {
        Self::try_start_with(options)
            .unwrap_or_else(|e| panic!("could not start redis-server: {e}"))
    }

    /// Starts a TLS-only server, or returns `None` with a loud message on
    /// stderr when this machine's redis-server was built without TLS (the
    /// only case a TLS test may skip).
    ///
    /// # Panics
    /// If the server fails for any other reason.
    pub fn start_tls(tls: TlsOptions) -> Option<Self> {
        match Self::try_start_with(Options {
            tls: Some(tls),
            ..Options::default()
        }) {
            Ok(server) => Some(server),
            Err(e) if e.contains("TLS not supported") || e.contains("tls-port") => {
                eprintln!(
                    "\n!!!!!!!! SKIPPED: this redis-server has no TLS support (build it with BUILD_TLS=yes); the TLS test did not run !!!!!!!!\n{e}\n"
                );
                None
            }
            Err(e) => panic!("could not start a TLS redis-server: {e}"),
        }
    }

    fn try_start_with(options: Options) -> Result<Self, String> {
        let mut last_err = String::new();
        for _ in 0..5 {
            let mut server = Self {
                child: None,
                port: free_port(),
                dir: tempfile::Builder::new()
                    .prefix("rtq-redis-")
                    .tempdir()
                    .expect("cannot create a temp dir"),
                options: options.clone(),
            };
            match server.spawn() {
                Ok(()) => return Ok(server),
                Err(e) => last_err = e,
            }
        }
        Err(last_err)
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("redis.log")
    }

    fn spawn(&mut self) -> Result<(), String> {
        let mut cmd = Command::new("redis-server");
        match &self.options.tls {
            None => cmd.arg("--port").arg(self.port.to_string()),
            Some(tls) => cmd
                .args(["--port", "0", "--tls-port"])
                .arg(self.port.to_string())
                .arg("--tls-cert-file")
                .arg(&tls.cert)
                .arg("--tls-key-file")
                .arg(&tls.key)
                .arg("--tls-ca-cert-file")
                .arg(&tls.ca)
                .arg("--tls-auth-clients")
                .arg(if tls.require_client_cert { "yes" } else { "no" }),
        };
        cmd.arg("--bind")
            .arg("127.0.0.1")
            .arg("--dir")
            .arg(self.dir.path())
            .arg("--save")
            .arg("")
            .arg("--logfile")
            .arg(self.log_path())
            .arg("--daemonize")
            .arg("no");
        if self.options.appendonly {
            cmd.args(["--appendonly", "yes", "--appendfsync", "always"]);
        } else {
            cmd.args(["--appendonly", "no"]);
        }
        if let Some(pw) = &self.options.password {
            cmd.arg("--requirepass").arg(pw);
            // Cluster nodes authenticate to each other with it too.
            cmd.arg("--masterauth").arg(pw);
        }
        if let Some(timeout) = self.options.cluster_node_timeout_ms {
            cmd.args(["--cluster-enabled", "yes", "--cluster-config-file"])
                .arg(self.dir.path().join("nodes.conf"))
                .arg("--cluster-node-timeout")
                .arg(timeout.to_string())
                // Any replica may take over, however stale (tests fail
                // masters over on purpose), and a dead shard does not
                // take the others down with it.
                .args(["--cluster-replica-validity-factor", "0"])
                .args(["--cluster-require-full-coverage", "no"])
                .args(["--cluster-allow-replica-migration", "no"]);
        }
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(
                std::fs::File::create(self.dir.path().join("stderr.log"))
                    .map(Stdio::from)
                    .unwrap_or_else(|_| Stdio::null()),
            )
            .spawn()
            .map_err(|e| {
                format!(
                    "redis-server not runnable ({e}); install it (apt-get install redis-server)"
                )
            })?;
        self.child = Some(child);
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(10) {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                self.child = None;
                return Err(format!("redis-server exited with {status}: {}", self.log()));
            }
            if self.ping() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Err(format!(
            "redis-server did not answer within 10 s: {}",
            self.log()
        ))
    }

    /// A redis-rs client for this server (with the CA and client
    /// certificate of [`Options::tls`] on a TLS server).
    ///
    /// # Panics
    /// If the certificate files cannot be read.
    pub fn client(&self) -> redis::RedisResult<redis::Client> {
        match &self.options.tls {
            None => redis::Client::open(self.url()),
            Some(tls) => {
                let read = |p: &PathBuf| std::fs::read(p).expect("read test PEM");
                redis::Client::build_with_tls(
                    self.url(),
                    redis::TlsCertificates {
                        client_tls: Some(redis::ClientTlsConfig {
                            client_cert: read(&tls.client.0),
                            client_key: read(&tls.client.1),
                        }),
                        root_cert: Some(read(&tls.ca)),
                    },
                )
            }
        }
    }

    fn ping(&self) -> bool {
        let Ok(client) = self.client() else {
            return false;
        };
        let Ok(mut conn) = client.get_connection_with_timeout(Duration::from_millis(200)) else {
            return false;
        };
        redis::cmd("PING").query::<String>(&mut conn).is_ok()
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        let log = std::fs::read_to_string(self.log_path()).unwrap_or_default();
        let err = std::fs::read_to_string(self.dir.path().join("stderr.log")).unwrap_or_default();
        format!("{log}{err}")
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `redis://[:password@]127.0.0.1:<port>/`, or `rediss://` for a
    /// TLS server.
    pub fn url(&self) -> String {
        let scheme = if self.options.tls.is_some() {
            "rediss"
        } else {
            "redis"
        };
        match &self.options.password {
            Some(pw) => format!("{scheme}://:{pw}@127.0.0.1:{}/", self.port),
            None => format!("{scheme}://127.0.0.1:{}/", self.port),
        }
    }

    /// A synchronous connection, for test setup and assertions.
    ///
    /// # Panics
    /// If the server does not answer.
    pub fn conn(&self) -> redis::Connection {
        self.client()
            .and_then(|c| c.get_connection())
            .expect("cannot connect to the test redis-server")
    }

    /// The process id while the server runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Kills the server with SIGKILL (no shutdown, no save).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same port (after [`RedisServer::kill`]).
    ///
    /// # Panics
    /// If it does not come back.
    pub fn restart(&mut self) {
        self.kill();
        let started = Instant::now();
        loop {
            match self.spawn() {
                Ok(()) => return,
                Err(e) if started.elapsed() > Duration::from_secs(10) => {
                    panic!("redis-server did not restart: {e}")
                }
                Err(_) => std::thread::sleep(Duration::from_millis(50)),
            }
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "--- redis-server log (port {}) ---\n{}",
                self.port,
                self.log()
            );
        }
        self.kill();
    }
}

/// Path of a binary built by this workspace (tests of `worker`/`console`
/// use `env!("CARGO_BIN_EXE_...")` instead where available).
pub fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    // target/<profile>/deps/<test-binary>
    exe.parent()
        .and_then(|p| p.parent())
        .map(PathBuf::from)
        .expect("target dir")
}
