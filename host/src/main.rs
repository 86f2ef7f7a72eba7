//! The `spiketile` command line; see `spiketile --help`.

fn main() -> std::process::ExitCode {
    spiketile::cli::main()
}
