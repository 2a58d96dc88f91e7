//! `mirrorlog`: the command-line face of mirrorlog (the code lives in the
//! library, `tools/src/lib.rs`, so the benchmark can run servers too).

use mirrorlog::{demo, inspect, outln, serve, status, witness};

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

    mirrorlog demo [--seconds N] [--clients N] [--keep]
        Starts a principal and a mirror on 127.0.0.1, writes from several
        clients, kills the principal, fails over to the mirror and checks
        that every acknowledged write is there.

    mirrorlog serve --role principal|mirror --dir DIR --secret-file FILE [OPTIONS]
        A Redis-protocol (RESP2) key-value server on a mirrored log; see
        `mirrorlog serve --help`.

    mirrorlog status [--host H] [--port N] [--json] [--watch [SECS]]
        A node's mirroring status: role, state, epoch, LSNs, send and redo
        queues, transport, commit latency per level.

    mirrorlog checkpoint [--host H] [--port N] [--password P]
        Asks a node for a checkpoint now (MIRROR CHECKPOINT) and prints where.

    mirrorlog witness --dir DIR --secret-file FILE [--listen ADDR:PORT]
                      [--database-id ID] [--lease-ms N] [--rho R]
                      [--tls-cert FILE --tls-key FILE --tls-ca FILE]
        The witness: records the current epoch and its principal durably in
        DIR, grants epochs by compare-and-set, leases the principal its right
        to commit without its mirror, and grants automatic failover only once
        that lease is certainly over (docs/design.md, Witness protocol).
        --lease-ms: the lease (default 1000, as the partners' default partner
        timeout); --rho: the bound on any clock's rate error (default 0.01).
        --tls-cert/--tls-key/--tls-ca: TLS on the witness port (all three);
        partners must present a certificate the CA signed (serve's
        --partner-tls-cert/--partner-tls-key, with --witness-tls-ca).

    mirrorlog failover [--host H] [--port N] [--password P]
        Manual failover, run on the principal (MIRROR FAILOVER): it stops
        taking writes, the mirror hardens everything, and the roles swap.
        Refused unless the mirror is SYNCHRONIZED. Loses nothing.

    mirrorlog force-service [--host H] [--port N] [--password P]
        Forced service, run on the mirror when the principal is gone (MIRROR
        FORCE-SERVICE): it becomes principal of a new epoch and says how much
        of what the old principal wrote may be lost.

    mirrorlog COMMAND --help
        That command's usage.

    mirrorlog --help | --version
";

/// The usage of subcommand `cmd`, printed by `mirrorlog CMD --help`.
fn usage_of(cmd: &str) -> Option<&'static str> {
    Some(match cmd {
        "inspect-log" => inspect::INSPECT_USAGE,
        "demo" => demo::DEMO_USAGE,
        "serve" => serve::SERVE_USAGE,
        "status" => status::STATUS_USAGE,
        "checkpoint" => status::CHECKPOINT_USAGE,
        "witness" => witness::WITNESS_USAGE,
        "failover" => status::FAILOVER_USAGE,
        "force-service" => status::FORCE_SERVICE_USAGE,
        _ => return None,
    })
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    // `mirrorlog CMD --help` (or -h) anywhere among CMD's flags: CMD's
    // usage on stdout, exit 0, and nothing else runs.
    if let Some(usage) = args.first().and_then(|c| usage_of(c)) {
        if args[1..].iter().any(|a| a == "--help" || a == "-h") {
            mirrorlog::out!("{usage}");
            return ExitCode::SUCCESS;
        }
    }
    match args.first().map(String::as_str) {
        None | Some("-h" | "--help" | "help") => {
            mirrorlog::out!("{USAGE}");
            ExitCode::SUCCESS
        }
        Some("-V" | "--version") => {
            outln!("mirrorlog {}", env!("CARGO_PKG_VERSION"));
            ExitCode::SUCCESS
        }
        Some("demo") => match demo::run(&args[1..]) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("mirrorlog demo: {e}");
                ExitCode::FAILURE
            }
        },
        Some("checkpoint") => match status::checkpoint(&args[1..]) {
            Ok(text) => {
                outln!("{text}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("mirrorlog checkpoint: {e}");
                ExitCode::FAILURE
            }
        },
        Some(cmd @ ("failover" | "force-service")) => {
            let r = if cmd == "failover" {
                status::failover(&args[1..])
            } else {
                status::force_service(&args[1..])
            };
            match r {
                Ok(text) => {
                    outln!("{text}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("mirrorlog {cmd}: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Some("witness") => match witness::parse(&args[1..]) {
            Ok(o) => {
                serve::init_logging(&o.log_level);
                match witness::run(o, serve::tracing_logger()) {
                    Ok(()) => ExitCode::SUCCESS,
                    Err(e) => {
                        tracing::error!("witness: {e}");
                        ExitCode::FAILURE
                    }
                }
            }
            Err(e) => {
                eprintln!("mirrorlog witness: {e}\n\n{}", witness::WITNESS_USAGE);
                ExitCode::from(2)
            }
        },
        Some("status") => match status::run(&args[1..]) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("mirrorlog status: {e}");
                ExitCode::FAILURE
            }
        },
        Some("serve") => match serve::parse_with_io(&args[1..]) {
            Ok((o, io)) => {
                serve::init_logging(&o.log_level);
                let logger = serve::tracing_logger();
                match serve::start_with_io(&o, io, logger.clone()) {
                    Ok(r) => {
                        tracing::info!(
                            "serving {} clients on {} (RESP; try redis-cli -p {}), partner {}",
                            // The role the node took, not the one asked
                            // for: with a witness, a node started as
                            // principal may have been demoted at start.
                            r.server.status().role,
                            r.client_addr,
                            r.client_addr.port(),
                            r.partner_addr
                        );
                        if let Some(t) = r.tls_addr {
                            tracing::info!(
                                "serving TLS clients on {t} (try redis-cli --tls --cacert CA.pem -p {})",
                                t.port()
                            );
                        }
                        match r.serve(o.checkpoint_every, logger) {
                            Ok(()) => ExitCode::SUCCESS,
                            Err(e) => {
                                tracing::error!("serving clients failed: {e}");
                                ExitCode::FAILURE
                            }
                        }
                    }
                    Err(e) => {
                        // A node starts with a few small durable writes (a
                        // new epoch in the epoch history): a disk full to the
                        // last block refuses them. Say what to do.
                        let e = e.to_string();
                        let hint = if e.contains("No space left on device")
                            || e.contains("Disk quota exceeded")
                        {
                            "; the disk is full: free some space on it and start again \
                             (nothing was lost: the log and checkpoints are as they were)"
                        } else {
                            ""
                        };
                        tracing::error!("could not start: {e}{hint}");
                        ExitCode::FAILURE
                    }
                }
            }
            Err(e) => {
                eprintln!("mirrorlog serve: {e}\n\n{}", serve::SERVE_USAGE);
                ExitCode::from(2)
            }
        },
        Some("inspect-log") => match inspect::parse_args(&args[1..]) {
            Ok(opts) => inspect::run(&opts),
            Err(e) => {
                eprintln!("mirrorlog inspect-log: {e}\n\n{}", inspect::INSPECT_USAGE);
                ExitCode::from(2)
            }
        },
        Some(other) => {
            eprintln!("mirrorlog: unknown command {other:?}\n\n{USAGE}");
            ExitCode::from(2)
        }
    }
}
