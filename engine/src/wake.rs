//! A wake-up a thread can wait on together with a socket: an `eventfd`.
//!
//! The log signals it when its written or hardened LSN moves, so the
//! principal's session thread sleeps in one `poll` (or one io_uring wait) on
//! "the partner sent something" *or* "there is new log to ship", instead of
//! polling on a timer. Signalling costs a `write` syscall, so it is only
//! done while the waiter is *armed*: the waiter arms, re-checks the LSNs it
//! cares about, then sleeps; a signal between the arm and the sleep leaves
//! the eventfd readable and the sleep returns at once, so nothing is missed.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};

pub struct Wakeup {
    fd: OwnedFd,
    armed: AtomicBool,
    /// Unique for the life of the process (fd numbers are reused).
    id: u64,
}

static NEXT_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

impl Wakeup {
    pub fn new() -> io::Result<Wakeup> {
        // SAFETY: plain syscall; the result is checked.
        let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Wakeup {
            // SAFETY: fd is a fresh descriptor we own.
            fd: unsafe { OwnedFd::from_raw_fd(fd) },
            armed: AtomicBool::new(false),
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
        })
    }

    /// The waiter is about to re-check its condition and sleep.
    pub fn arm(&self) {
        self.armed.store(true, Ordering::SeqCst);
    }

    /// Wakes the waiter if it is armed (one syscall), else does nothing.
    pub fn signal(&self) {
        if self.armed.swap(false, Ordering::SeqCst) {
            self.force();
        }
    }

    /// Makes the eventfd readable regardless of arming (for stopping).
    pub fn force(&self) {
        let one: u64 = 1;
        // SAFETY: writes 8 bytes from a valid u64. EAGAIN (counter at its
        // maximum) still leaves the fd readable, which is all we need.
        unsafe {
            libc::write(
                self.fd.as_raw_fd(),
                (&one as *const u64).cast(),
                std::mem::size_of::<u64>(),
            );
        }
    }

    /// Consumes a pending signal (the fd is non-blocking).
    pub fn drain(&self) {
        let mut v: u64 = 0;
        // SAFETY: reads 8 bytes into a valid u64; EAGAIN means none pending.
        unsafe {
            libc::read(
                self.fd.as_raw_fd(),
                (&mut v as *mut u64).cast(),
                std::mem::size_of::<u64>(),
            );
        }
    }

    pub fn fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// An identity no other `Wakeup` of this process has.
    pub fn id(&self) -> u64 {
        self.id
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn readable(w: &Wakeup) -> bool {
        let mut p = libc::pollfd {
            fd: w.fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        unsafe { libc::poll(&mut p, 1, 0) == 1 }
    }

    #[test]
    fn signals_only_when_armed() {
        let w = Wakeup::new().unwrap();
        w.signal();
        assert!(!readable(&w), "an unarmed signal must cost nothing");
        w.arm();
        w.signal();
        assert!(readable(&w));
        w.drain();
        assert!(!readable(&w));
        w.signal();
        assert!(!readable(&w), "a signal disarms");
    }
}
