//! The `moat` binary: parse the command line and hand over to [`moat::app`].

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = moat::cli::Cli::parse();
    moat::app::main(cli)
}
