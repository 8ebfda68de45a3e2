use clap::Parser;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    match latchkey::cli::run(latchkey::cli::Cli::parse()).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("latchkey: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
