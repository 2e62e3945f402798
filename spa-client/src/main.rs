#![forbid(unsafe_code)]

fn main() -> std::process::ExitCode {
    spa_client::cli::main()
}
