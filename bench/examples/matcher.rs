//! Runs a `corral bench` scenario without the CLI, e.g.
//! `cargo run --release -p corral-bench --example matcher -- matcher`.

use clap::Parser;

fn main() {
    let command = corral_bench::BenchCommand::parse();
    if let Err(err) = corral_bench::run(command.bench) {
        eprintln!("error: {err:#}");
        std::process::exit(1);
    }
}
