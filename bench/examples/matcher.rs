//! Runs a `corral bench` scenario without the CLI, e.g.
//! `cargo run --release -p corral-bench --example matcher -- matcher`.

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if let Err(err) = corral_bench::run(&args) {
        eprintln!("error: {err:#}");
        std::process::exit(1);
    }
}
