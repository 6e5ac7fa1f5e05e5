use clap::Args;

#[derive(Args, Debug)]
pub struct MergeArgs {}

pub fn run(_args: MergeArgs, _quiet: bool) -> anyhow::Result<()> {
    anyhow::bail!("not implemented yet")
}
