//! The `deltadrive` command line: parse, then hand over to the library.

use clap::Parser;

fn main() {
    let cli = deltadrive::cli::Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    if let Err(e) = deltadrive::cli::run(cli) {
        eprintln!("deltadrive: {e:#}");
        std::process::exit(1);
    }
}
