//! volna-client: a native RTP-over-QUIC client for volna.
//!
//! `volna-client publish --quic ADDR --room R [--token T] --tone HZ --seconds S [--video]` sends a
//! libopus tone (and an OpenH264 test pattern); `volna-client subscribe --quic ADDR --room R --seconds S` receives, repairs loss with
//! NACK, decodes with libopus, and prints a JSON report (packets, loss, decode errors, level).

use std::net::SocketAddr;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use volna_load::client::{publish_tone, subscribe, Client, Connect};

#[derive(Parser, Debug)]
#[command(about = "native RTP-over-QUIC client for volna")]
struct Args {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(clap::Args, Debug)]
struct Common {
    /// The relay's QUIC address.
    #[arg(long)]
    quic: SocketAddr,
    #[arg(long)]
    room: String,
    /// Access token (when the relay has auth keys).
    #[arg(long)]
    token: Option<String>,
    /// Hex SHA-256 of the relay's certificate (GET /quic/cert-hash).
    #[arg(long, required_unless_present = "insecure")]
    cert_hash: Option<String>,
    /// Trust any certificate (development only).
    #[arg(long)]
    insecure: bool,
    #[arg(long, default_value = "volna-client")]
    name: String,
    #[arg(long, default_value_t = 10.0)]
    seconds: f64,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Send an Opus tone.
    Publish {
        #[command(flatten)]
        common: Common,
        /// Tone frequency in Hz.
        #[arg(long, default_value_t = 440.0)]
        tone: f64,
        /// Also send video: an H.264 test pattern (OpenH264), 320x240 at 15 fps.
        #[arg(long)]
        video: bool,
    },
    /// Receive the room's most recent publisher and report.
    Subscribe {
        #[command(flatten)]
        common: Common,
    },
}

fn connect_args(c: &Common) -> Connect {
    Connect {
        quic: c.quic,
        cert_sha256: if c.insecure {
            None
        } else {
            c.cert_hash.clone()
        },
        room: c.room.clone(),
        token: c.token.clone(),
        name: c.name.clone(),
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let args = Args::parse();
    let result = match &args.cmd {
        Cmd::Publish {
            common,
            tone,
            video,
        } => match Client::connect(&connect_args(common)).await {
            Ok(mut c) => publish_tone(&mut c, *tone, common.seconds, *video)
                .await
                .map(|r| r.to_json()),
            Err(e) => Err(e),
        },
        Cmd::Subscribe { common } => match Client::connect(&connect_args(common)).await {
            Ok(mut c) => subscribe(&mut c, common.seconds).await.map(|r| r.to_json()),
            Err(e) => Err(e),
        },
    };
    match result {
        Ok(report) => {
            println!("{report}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("volna-client: {e}");
            ExitCode::FAILURE
        }
    }
}
