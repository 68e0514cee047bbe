//! `evnet`: one binary for evnet's command line. This entry point parses the
//! command line and hands resource commands to [`cli::run`].

mod cli;

use std::process::ExitCode;

use clap::Parser;

#[derive(Parser)]
#[command(
    name = "evnet",
    version,
    about = "Elastic network virtualization for Linux hosts"
)]
struct Cli {
    #[command(flatten)]
    opts: cli::GlobalOpts,
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Subcommand)]
enum Command {
    #[command(flatten)]
    Resource(cli::ResourceCommand),
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Resource(cmd) => cli::run(cmd, &cli.opts).await,
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
