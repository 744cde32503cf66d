//! Runs the load test inside a private network namespace, so that its traffic never touches the
//! host's interfaces and every run starts from an empty network.
//!
//! The namespace has `lo` up and a veth pair whose first end carries [`VETH_IP`]: ICE agents such
//! as Janus's (libnice) never gather candidates on loopback, so relays and clients meet on that
//! address instead. Packets between two local addresses still travel through the kernel's loopback
//! path, so the veth pair needs no peer namespace.

use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;
use std::process::{Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

/// Environment variable set in the re-executed child; its value is the namespace's name.
pub const NETNS_ENV: &str = "VOLNA_LOAD_NETNS";
/// Address of the veth end inside the namespace.
pub const VETH_IP: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 200, 0, 1));
/// Interface that carries [`VETH_IP`].
pub const VETH_IF: &str = "vl0";
/// Its peer, kept up so that the first end has carrier.
pub const VETH_PEER: &str = "vl1";

/// Whether this process runs inside a namespace made by [`reexec_in_netns`] or [`run_in_netns`].
pub fn in_netns() -> bool {
    std::env::var_os(NETNS_ENV).is_some_and(|v| !v.is_empty())
}

/// Whether the process has the privileges `ip netns` needs.
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// A network namespace that exists as long as this value does.
pub struct Netns {
    name: String,
}

impl Netns {
    /// Creates `name` with `lo` up and the veth pair carrying [`VETH_IP`]. A namespace left behind
    /// under the same name by an earlier run (same pid) is replaced.
    pub fn create(name: &str) -> Result<Netns, String> {
        if !is_root() {
            return Err("network namespaces need root (ip netns add)".into());
        }
        if Path::new("/run/netns").join(name).exists() {
            let _ = ip(&["netns", "del", name]);
        }
        ip(&["netns", "add", name])?;
        // From here on, Drop removes the namespace whatever fails next.
        let ns = Netns { name: name.into() };
        let addr = format!("{VETH_IP}/32");
        ip(&["-n", name, "link", "set", "lo", "up"])?;
        ip(&[
            "-n", name, "link", "add", VETH_IF, "type", "veth", "peer", "name", VETH_PEER,
        ])?;
        ip(&["-n", name, "addr", "add", &addr, "dev", VETH_IF])?;
        ip(&["-n", name, "link", "set", VETH_IF, "up"])?;
        ip(&["-n", name, "link", "set", VETH_PEER, "up"])?;
        Ok(ns)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// A command that runs `program` inside the namespace, with [`NETNS_ENV`] set.
    pub fn command(&self, program: &Path) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name])
            .arg(program)
            .env(NETNS_ENV, &self.name);
        cmd
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        if let Err(e) = ip(&["netns", "del", &self.name]) {
            eprintln!("netns: {e}");
        }
    }
}

/// Re-runs the current executable with the same arguments inside a fresh namespace and returns
/// its exit status. The namespace is removed afterwards, also when the child fails.
pub fn reexec_in_netns() -> Result<ExitStatus, String> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    run_in_netns(&args)
}

/// Runs the current executable with `args` inside a fresh namespace named `volna-load-<pid>`
/// (with a counter appended from the second call on, so that concurrent calls don't collide).
pub fn run_in_netns(args: &[String]) -> Result<ExitStatus, String> {
    static CALLS: AtomicU32 = AtomicU32::new(0);
    let n = CALLS.fetch_add(1, Ordering::Relaxed);
    let pid = std::process::id();
    let name = if n == 0 {
        format!("volna-load-{pid}")
    } else {
        format!("volna-load-{pid}-{n}")
    };
    let exe = std::env::current_exe().map_err(|e| format!("current executable: {e}"))?;
    let ns = Netns::create(&name)?;
    let mut child = ns
        .command(&exe)
        .args(args)
        .spawn()
        .map_err(|e| format!("ip netns exec {name}: {e}"))?;
    // Ctrl-C reaches the child too (same process group); ignoring it here, after the spawn so
    // that the child keeps the default action, lets this process outlive the child and remove
    // the namespace.
    let old = ignore_sigint();
    let status = child.wait();
    restore_sigint(old);
    let status = status.map_err(|e| format!("waiting for the child in {name}: {e}"))?;
    drop(ns);
    Ok(status)
}

fn ignore_sigint() -> libc::sighandler_t {
    // SAFETY: installs a disposition, no handler code runs.
    unsafe { libc::signal(libc::SIGINT, libc::SIG_IGN) }
}

fn restore_sigint(old: libc::sighandler_t) {
    if old != libc::SIG_ERR {
        // SAFETY: puts back the disposition that was there before.
        unsafe { libc::signal(libc::SIGINT, old) };
    }
}

fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("ip {}: {e}", args.join(" ")))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}
