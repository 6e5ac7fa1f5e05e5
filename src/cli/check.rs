use clap::Args;

#[derive(Args, Debug)]
pub struct CheckArgs {}

pub fn run(_args: CheckArgs, _quiet: bool) -> anyhow::Result<()> {
    anyhow::bail!("not implemented yet")
}
