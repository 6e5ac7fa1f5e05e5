//! `warren store stats|verify|gc`: look into and maintain a node's chunk store. `stats` and
//! `verify` open the store read-only, so they work beside a running node; `verify --repair`
//! and `gc` change it and need the node stopped (the node evicts and heals by itself).

use crate::node::config::{NodeConfig, Overrides};
use crate::store::{Store, StoreError, StoreOptions};
use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use serde::Serialize;
use std::path::{Path, PathBuf};

#[derive(Args, Debug)]
pub struct StoreArgs {
    #[command(subcommand)]
    pub command: StoreCommand,
}

#[derive(Subcommand, Debug)]
pub enum StoreCommand {
    /// Size, chunk count, quota and disk use of the store.
    Stats(Target),
    /// Read and hash every chunk; report (or with --repair, drop) the bad ones.
    Verify {
        #[command(flatten)]
        target: Target,
        /// Drop bad chunks from the index (needs the node stopped).
        #[arg(long)]
        repair: bool,
    },
    /// Check every entry against its data file, free unreferenced space, recount, and evict
    /// least recently used chunks down to the low-water mark (needs the node stopped).
    Gc {
        #[command(flatten)]
        target: Target,
        /// Evict down to this many bytes instead of the low-water mark.
        #[arg(long)]
        target_bytes: Option<u64>,
    },
}

/// Which store: a directory, or the one a node config names.
#[derive(Args, Debug)]
pub struct Target {
    /// The store's directory (a node's `cache_dir`).
    #[arg(long, conflicts_with = "config")]
    pub store_dir: Option<PathBuf>,
    /// A node config file: its `cache_dir` and `[store]` settings.
    #[arg(long, short = 'C')]
    pub config: Option<PathBuf>,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

impl Target {
    /// The directory and the options to open it with for writing.
    fn resolve(&self) -> anyhow::Result<(PathBuf, Option<StoreOptions>)> {
        if let Some(dir) = &self.store_dir {
            return Ok((dir.clone(), None));
        }
        let config = match &self.config {
            Some(path) => NodeConfig::load(path)?,
            None => NodeConfig::default(),
        };
        let from_file = self.config.is_some();
        let settings = config.resolve(Overrides::default());
        let Some(dir) = settings.cache_dir else {
            bail!("the node config sets cache_dir = \"none\": there is no chunk store");
        };
        Ok((dir, from_file.then_some(settings.store)))
    }
}

#[derive(Serialize)]
struct StatsOut {
    dir: PathBuf,
    chunks: u64,
    bytes: u64,
    quota_bytes: u64,
    high_water_bytes: u64,
    low_water_bytes: u64,
    data_files: u64,
    disk_bytes: u64,
}

fn open_read_only(dir: &Path) -> anyhow::Result<Store> {
    Store::open_read_only(dir).with_context(|| format!("opening chunk store {}", dir.display()))
}

/// Opens for writing with the config's options, or else with the quota the store last ran
/// with (so maintenance does not apply a different default quota).
fn open_writable(dir: &Path, opts: Option<StoreOptions>) -> anyhow::Result<Store> {
    let opts = match opts {
        Some(o) => o,
        None => StoreOptions {
            quota_bytes: Store::open_read_only(dir)
                .ok()
                .map(|s| s.limits().quota_bytes)
                .filter(|&q| q > 0),
            ..StoreOptions::default()
        },
    };
    Store::open(dir, &opts).map_err(|e| match e {
        StoreError::Busy(_) => anyhow::anyhow!(
            "{e}: stop the node (or mount) that uses it first; a running node evicts and drops bad chunks by itself"
        ),
        e => anyhow::Error::new(e).context(format!("opening chunk store {}", dir.display())),
    })
}

pub fn run(args: StoreArgs) -> anyhow::Result<()> {
    match args.command {
        StoreCommand::Stats(t) => stats(&t),
        StoreCommand::Verify { target, repair } => verify(&target, repair),
        StoreCommand::Gc {
            target,
            target_bytes,
        } => gc(&target, target_bytes),
    }
}

fn stats(t: &Target) -> anyhow::Result<()> {
    let (dir, _) = t.resolve()?;
    let store = open_read_only(&dir)?;
    let s = store.stats();
    let out = StatsOut {
        dir,
        chunks: s.chunks,
        bytes: s.bytes,
        quota_bytes: s.quota_bytes,
        high_water_bytes: s.high_water_bytes,
        low_water_bytes: s.low_water_bytes,
        data_files: s.data_files,
        disk_bytes: s.disk_bytes,
    };
    if t.json {
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    println!("chunk store {}", out.dir.display());
    println!("  chunks      {}", out.chunks);
    println!("  bytes       {}", human(out.bytes));
    println!(
        "  quota       {} (eviction from {} down to {})",
        human(out.quota_bytes),
        human(out.high_water_bytes),
        human(out.low_water_bytes)
    );
    println!("  data files  {}", out.data_files);
    println!("  on disk     {} (data and index)", human(out.disk_bytes));
    Ok(())
}

fn verify(t: &Target, repair: bool) -> anyhow::Result<()> {
    let (dir, opts) = t.resolve()?;
    let store = if repair {
        open_writable(&dir, opts)?
    } else {
        open_read_only(&dir)?
    };
    let report = store.verify(repair)?;
    if t.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!(
            "checked {} chunks ({}): {} bad{}",
            report.chunks,
            human(report.bytes),
            report.bad.len(),
            if repair {
                format!(", {} dropped", report.dropped)
            } else {
                String::new()
            }
        );
        for (key, why) in &report.bad {
            println!("  bad {key}: {why}");
        }
    }
    let left = report.bad.len() as u64 - report.dropped.min(report.bad.len() as u64);
    if left > 0 {
        bail!(
            "{left} bad chunks in {} (run with --repair to drop them)",
            dir.display()
        );
    }
    Ok(())
}

fn gc(t: &Target, target_bytes: Option<u64>) -> anyhow::Result<()> {
    let (dir, opts) = t.resolve()?;
    let store = open_writable(&dir, opts)?;
    let report = store.gc(target_bytes)?;
    if t.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    println!("chunk store {}", dir.display());
    println!(
        "  entries without their bytes dropped: {}",
        report.dangling_entries
    );
    println!("  unused data files deleted: {}", report.removed_files);
    println!(
        "  evicted {} chunks ({})",
        report.evicted_chunks,
        human(report.evicted_bytes)
    );
    println!(
        "  bytes {} -> {}, on disk {} -> {}",
        human(report.bytes_before),
        human(report.bytes_after),
        human(report.disk_bytes_before),
        human(report.disk_bytes_after)
    );
    Ok(())
}

/// `12.3 MiB`.
fn human(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}
