//! nginx from Debian in front of Kensa, for the load-balancer tests: a CA and a server
//! certificate it signed, the `deploy/nginx` recipe rendered with the test's addresses, and an
//! nginx of the test's own.
//!
//! The nginx started here never touches the system's: its own main configuration (`-c`), prefix
//! (`-p`), startup error log (`-e`), pid file and temp directories, all under the test's
//! directory, and its own ports. It runs in the foreground (`daemon off`) as a child of the
//! test, in the test's process group (so a Ctrl-C in the terminal reaches it too); [`Nginx`]
//! stops it when dropped, also when the test panics: SIGTERM (the master stops its workers),
//! then SIGKILL to the master and its workers if that does not do, so none outlives the test.

use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::faults::{now_ms, tail};

/// Debian's nginx (package `nginx`, or `nginx-light`/`nginx-full`).
pub const NGINX: &str = "/usr/sbin/nginx";

/// Whether nginx is installed. Without it the test is skipped (with a notice) — unless
/// `KENSA_PLUGIN_TESTS` is set (CI), where a missing nginx is a failure.
pub fn nginx_available() -> bool {
    let present = Path::new(NGINX).exists();
    if !present {
        assert!(
            std::env::var_os("KENSA_PLUGIN_TESTS").is_none(),
            "KENSA_PLUGIN_TESTS is set but {NGINX} is missing (apt-get install nginx)"
        );
        println!("skipped: nginx is not installed ({NGINX}; apt-get install nginx)");
    }
    present
}

/// PEM files: a CA, and a server certificate and key it signed.
pub struct TlsFiles {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Writes a fresh CA and a server certificate for `names` (DNS names or IP addresses) into
/// `dir`. The key is readable by its owner only, as nginx's master process reads it.
pub fn write_ca_and_server_certificate(dir: &Path, names: &[&str]) -> TlsFiles {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "Kensa test CA");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let server_key = KeyPair::generate().unwrap();
    let mut server_params =
        CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).unwrap();
    server_params
        .distinguished_name
        .push(DnType::CommonName, names[0]);
    let server = server_params.signed_by(&server_key, &ca, &ca_key).unwrap();
    let files = TlsFiles {
        ca: dir.join("ca.pem"),
        cert: dir.join("lb.crt"),
        key: dir.join("lb.key"),
    };
    std::fs::write(&files.ca, ca.pem()).unwrap();
    std::fs::write(&files.cert, server.pem()).unwrap();
    let mut key = OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .mode(0o600)
        .open(&files.key)
        .unwrap();
    key.write_all(server_key.serialize_pem().as_bytes())
        .unwrap();
    files
}

/// The repository's `deploy/nginx` directory.
pub fn recipe_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/nginx")
}

/// Renders the recipe's template with `deploy/nginx/render.sh` — the operator's way — given
/// its `KENSA_*` variables; panics with the script's message when it refuses them.
pub fn render_recipe(variables: &[(&str, String)]) -> String {
    let mut command = Command::new("bash");
    command.arg(recipe_dir().join("render.sh"));
    // Only what the test gives: no KENSA_* variable of the caller's environment leaks in.
    for (name, _) in std::env::vars() {
        if name.starts_with("KENSA_LB_") || name.starts_with("KENSA_BACKEND_") {
            command.env_remove(name);
        }
    }
    for (name, value) in variables {
        command.env(name, value);
    }
    let output = command.output().expect("running deploy/nginx/render.sh");
    assert!(
        output.status.success(),
        "render.sh failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).expect("render.sh prints UTF-8")
}

/// An nginx master process (and its workers) of the test's own.
pub struct Nginx {
    pub dir: PathBuf,
    /// nginx's error log (`notice` level: upstream failures, reloads).
    pub error_log: PathBuf,
    /// stdout/stderr of the master, with a marker line per start and stop.
    pub log: PathBuf,
    main_conf: PathBuf,
    globals: String,
    /// `None` once stopped.
    master: Option<Child>,
}

impl Nginx {
    /// Writes a main configuration that includes `site` (an http{}-level file such as the
    /// rendered recipe), checks it with `nginx -t`, and starts nginx in the foreground.
    /// `worker_shutdown_timeout` is how long old workers keep their connections after a
    /// reload (see [`Nginx::reload`]).
    pub fn start(dir: &Path, site: &Path, worker_shutdown_timeout: Duration) -> Nginx {
        std::fs::create_dir_all(dir.join("temp")).unwrap();
        // Workers run as `nobody` when the test runs as root: they must reach the temp
        // directories (created and chowned by the master) through this one.
        set_mode(dir, 0o755);
        let temp = dir.join("temp");
        let main_conf = dir.join("nginx.conf");
        let text = format!(
            "# Written by the Kensa load-balancer test; the system's nginx.conf is not used.\n\
             worker_processes 2;\n\
             worker_shutdown_timeout {shutdown}ms;\n\
             events {{\n    worker_connections 1024;\n}}\n\
             http {{\n\
             \x20   access_log {access};\n\
             \x20   client_body_temp_path {temp}/body;\n\
             \x20   proxy_temp_path {temp}/proxy;\n\
             \x20   fastcgi_temp_path {temp}/fastcgi;\n\
             \x20   uwsgi_temp_path {temp}/uwsgi;\n\
             \x20   scgi_temp_path {temp}/scgi;\n\
             \x20   include {site};\n\
             }}\n",
            shutdown = worker_shutdown_timeout.as_millis(),
            access = dir.join("access.log").display(),
            temp = temp.display(),
            site = site.display(),
        );
        std::fs::write(&main_conf, text).unwrap();
        let error_log = dir.join("error.log");
        let globals = format!(
            "daemon off; master_process on; pid {}; error_log {} notice;",
            dir.join("nginx.pid").display(),
            error_log.display()
        );
        let mut nginx = Nginx {
            dir: dir.to_owned(),
            log: dir.join("nginx.out"),
            error_log,
            main_conf,
            globals,
            master: None,
        };
        let test = nginx
            .command()
            .arg("-t")
            .output()
            .expect("running nginx -t");
        assert!(
            test.status.success(),
            "nginx -t refused the configuration:\n{}{}",
            String::from_utf8_lossy(&test.stdout),
            String::from_utf8_lossy(&test.stderr)
        );
        nginx.note("started");
        let out = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&nginx.log)
            .unwrap();
        let err = out.try_clone().unwrap();
        let child = nginx
            .command()
            .stdin(Stdio::null())
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err))
            .spawn()
            .unwrap_or_else(|err| panic!("starting {NGINX}: {err}"));
        nginx.master = Some(child);
        nginx
    }

    fn command(&self) -> Command {
        let mut command = Command::new(NGINX);
        command
            .arg("-p")
            .arg(&self.dir)
            .arg("-e")
            .arg(self.dir.join("startup-error.log"))
            .arg("-c")
            .arg(&self.main_conf)
            .arg("-g")
            .arg(&self.globals);
        command
    }

    pub fn pid(&self) -> u32 {
        self.master.as_ref().expect("nginx is running").id()
    }

    /// Panics (with nginx's logs) if the master has exited.
    pub fn assert_running(&mut self) {
        let master = self.master.as_mut().expect("nginx is running");
        if let Ok(Some(status)) = master.try_wait() {
            panic!(
                "nginx exited ({status}):\n{}\n{}",
                tail(&self.log, 20),
                tail(&self.error_log, 20)
            );
        }
    }

    /// `nginx -s reload`: the master re-reads its configuration and starts new workers; the
    /// old ones stop accepting and close what they still hold after `worker_shutdown_timeout`.
    pub fn reload(&mut self) {
        self.assert_running();
        signal(self.pid(), "HUP");
        self.note("reload (SIGHUP)");
    }

    /// The last lines of the error log.
    pub fn error_log_tail(&self, lines: usize) -> String {
        tail(&self.error_log, lines)
    }

    /// The master and its workers (from /proc), while it runs.
    pub fn processes(&self) -> Vec<u32> {
        let Some(master) = &self.master else {
            return Vec::new();
        };
        let mut pids = vec![master.id()];
        pids.extend(children_of(master.id()));
        pids
    }

    /// Fast shutdown (SIGTERM: the master stops its workers, then exits); if the master is not
    /// gone within 5 s, SIGKILL to its workers and to it.
    pub fn stop(&mut self) {
        let Some(mut master) = self.master.take() else {
            return;
        };
        let pid = master.id();
        if matches!(master.try_wait(), Ok(None)) {
            signal(pid, "TERM");
            let deadline = Instant::now() + Duration::from_secs(5);
            while matches!(master.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        if matches!(master.try_wait(), Ok(None)) {
            // The master is not reaped yet, so its workers are still its children.
            for worker in children_of(pid) {
                signal(worker, "KILL");
            }
            signal(pid, "KILL");
            let _ = master.wait();
            self.note("killed (SIGKILL)");
        } else {
            self.note("stopped (SIGTERM)");
        }
    }

    fn note(&self, what: &str) {
        if let Ok(mut file) = OpenOptions::new().create(true).append(true).open(&self.log) {
            writeln!(file, "===== nginx {what} at {} ms", now_ms()).ok();
        }
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        self.stop();
    }
}

/// `kill -<signal> <pid>`; failures (a process already gone) ignored.
fn signal(pid: u32, signal: &str) {
    let _ = Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .stderr(Stdio::null())
        .status();
}

/// The processes whose parent is `parent` (read from /proc).
fn children_of(parent: u32) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
                return false;
            };
            // pid (comm) state ppid …; comm may contain spaces, so split after the last ')'.
            stat.rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().nth(1)?.parse::<u32>().ok())
                == Some(parent)
        })
        .collect()
}

/// Whether `pid` is a running nginx process.
pub fn is_nginx(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|comm| comm.trim() == "nginx")
}

fn set_mode(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}
