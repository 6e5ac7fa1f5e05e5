//! Command-line interface: argument parsing and one module per subcommand. Commands add
//! context to library errors (`anyhow`) and print human text or, with `--json`, JSON.

mod check;
mod convert;
mod create;
mod export;
mod inspect;
mod merge;
pub mod mount;
mod node;
pub mod registry;
mod store;

use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(
    name = "warren",
    version,
    about = "P2P-aware chunk cache node for Nydus RAFS v6 images"
)]
pub struct Cli {
    /// No progress bars and no informational output.
    #[arg(long, short, global = true)]
    pub quiet: bool,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Build a RAFS v6 image (bootstrap + data blob) from a directory, tar or tar.gz.
    Create(create::CreateArgs),
    /// Merge per-layer bootstraps into one image bootstrap.
    Merge(merge::MergeArgs),
    /// Validate a bootstrap and, given its blobs, every chunk.
    Check(check::CheckArgs),
    /// Print an image's statistics and, with --json, every entry.
    Inspect(inspect::InspectArgs),
    /// Write the image as a raw EROFS disk image the kernel can mount.
    Export(export::ExportArgs),
    /// Convert an OCI or Docker image in a registry into a Nydus image in a registry.
    Convert(convert::ConvertArgs),
    /// Mount one image over FUSE in the foreground, data loaded lazily from its blobs.
    Mount(mount::MountArgs),
    /// Run the node: HTTP API on a unix socket, mounts, Prometheus metrics.
    Node(node::NodeArgs),
    /// Look into and maintain the node's chunk store: stats, verify, gc.
    Store(store::StoreArgs),
}

pub fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Create(a) => create::run(a, cli.quiet),
        Command::Merge(a) => merge::run(a, cli.quiet),
        Command::Check(a) => check::run(a, cli.quiet),
        Command::Inspect(a) => inspect::run(a),
        Command::Export(a) => export::run(a, cli.quiet),
        Command::Convert(a) => convert::run(a, cli.quiet),
        Command::Mount(a) => mount::run(a, cli.quiet),
        Command::Node(a) => node::run(a, cli.quiet),
        Command::Store(a) => store::run(a),
    }
}

/// Logs go to stderr; `RUST_LOG` overrides the default level (warn, or error with --quiet).
pub fn init_logging(quiet: bool) {
    let default = if quiet { "error" } else { "warn" };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
}

/// A progress bar on a terminal; hidden in pipes and with --quiet.
pub fn progress(quiet: bool, len: u64, what: &str) -> indicatif::ProgressBar {
    use std::io::IsTerminal;
    if quiet || !std::io::stderr().is_terminal() {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(len);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} {eta}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    bar.set_message(what.to_string());
    bar
}
