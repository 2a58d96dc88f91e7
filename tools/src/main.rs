//! `mirrorlog`: the command-line face of mirrorlog.
//!
//! Today it inspects logs; the server, witness and admin commands arrive with
//! the mirrored-database issue (see docs/design.md).

mod inspect;

use std::process::ExitCode;

const USAGE: &str = "\
mirrorlog — database mirroring log tools

USAGE:
    mirrorlog inspect-log DIR [--batches] [--records]
        Read-only check of a log directory: every segment header, every batch
        checksum, contiguity, the durable-LSN hint, and where the valid log
        ends and why. Never modifies the log (opening it for writing would
        cut a torn tail; this only reports it).
            --batches   list every batch (LSN range, epoch, records, codec, sizes)
            --records   also print each record (length and first 64 bytes, escaped)
        Exit status: 0 if the log is clean or ends in a torn tail that
        recovery would cut; 1 if it holds damage recovery would refuse
        (corruption below the durable point, gaps, bad headers); 2 on bad usage.

    mirrorlog --help | --version
";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        None | Some("-h" | "--help" | "help") => {
            print!("{USAGE}");
            ExitCode::SUCCESS
        }
        Some("-V" | "--version") => {
            println!("mirrorlog {}", env!("CARGO_PKG_VERSION"));
            ExitCode::SUCCESS
        }
        Some("inspect-log") => match inspect::parse_args(&args[1..]) {
            Ok(opts) => inspect::run(&opts),
            Err(e) => {
                eprintln!("mirrorlog inspect-log: {e}\n\n{USAGE}");
                ExitCode::from(2)
            }
        },
        Some(other) => {
            eprintln!("mirrorlog: unknown command {other:?}\n\n{USAGE}");
            ExitCode::from(2)
        }
    }
}
