//! Property tests of the RESP parser: every command a client can encode
//! parses back to itself, from any split of its bytes; arbitrary bytes give
//! a command, "incomplete" or an error, never a panic, and never more
//! arguments or bytes than the limits allow.

use mirrorlog::resp::{encode_command, parse_command, parse_reply, Limits, Reply};
use proptest::prelude::*;

fn limits() -> Limits {
    Limits {
        max_bulk: 4096,
        max_args: 64,
        max_inline: 1024,
        ..Limits::default()
    }
}

proptest! {
    #[test]
    fn encoded_commands_parse_back_from_any_prefix(
        args in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..300), 1..20),
        cut in any::<prop::sample::Index>(),
    ) {
        let refs: Vec<&[u8]> = args.iter().map(|a| a.as_slice()).collect();
        let mut bytes = Vec::new();
        encode_command(&refs, &mut bytes);
        let (got, used) = parse_command(&bytes, &limits()).unwrap().unwrap();
        prop_assert_eq!(&got, &args);
        prop_assert_eq!(used, bytes.len());
        let i = cut.index(bytes.len());
        prop_assert_eq!(parse_command(&bytes[..i], &limits()).unwrap(), None);
    }

    #[test]
    fn arbitrary_bytes_never_panic_and_respect_the_limits(
        bytes in proptest::collection::vec(any::<u8>(), 0..3000),
        star in any::<bool>(),
    ) {
        let mut b = bytes;
        if star && !b.is_empty() {
            b[0] = b'*';
        }
        if let Ok(Some((args, used))) = parse_command(&b, &limits()) {
            prop_assert!(used <= b.len());
            prop_assert!(args.len() <= limits().max_args);
            prop_assert!(args.iter().all(|a| a.len() <= limits().max_bulk));
        }
        let _ = parse_reply(&b);
    }

    #[test]
    fn replies_round_trip(
        items in proptest::collection::vec(
            prop_oneof![
                any::<i64>().prop_map(Reply::Int),
                proptest::collection::vec(any::<u8>(), 0..100).prop_map(Reply::Bulk),
                Just(Reply::Nil),
                "[a-zA-Z0-9 ]{0,40}".prop_map(Reply::Simple),
                "[a-zA-Z0-9 ]{0,40}".prop_map(Reply::Error),
            ],
            0..20,
        ),
    ) {
        let r = Reply::Array(items);
        let mut out = Vec::new();
        r.encode(&mut out);
        let (back, used) = parse_reply(&out).unwrap().unwrap();
        prop_assert_eq!(back, r);
        prop_assert_eq!(used, out.len());
    }
}
