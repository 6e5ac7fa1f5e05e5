use clap::Args;

#[derive(Args, Debug)]
pub struct CreateArgs {}

pub fn run(_args: CreateArgs, _quiet: bool) -> anyhow::Result<()> {
    anyhow::bail!("not implemented yet")
}
