use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use tracing_subscriber::EnvFilter;
use volna::config::{resolve, Config, EMBEDDED_DEFAULT};
use volna::server::ServerError;

/// volna: selective forwarding unit for voice and video calls.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Cli {
    /// TOML configuration file (default: the embedded configs/dev.toml).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// HTTP signalling listener, overriding http.listen (address or host:port).
    #[arg(long, value_name = "ADDR", value_parser = resolve)]
    http: Option<SocketAddr>,
    /// UDP media listener (ICE, DTLS, SRTP), overriding media.listen; advertised in ICE candidates.
    #[arg(long, value_name = "ADDR", value_parser = resolve)]
    media: Option<SocketAddr>,
    /// QUIC listener (RTP over QUIC), overriding quic.listen and enabling it.
    #[arg(long, value_name = "ADDR", value_parser = resolve)]
    quic: Option<SocketAddr>,
    /// Redis URL of the cluster to join, overriding cluster.redis.
    #[arg(long, value_name = "URL")]
    redis: Option<String>,
    /// This node's id in the cluster, overriding cluster.node_id.
    #[arg(long, value_name = "ID")]
    node_id: Option<String>,
    /// This node's region, overriding cluster.region.
    #[arg(long, value_name = "NAME")]
    region: Option<String>,
    /// Relay-link address other nodes reach this node at, overriding cluster.relay.
    #[arg(long, value_name = "ADDR")]
    relay: Option<String>,
    #[command(subcommand)]
    command: Option<Sub>,
}

#[derive(clap::Subcommand, Debug)]
enum Sub {
    /// Ask a running relay whether it is up (GET /health): exit 0 when it answers `ok`, 1
    /// otherwise. For container and service health checks.
    Health {
        /// The relay's HTTP address (default: http.listen of the config, a wildcard as loopback).
        #[arg(long, value_name = "ADDR", value_parser = resolve)]
        addr: Option<SocketAddr>,
    },
    /// Print an access token (JWT, HS256) signed with the first [auth] key of the config.
    Token {
        /// Room the token is for (not with --admin: an admin token is good for every room).
        #[arg(long, required_unless_present = "admin", conflicts_with = "admin")]
        room: Option<String>,
        /// Identity of the participant (of the operator with --admin).
        #[arg(long, required_unless_present = "admin")]
        identity: Option<String>,
        /// An operator's token: /stats, /metrics, and ending or restarting any session.
        #[arg(long)]
        admin: bool,
        /// Lifetime in seconds.
        #[arg(long, default_value_t = 3600)]
        ttl: u64,
        /// Do not allow publishing.
        #[arg(long)]
        no_publish: bool,
        /// Do not allow subscribing.
        #[arg(long)]
        no_subscribe: bool,
    },
}

#[allow(clippy::too_many_arguments)]
fn token(
    config: &Config,
    room: Option<String>,
    identity: Option<String>,
    admin: bool,
    ttl: u64,
    publish: bool,
    subscribe: bool,
) -> ExitCode {
    let auth = volna::signal::auth::Auth::new(config.auth.keys.clone());
    if auth.dev_mode() {
        eprintln!(
            "volna: the config has no [auth] keys (dev mode needs no tokens); add keys to sign one"
        );
        return ExitCode::from(2);
    }
    let claims = volna::signal::auth::Claims {
        room: room.unwrap_or_else(|| "*".into()),
        sub: identity.unwrap_or_else(|| "admin".into()),
        publish: publish && !admin,
        subscribe: subscribe && !admin,
        exp: volna::signal::auth::unix_now() + ttl,
        admin,
    };
    match auth.sign(&claims) {
        Ok(t) => {
            println!("{t}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("volna: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The runtime signalling (or a subcommand) runs on: one thread; media workers have their own.
fn runtime() -> Option<tokio::runtime::Runtime> {
    match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
    {
        Ok(rt) => Some(rt),
        Err(e) => {
            eprintln!("volna: cannot start runtime: {e}");
            None
        }
    }
}

/// GET /health at `addr` within 5 s: success when the relay answers 200 `ok`.
fn health(addr: SocketAddr) -> ExitCode {
    use http_body_util::{BodyExt, Empty};
    let check = async move {
        let client =
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .build_http::<Empty<bytes::Bytes>>();
        let uri: hyper::Uri = format!("http://{addr}/health")
            .parse()
            .map_err(|e| format!("{e}"))?;
        let res = client.get(uri).await.map_err(|e| e.to_string())?;
        let status = res.status();
        let body = res
            .into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        if status == hyper::StatusCode::OK && body.as_ref() == b"ok\n" {
            Ok(())
        } else {
            Err(format!("status {}", status.as_u16()))
        }
    };
    let Some(rt) = runtime() else {
        return ExitCode::FAILURE;
    };
    let within =
        rt.block_on(async { tokio::time::timeout(std::time::Duration::from_secs(5), check).await });
    match within {
        Ok(Ok(())) => {
            println!("ok");
            ExitCode::SUCCESS
        }
        Ok(Err(e)) => {
            eprintln!("volna: {addr}: {e}");
            ExitCode::FAILURE
        }
        Err(_) => {
            eprintln!("volna: {addr}: no answer within 5 s");
            ExitCode::FAILURE
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let env = std::env::vars();
    let loaded = match &cli.config {
        Some(path) => Config::load_with_env(path, env),
        None => Config::parse_with_env(EMBEDDED_DEFAULT, "embedded configs/dev.toml", env),
    };
    let mut config = match loaded {
        Ok(c) => c,
        Err(e) => {
            eprintln!("volna: {e}");
            return ExitCode::from(2);
        }
    };
    if let Some(Sub::Health { addr }) = cli.command {
        let mut addr = addr.unwrap_or(config.http.listen);
        if addr.ip().is_unspecified() {
            addr.set_ip(if addr.is_ipv4() {
                std::net::Ipv4Addr::LOCALHOST.into()
            } else {
                std::net::Ipv6Addr::LOCALHOST.into()
            });
        }
        return health(addr);
    }
    if let Some(Sub::Token {
        room,
        identity,
        admin,
        ttl,
        no_publish,
        no_subscribe,
    }) = cli.command
    {
        return token(
            &config,
            room,
            identity,
            admin,
            ttl,
            !no_publish,
            !no_subscribe,
        );
    }
    if let Some(a) = cli.quic {
        config.quic.listen = a;
        config.quic.enabled = true;
    }
    if let Some(a) = cli.http {
        config.http.listen = a;
    }
    if let Some(a) = cli.media {
        if a.ip().is_unspecified() && config.media.advertise.is_empty() {
            eprintln!("volna: --media must be a concrete address (it is advertised to peers as the ICE candidate), or set media.advertise");
            return ExitCode::from(2);
        }
        config.media.listen = a;
    }
    let c = &mut config.cluster;
    for (flag, slot) in [
        (cli.redis, &mut c.redis),
        (cli.node_id, &mut c.node_id),
        (cli.region, &mut c.region),
        (cli.relay, &mut c.relay),
    ] {
        if let Some(v) = flag {
            *slot = v;
        }
    }
    if let Err(e) = config.validate("the command line") {
        eprintln!("volna: {e}");
        return ExitCode::from(2);
    }
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        // The DTLS library warns about every TLS extension it does not know (browsers send
        // several per handshake); its errors still show.
        EnvFilter::new(format!("{},rtc_dtls=error", config.log.level))
    });
    // Colours only for a person at a terminal, not in files or container logs.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stdout());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi);
    if config.log.format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }
    let Some(rt) = runtime() else {
        return ExitCode::FAILURE;
    };
    rt.block_on(async {
        let running = match volna::server::start(&config).await {
            Ok(r) => r,
            // A certificate the config names but that cannot be used is the config's fault.
            Err(
                e @ (ServerError::QuicCertificate(_)
                | ServerError::HttpCertificate(_)
                | ServerError::Turn(_)
                | ServerError::Cluster(_)),
            ) => {
                eprintln!("volna: {e}");
                return ExitCode::from(2);
            }
            Err(e) => {
                eprintln!("volna: {e}");
                return ExitCode::FAILURE;
            }
        };
        let mut stop = Stop::new();
        let mut serve = running.serve;
        let cluster = running.cluster;
        // A drain begins with SIGTERM (or Ctrl-C) on a cluster node, or POST /admin/drain on
        // any node; without a cluster the signal ends the node at once, as it always has.
        tokio::select! {
            r = &mut serve => {
                eprintln!("volna: HTTP server stopped: {r:?}");
                return ExitCode::FAILURE;
            }
            _ = stop.next() => {
                if !cluster.clustered() {
                    tracing::info!("shutting down");
                    return ExitCode::SUCCESS;
                }
                cluster.drain();
                tracing::info!("signal: draining; a second one exits at once");
            }
            _ = cluster.drain_begun() => {}
        }
        let timeout = cluster.settings().drain_timeout;
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            tokio::select! {
                r = &mut serve => {
                    eprintln!("volna: HTTP server stopped: {r:?}");
                    return ExitCode::FAILURE;
                }
                _ = stop.next() => {
                    tracing::warn!("second signal: exiting now, ending the calls still here");
                    break;
                }
                _ = tokio::time::sleep(std::time::Duration::from_millis(250)) => {
                    let left = running.workers.stats().await.map_or(0, |s| s.sessions + s.participants);
                    if left == 0 {
                        tracing::info!("drained: no calls left");
                        break;
                    }
                    if tokio::time::Instant::now() >= deadline {
                        tracing::warn!(sessions = left, timeout_secs = timeout.as_secs(), "drain timeout: ending the calls still here");
                        break;
                    }
                }
            }
        }
        volna::cluster::membership::leave(&cluster).await;
        ExitCode::SUCCESS
    })
}

/// Ctrl-C, or SIGTERM (what `docker stop` and service managers send); registered once, so a
/// second signal during a drain is not missed.
struct Stop {
    #[cfg(unix)]
    term: Option<tokio::signal::unix::Signal>,
}

impl Stop {
    fn new() -> Self {
        Stop {
            #[cfg(unix)]
            term: tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok(),
        }
    }

    async fn next(&mut self) {
        #[cfg(unix)]
        if let Some(term) = self.term.as_mut() {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            return;
        }
        let _ = tokio::signal::ctrl_c().await;
    }
}
