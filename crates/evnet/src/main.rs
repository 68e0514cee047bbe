//! `evnet`: one binary for evnet's command line — the resource CLI, and the
//! `server`, `agent`, `lab` and `sim` entry points. It parses, calls into
//! the library crates and renders; the logic lives in the crates.

mod cli;
mod daemons;
mod lab;
mod labvm;
mod podman_rig;

use std::process::ExitCode;

use clap::Parser;

#[derive(Parser)]
#[command(name = "evnet", version, about = "Elastic network virtualization for Linux hosts")]
struct Cli {
    #[command(flatten)]
    opts: cli::GlobalOpts,
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Subcommand)]
enum Command {
    /// Run the control plane (REST API, scheduler, desired state).
    Server(daemons::ServerArgs),
    /// Run a host agent that reconciles one host's kernel state.
    Agent(daemons::AgentArgs),
    /// A whole cluster on this machine: a server and agents in namespaces.
    #[command(subcommand)]
    Lab(lab::LabCommand),
    /// The fabric simulator: the allocator at data-center scale.
    #[command(subcommand)]
    Sim(evnet_sim::cli::SimCommand),
    /// Print the OpenAPI document of the REST API.
    Openapi,
    #[command(flatten)]
    Resource(cli::ResourceCommand),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = match cli.command {
        Command::Server(args) => runtime.block_on(daemons::server(args)),
        Command::Agent(args) => runtime.block_on(daemons::agent(args)),
        Command::Lab(cmd) => runtime.block_on(lab::run(cmd)),
        Command::Sim(cmd) => {
            drop(runtime);
            evnet_sim::cli::run(cmd)
        }
        Command::Openapi => {
            print!("{}", evnet_server::openapi::document_text());
            Ok(())
        }
        Command::Resource(cmd) => runtime.block_on(cli::run(cmd, &cli.opts)),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
