//! A TCP proxy on 127.0.0.1 that adds a fixed one-way delay to every byte
//! in each direction, without limiting bandwidth: what a mirror some
//! milliseconds away looks like. Each chunk read is stamped and written
//! out `delay` later by a separate thread, so many chunks are in flight at
//! once (a link with a long pipe, not a slow one).

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

pub struct DelayProxy {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    accept: Option<JoinHandle<()>>,
}

impl DelayProxy {
    /// Listens on 127.0.0.1 and forwards every connection to `upstream`,
    /// delaying each direction by `one_way`.
    pub fn start(upstream: SocketAddr, one_way: Duration) -> Result<DelayProxy, String> {
        let listener =
            TcpListener::bind("127.0.0.1:0").map_err(|e| format!("delay proxy: bind: {e}"))?;
        let addr = listener.local_addr().map_err(|e| e.to_string())?;
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let accept = std::thread::Builder::new()
            .name("delay-proxy".into())
            .spawn(move || {
                for conn in listener.incoming() {
                    if s.load(Ordering::Acquire) {
                        return;
                    }
                    let Ok(down) = conn else { continue };
                    let Ok(up) = TcpStream::connect(upstream) else {
                        continue;
                    };
                    let _ = down.set_nodelay(true);
                    let _ = up.set_nodelay(true);
                    let (Ok(d2), Ok(u2)) = (down.try_clone(), up.try_clone()) else {
                        continue;
                    };
                    pipe(down, u2, one_way);
                    pipe(up, d2, one_way);
                }
            })
            .map_err(|e| format!("delay proxy: {e}"))?;
        Ok(DelayProxy {
            addr,
            stop,
            accept: Some(accept),
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for DelayProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        // Wake the accept loop so it sees the flag.
        let _ = TcpStream::connect(self.addr);
        if let Some(h) = self.accept.take() {
            let _ = h.join();
        }
    }
}

/// `from` -> `to`, each chunk held back `delay` from when it was read.
fn pipe(mut from: TcpStream, mut to: TcpStream, delay: Duration) {
    let (tx, rx) = mpsc::channel::<(Instant, Vec<u8>)>();
    let _ = std::thread::Builder::new()
        .name("delay-read".into())
        .spawn(move || {
            let mut buf = vec![0u8; 256 << 10];
            loop {
                match from.read(&mut buf) {
                    Ok(0) | Err(_) => return, // dropping tx ends the writer
                    Ok(n) => {
                        if tx
                            .send((Instant::now() + delay, buf[..n].to_vec()))
                            .is_err()
                        {
                            return;
                        }
                    }
                }
            }
        });
    let _ = std::thread::Builder::new()
        .name("delay-write".into())
        .spawn(move || {
            for (due, bytes) in rx {
                let now = Instant::now();
                if due > now {
                    std::thread::sleep(due - now);
                }
                if to.write_all(&bytes).is_err() {
                    break;
                }
            }
            let _ = to.shutdown(Shutdown::Write);
        });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_round_trip_through_the_proxy_takes_the_added_delay_and_keeps_bytes_in_order() {
        let echo = TcpListener::bind("127.0.0.1:0").unwrap();
        let upstream = echo.local_addr().unwrap();
        std::thread::spawn(move || {
            let (mut s, _) = echo.accept().unwrap();
            let mut buf = [0u8; 4096];
            loop {
                match s.read(&mut buf) {
                    Ok(0) | Err(_) => return,
                    Ok(n) => s.write_all(&buf[..n]).unwrap(),
                }
            }
        });
        let proxy = DelayProxy::start(upstream, Duration::from_millis(5)).unwrap();
        let mut c = TcpStream::connect(proxy.addr()).unwrap();
        c.set_nodelay(true).unwrap();
        for round in 0..5u8 {
            let msg: Vec<u8> = (0..100).map(|i| i ^ round).collect();
            let t = Instant::now();
            c.write_all(&msg).unwrap();
            let mut back = vec![0u8; msg.len()];
            c.read_exact(&mut back).unwrap();
            let rtt = t.elapsed();
            assert_eq!(back, msg);
            assert!(rtt >= Duration::from_millis(10), "round trip {rtt:?}");
            assert!(rtt < Duration::from_millis(200), "round trip {rtt:?}");
        }
        drop(c);
        drop(proxy);
    }
}
