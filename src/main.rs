//! The `keygate` binary: everything lives in the library (`keygate::cli`).

fn main() -> std::process::ExitCode {
    keygate::cli::main()
}
