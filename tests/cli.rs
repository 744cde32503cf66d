//! The binary's command line: bad configuration is refused with the key or line at fault.

use std::io::Write;
use std::process::Command;

fn run_with(config: &str) -> (i32, String) {
    let mut f = tempfile();
    f.1.write_all(config.as_bytes()).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_volna"))
        .arg("--config")
        .arg(&f.0)
        .output()
        .unwrap();
    std::fs::remove_file(&f.0).ok();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn tempfile() -> (std::path::PathBuf, std::fs::File) {
    let path = std::env::temp_dir().join(format!(
        "volna-cli-{}-{}.toml",
        std::process::id(),
        rand_suffix()
    ));
    let f = std::fs::File::create(&path).unwrap();
    (path, f)
}

/// Runs `volna` with `args` on a config whose one auth key is `cli-test-key-0123456789`.
fn token_with_keys(args: &[&str]) -> std::process::Output {
    let (path, mut f) = tempfile();
    f.write_all(b"[auth]\nkeys = [\"cli-test-key-0123456789\"]\n")
        .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_volna"))
        .arg("--config")
        .arg(&path)
        .args(args)
        .output()
        .unwrap();
    std::fs::remove_file(&path).ok();
    out
}

fn rand_suffix() -> u64 {
    use std::time::{SystemTime, UNIX_EPOCH};
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
}

#[test]
fn bad_config_names_the_key_and_exits_non_zero() {
    let cases = [
        ("[media]\nlisten = \"not an address\"\n", "listen"),
        ("[http]\nunknown_key = 1\n", "unknown_key"),
        ("[media]\nlisten = \"0.0.0.0:5000\"\n", "media.listen"),
        ("this is = = not toml\n", "line 1"),
        ("[log]\nlevel = \"loud\"\n", "log.level"),
        (
            "[http]\nlisten = \"127.0.0.1:0\"\n[media]\nlisten = \"127.0.0.1:0\"\n\
             [quic]\nlisten = \"127.0.0.1:0\"\ncert_file = \"/nonexistent/cert.pem\"\n\
             key_file = \"/nonexistent/key.pem\"\n",
            "QUIC certificate: /nonexistent/cert.pem",
        ),
    ];
    for (text, want) in cases {
        let (code, stderr) = run_with(text);
        assert_eq!(code, 2, "{text:?}: {stderr}");
        assert!(stderr.contains(want), "{text:?}: {stderr}");
    }
}

#[test]
fn missing_config_file_is_an_error() {
    let out = Command::new(env!("CARGO_BIN_EXE_volna"))
        .args(["--config", "/nonexistent/volna.toml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/volna.toml"));
}

#[test]
fn token_subcommand_signs_a_token_the_relay_accepts() {
    let out = token_with_keys(&[
        "token",
        "--room",
        "r1",
        "--identity",
        "ida",
        "--ttl",
        "60",
        "--no-publish",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let token = String::from_utf8(out.stdout).unwrap();
    let auth = volna::signal::auth::Auth::new(vec!["cli-test-key-0123456789".into()]);
    let access = auth
        .check(
            Some(token.trim()),
            Some("r1"),
            volna::signal::auth::unix_now(),
        )
        .unwrap();
    assert_eq!(access.identity.as_deref(), Some("ida"));
    assert!(!access.grants.publish && access.grants.subscribe);
    assert!(!access.admin);
    // An operator's token: no room, good for /stats and any session.
    let out = token_with_keys(&["token", "--admin"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let admin = String::from_utf8(out.stdout).unwrap();
    let now = volna::signal::auth::unix_now();
    assert!(auth.check_admin(Some(admin.trim()), now).is_ok());
    assert!(auth.check_admin(Some(token.trim()), now).is_err());
    // Without keys there is nothing to sign with.
    let out = Command::new(env!("CARGO_BIN_EXE_volna"))
        .args(["token", "--room", "r", "--identity", "i"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("[auth] keys"));
}

/// A host name is taken where an address is; one that does not resolve is refused (exit 2).
#[test]
fn addresses_may_be_host_names() {
    let out = Command::new(env!("CARGO_BIN_EXE_volna"))
        .args(["--http", "no-such-host.invalid:80"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no-such-host.invalid"));
}

/// Logs written to a file or a pipe (a container's log) carry no colour codes.
#[test]
fn logs_to_a_pipe_have_no_colour_codes() {
    use std::io::{BufRead, BufReader};
    let (path, mut f) = tempfile();
    f.write_all(
        b"[http]\nlisten = \"localhost:0\"\n[media]\nlisten = \"127.0.0.1:0\"\n\
          [quic]\nenabled = false\n[log]\nlevel = \"info\"\n",
    )
    .unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_volna"))
        .arg("--config")
        .arg(&path)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut seen = Vec::new();
    for line in lines.by_ref().take(20) {
        let line = line.unwrap();
        let done = line.contains("volna listening");
        seen.push(line);
        if done {
            break;
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    std::fs::remove_file(&path).ok();
    assert!(
        seen.iter().any(|l| l.contains("volna listening")),
        "the relay started (on a host name): {seen:?}"
    );
    assert!(
        seen.iter().all(|l| !l.contains('\x1b')),
        "no escape codes: {seen:?}"
    );
}

/// `VOLNA_<SECTION>_<KEY>` variables replace the file's settings (here the HTTP address and the
/// log format), and `volna health` finds the relay there; an unknown setting in a variable is
/// refused by name, as one in the file is; `health` fails where nothing answers.
#[test]
fn environment_overrides_and_the_health_check() {
    use std::io::{BufRead, BufReader};
    let free = || {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
    };
    let http = free();
    let (path, mut f) = tempfile();
    f.write_all(b"[media]\nlisten = \"127.0.0.1:0\"\n[quic]\nenabled = false\n")
        .unwrap();
    let health = |addr: std::net::SocketAddr| {
        Command::new(env!("CARGO_BIN_EXE_volna"))
            .args(["health", "--addr", &addr.to_string()])
            .output()
            .unwrap()
    };
    let down = health(http);
    assert_eq!(down.status.code(), Some(1), "nothing listens yet");
    let mut child = Command::new(env!("CARGO_BIN_EXE_volna"))
        .arg("--config")
        .arg(&path)
        .env("VOLNA_HTTP_LISTEN", http.to_string())
        .env("VOLNA_LOG_FORMAT", "json")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut started = None;
    for line in BufReader::new(child.stdout.take().unwrap())
        .lines()
        .take(20)
    {
        let line = line.unwrap();
        if line.contains("volna listening") {
            started = Some(line);
            break;
        }
    }
    let up = health(http);
    let _ = child.kill();
    let _ = child.wait();
    let started = started.expect("the relay started");
    let v: serde_json::Value = serde_json::from_str(&started).expect("a JSON log line");
    assert_eq!(v["fields"]["http"], http.to_string(), "{started}");
    assert_eq!(
        up.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&up.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&up.stdout), "ok\n");

    let out = Command::new(env!("CARGO_BIN_EXE_volna"))
        .arg("--config")
        .arg(&path)
        .env("VOLNA_HTTP_LISTN", "127.0.0.1:1")
        .output()
        .unwrap();
    std::fs::remove_file(&path).ok();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("VOLNA_HTTP_LISTN: http has no setting listn"),
        "{err}"
    );
}
