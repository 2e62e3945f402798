#![forbid(unsafe_code)]

fn main() -> std::process::ExitCode {
    spa_server::cli::main()
}
