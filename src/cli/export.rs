use clap::Args;

#[derive(Args, Debug)]
pub struct ExportArgs {}

pub fn run(_args: ExportArgs, _quiet: bool) -> anyhow::Result<()> {
    anyhow::bail!("not implemented yet")
}
