use crate::node::config::{NodeConfig, Overrides};
use clap::Args;
use std::net::SocketAddr;
use std::path::PathBuf;

#[derive(Args, Debug)]
pub struct NodeArgs {
    /// The node's TOML configuration file (without one, the built-in defaults).
    #[arg(long, short = 'C')]
    pub config: Option<PathBuf>,
    /// The HTTP API's unix socket (overrides `api_socket`).
    #[arg(long)]
    pub api_socket: Option<PathBuf>,
    /// TCP address of the Prometheus endpoint /metrics (overrides `metrics_addr`).
    #[arg(long)]
    pub metrics_addr: Option<SocketAddr>,
    /// Where the node keeps its state (overrides `data_dir`).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Origin directory for mounts that do not name one (overrides `blob_dir`).
    #[arg(long, short = 'D')]
    pub blob_dir: Option<PathBuf>,
    /// Print the effective configuration (defaults filled in) as TOML and exit.
    #[arg(long)]
    pub print_config: bool,
}

pub fn run(args: NodeArgs, quiet: bool) -> anyhow::Result<()> {
    let config = match &args.config {
        Some(path) => NodeConfig::load(path)?,
        None => NodeConfig::default(),
    };
    let settings = config.resolve(Overrides {
        data_dir: args.data_dir,
        api_socket: args.api_socket,
        metrics_addr: args.metrics_addr,
        blob_dir: args.blob_dir,
    });
    if args.print_config {
        print!("{}", settings.to_config_toml()?);
        return Ok(());
    }
    crate::node::run(settings, quiet)
}
