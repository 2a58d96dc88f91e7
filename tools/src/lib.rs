//! The `mirrorlog` tools as a library: the RESP key-value server on the
//! engine (`serve`, `server`, `kv`, `resp`, `checkpoint`), a small RESP
//! client, the demo, `status`, `inspect-log` and the `witness` command. The `mirrorlog` binary is
//! a thin command-line front; the benchmark runs servers in process.

pub mod checkpoint;
pub mod client;
pub mod demo;
pub mod inspect;
pub mod keyspace;
pub mod kv;
pub mod out;
pub mod resp;
pub mod serve;
pub mod server;
pub mod status;
pub mod tls;
pub mod witness;
