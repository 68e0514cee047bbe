//! Runs the simulator outside the `evnet` binary:
//! `cargo run --release -p evnet-sim --example sim -- run scenarios/scale.toml --out /tmp/scale`.

use clap::Parser;
use evnet_sim::SimCommand;

#[derive(Parser)]
struct Args {
    #[command(subcommand)]
    cmd: SimCommand,
}

fn main() -> anyhow::Result<()> {
    evnet_sim::run(Args::parse().cmd)
}
