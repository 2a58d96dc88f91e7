//! Standard output for the command-line tools, as Unix tools treat it: once
//! the reader has gone (`mirrorlog status | head -1`), output stops quietly.
//!
//! Rust ignores SIGPIPE (so a server writing to a closed socket gets EPIPE,
//! not death), and `println!` then panics on the broken pipe (exit 101). The
//! tools print through here instead: a broken pipe marks stdout closed and
//! every later write is dropped, so a command finishes (and a demo still
//! stops the nodes it started) without printing a panic.

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};

static CLOSED: AtomicBool = AtomicBool::new(false);

/// Whether the reader of stdout has gone (a write met EPIPE).
pub fn closed() -> bool {
    CLOSED.load(Ordering::Relaxed)
}

/// Writes `args` to stdout and flushes. A broken pipe closes stdout for
/// good; any other write error is reported once on stderr and also closes it.
pub fn write(args: std::fmt::Arguments<'_>) {
    if closed() {
        return;
    }
    let mut out = std::io::stdout().lock();
    if let Err(e) = out.write_fmt(args).and_then(|()| out.flush()) {
        CLOSED.store(true, Ordering::Relaxed);
        if e.kind() != std::io::ErrorKind::BrokenPipe {
            eprintln!("mirrorlog: writing to standard output: {e}");
        }
    }
}

/// `print!` through [`write`].
#[macro_export]
macro_rules! out {
    ($($arg:tt)*) => { $crate::out::write(format_args!($($arg)*)) };
}

/// `println!` through [`write`].
#[macro_export]
macro_rules! outln {
    () => { $crate::out::write(format_args!("\n")) };
    ($($arg:tt)*) => { $crate::out::write(format_args!("{}\n", format_args!($($arg)*))) };
}
