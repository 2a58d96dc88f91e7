//! The key-value server's RESP parser on arbitrary bytes (what any client
//! can send): it must never panic, and a command it accepts must respect
//! the limits and the bytes it claims to have used.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mirrorlog::resp::{parse_command, parse_reply, Limits};

fuzz_target!(|data: &[u8]| {
    let limits = Limits {
        max_bulk: 1 << 16,
        max_args: 256,
        max_inline: 4096,
        ..Limits::default()
    };
    let mut rest = data;
    // Parse a pipeline of commands until the bytes run out or are refused.
    while let Ok(Some((args, used))) = parse_command(rest, &limits) {
        assert!(used > 0 && used <= rest.len());
        assert!(args.len() <= limits.max_args);
        assert!(args.iter().all(|a| a.len() <= limits.max_bulk));
        rest = &rest[used..];
    }
    let _ = parse_reply(data);
});
