//! The progress line on standard error: `[ 7/42 1m05s] label [#####.....]`,
//! redrawn in place on a terminal; one line per step otherwise (logs, CI).

use std::io::Write as _;
use std::time::Instant;

pub struct Progress {
    total: usize,
    step: usize,
    start: Instant,
    label: String,
    tty: bool,
    last_len: usize,
}

impl Progress {
    pub fn new(total: usize) -> Progress {
        // SAFETY: isatty only inspects the descriptor.
        let tty = unsafe { libc::isatty(2) } == 1;
        Progress {
            total,
            step: 0,
            start: Instant::now(),
            label: String::new(),
            tty,
            last_len: 0,
        }
    }

    fn head(&self) -> String {
        let s = self.start.elapsed().as_secs();
        format!(
            "[{:>w$}/{} {}m{:02}s]",
            self.step,
            self.total,
            s / 60,
            s % 60,
            w = self.total.to_string().len()
        )
    }

    /// Starts the next step.
    pub fn begin(&mut self, label: &str) {
        self.step += 1;
        self.total = self.total.max(self.step);
        self.label = label.to_string();
        if self.tty {
            self.draw(0.0);
        } else {
            eprintln!("{} {}", self.head(), self.label);
        }
    }

    /// How far the current step is (0..=1); redraws on a terminal.
    pub fn tick(&mut self, done: f64) {
        if self.tty {
            self.draw(done);
        }
    }

    fn draw(&mut self, done: f64) {
        let filled = (done.clamp(0.0, 1.0) * 20.0).round() as usize;
        let line = format!(
            "{} {} [{}{}]",
            self.head(),
            self.label,
            "#".repeat(filled),
            ".".repeat(20 - filled)
        );
        let pad = self.last_len.saturating_sub(line.chars().count());
        eprint!("\r{line}{}", " ".repeat(pad));
        let _ = std::io::stderr().flush();
        self.last_len = line.chars().count();
    }

    /// Ends the bar (a newline on a terminal).
    pub fn finish(&mut self) {
        if self.tty && self.last_len > 0 {
            eprintln!();
            self.last_len = 0;
        }
        eprintln!(
            "done: {} steps in {:.0} s",
            self.step,
            self.start.elapsed().as_secs_f64()
        );
    }
}
