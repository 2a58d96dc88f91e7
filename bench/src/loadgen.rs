//! The load generator: closed loop and open loop, with coordinated
//! omission corrected in the open loop.
//!
//! * Closed loop: N clients, each issues its next operation when the
//!   previous one is acknowledged. Latency = acknowledgement - issue. This
//!   is what most benchmarks do; it hides stalls, because a stalled system
//!   also stops the clients from sending (coordinated omission).
//! * Open loop: operations arrive at a fixed rate R, spread evenly over N
//!   clients (client i's k-th operation is *intended* to start at
//!   `offset_i + k * N/R`). Latency = acknowledgement - intended start, as
//!   wrk2 does: an operation that had to wait for a stalled predecessor is
//!   charged the wait. When the timed window ends with operations intended
//!   but not yet issued (the system fell behind), each is recorded with the
//!   time it had already waited (a lower bound) and counted as backlog.
//!
//! Operations whose (intended) start falls in the warm-up are not recorded.
//! The per-client loop runs against a [`Clock`], so the timing math is unit
//! tested with a simulated clock and service.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

use crate::local_commit::new_histogram;

/// One client of a system under test. `call` does one round: sends one
/// operation (or a pipeline of them) and returns when every reply is in,
/// with the number of operations it completed.
pub trait Client {
    fn call(&mut self) -> Result<u64, String>;
}

impl<F: FnMut() -> Result<u64, String>> Client for F {
    fn call(&mut self) -> Result<u64, String> {
        self()
    }
}

/// How operations arrive.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Load {
    /// Each of `clients` issues its next operation when the last one ends.
    Closed { clients: usize },
    /// `rate` operations per second in total, spread over `clients`.
    Open { clients: usize, rate: f64 },
}

impl Load {
    pub fn clients(&self) -> usize {
        match *self {
            Load::Closed { clients } | Load::Open { clients, .. } => clients,
        }
    }

    pub fn describe(&self) -> String {
        match *self {
            Load::Closed { clients } => format!("closed c{clients}"),
            Load::Open { clients, rate } => format!("open c{clients} @{rate:.0}/s"),
        }
    }
}

/// Nanoseconds since the run's start, and a way to wait for a moment.
pub trait Clock {
    fn now(&self) -> u64;
    fn sleep_until(&self, t: u64);
}

/// The open loop's arrival times for one client.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Schedule {
    /// First intended start (ns since the run's start).
    pub offset: u64,
    /// Between two intended starts of this client (ns).
    pub interval: f64,
}

impl Schedule {
    /// Client `index` of `clients` sharing `rate` operations/s, starting at
    /// `start`: the clients' arrivals interleave evenly.
    pub fn for_client(rate: f64, clients: usize, index: usize, start: u64) -> Schedule {
        let interval = clients as f64 * 1e9 / rate;
        Schedule {
            offset: start + (interval * index as f64 / clients as f64) as u64,
            interval,
        }
    }

    pub fn intended(&self, k: u64) -> u64 {
        self.offset + (self.interval * k as f64) as u64
    }
}

/// The timed window (ns since the run's start).
#[derive(Clone, Copy, Debug)]
pub struct Window {
    /// Operations starting (intended to start) before this are warm-up.
    pub timed_from: u64,
    /// No operation is issued at or after this.
    pub end: u64,
}

/// What one client measured in the timed window.
pub struct ClientOut {
    pub ops: u64,
    pub hist: Histogram<u64>,
    /// Open loop: operations intended in the window but never issued.
    pub backlog: u64,
    /// Open loop: how late the generator itself issued operations it was
    /// not behind on (its own timing error; ns).
    pub lateness: Histogram<u64>,
}

fn record_n(h: &mut Histogram<u64>, v: u64, n: u64) {
    // Beyond the histogram's 100 s bound a value counts as 100 s, not lost.
    h.saturating_record_n(v.max(1), n);
}

/// One client's pacing and accounting: when its next operation is due,
/// and what each completion records. The blocking loop ([`client_loop`])
/// and the event-driven driver ([`crate::multiplex`]) share it, so the
/// open-loop arithmetic exists once (and is tested once).
pub struct Pacer {
    schedule: Option<Schedule>,
    win: Window,
    /// Open loop: index of the next intended operation.
    k: u64,
    /// The round in flight: the time its latency counts from.
    from: u64,
    /// Open loop: the pacer told the caller to wait for the next start
    /// (it was not behind), so the start's lateness is the generator's.
    waited: bool,
    pub out: ClientOut,
}

impl Pacer {
    pub fn new(schedule: Option<Schedule>, win: Window) -> Pacer {
        Pacer {
            schedule,
            win,
            k: 0,
            from: 0,
            waited: false,
            out: ClientOut {
                ops: 0,
                hist: new_histogram(),
                backlog: 0,
                lateness: new_histogram(),
            },
        }
    }

    /// When the next round should start (at or before `now`: at once), or
    /// None when this client is done. An open loop that is behind when the
    /// window closes records what was due and never issued (as backlog,
    /// with the wait it had accrued) and is done.
    pub fn next(&mut self, now: u64) -> Option<u64> {
        match self.schedule {
            None => (now < self.win.end).then_some(now),
            Some(s) => {
                let intended = s.intended(self.k);
                if intended >= self.win.end {
                    return None;
                }
                if now >= self.win.end {
                    let mut j = self.k;
                    loop {
                        let due = s.intended(j);
                        if due >= self.win.end {
                            break;
                        }
                        if due >= self.win.timed_from {
                            record_n(&mut self.out.hist, now - due, 1);
                            self.out.backlog += 1;
                        }
                        j += 1;
                    }
                    self.k = j;
                    return None;
                }
                // Asked again for the same operation (an event loop polls),
                // it stays "waited" once it was early.
                if now < intended {
                    self.waited = true;
                }
                Some(intended)
            }
        }
    }

    /// The round [`Pacer::next`] allowed was sent at `now`.
    pub fn issued(&mut self, now: u64) {
        match self.schedule {
            None => self.from = now,
            Some(s) => {
                self.from = s.intended(self.k);
                if self.waited && self.from >= self.win.timed_from {
                    record_n(&mut self.out.lateness, now.saturating_sub(self.from), 1);
                }
            }
        }
    }

    /// The round in flight completed `ops` operations at `now`.
    pub fn completed(&mut self, now: u64, ops: u64) {
        if self.from >= self.win.timed_from {
            record_n(&mut self.out.hist, now.saturating_sub(self.from), ops);
            self.out.ops += ops;
        }
        if self.schedule.is_some() {
            self.k += 1;
        }
        self.waited = false;
    }
}

/// One client's loop. `schedule` None = closed loop. Stops early (and
/// returns what it has) when `stop` is set.
pub fn client_loop(
    clock: &impl Clock,
    client: &mut dyn Client,
    schedule: Option<Schedule>,
    win: Window,
    stop: &AtomicBool,
) -> Result<ClientOut, String> {
    let mut p = Pacer::new(schedule, win);
    loop {
        if stop.load(Ordering::Relaxed) {
            return Ok(p.out);
        }
        let now = clock.now();
        let Some(t) = p.next(now) else {
            return Ok(p.out);
        };
        if t > now {
            clock.sleep_until(t);
        }
        p.issued(clock.now());
        let n = client.call()?;
        p.completed(clock.now(), n);
    }
}

/// The real clock: monotonic time since a shared start.
pub struct RealClock(pub Instant);

impl Clock for RealClock {
    fn now(&self) -> u64 {
        self.0.elapsed().as_nanos() as u64
    }

    fn sleep_until(&self, t: u64) {
        let now = self.now();
        if t > now {
            std::thread::sleep(Duration::from_nanos(t - now));
        }
    }
}

/// Asks the kernel to wake this thread's sleeps on time (the default timer
/// slack of 50 us would otherwise show up as open-loop latency).
pub(crate) fn tight_timer_slack() {
    // SAFETY: PR_SET_TIMERSLACK takes an integer argument and only changes
    // this thread's timer slack.
    unsafe {
        libc::prctl(libc::PR_SET_TIMERSLACK, 1 as libc::c_ulong, 0, 0, 0);
    }
}

/// A whole run: every client's results merged.
pub struct RunOut {
    pub ops: u64,
    pub seconds: f64,
    pub hist: Histogram<u64>,
    pub backlog: u64,
    pub lateness: Histogram<u64>,
}

impl RunOut {
    /// Every client's results of a run `timed` long, merged.
    pub fn merge(
        outs: impl IntoIterator<Item = ClientOut>,
        timed: Duration,
    ) -> Result<RunOut, String> {
        let mut run = RunOut {
            ops: 0,
            seconds: timed.as_secs_f64(),
            hist: new_histogram(),
            backlog: 0,
            lateness: new_histogram(),
        };
        for o in outs {
            run.ops += o.ops;
            run.backlog += o.backlog;
            run.hist.add(&o.hist).map_err(|e| format!("{e:?}"))?;
            run.lateness
                .add(&o.lateness)
                .map_err(|e| format!("{e:?}"))?;
        }
        Ok(run)
    }

    pub fn ops_per_s(&self) -> f64 {
        self.ops as f64 / self.seconds.max(1e-9)
    }
}

/// Runs `clients` (already connected; one per client of `load`) under
/// `load`: `warmup` untimed, then `timed`. `tick` is called about every
/// 100 ms with the fraction of the run done (for a progress bar).
pub fn run(
    load: Load,
    clients: Vec<Box<dyn Client + Send + '_>>,
    warmup: Duration,
    timed: Duration,
    tick: &mut dyn FnMut(f64),
) -> Result<RunOut, String> {
    let n = clients.len();
    if n != load.clients() || n == 0 {
        return Err(format!(
            "the load wants {} clients, {n} were made",
            load.clients()
        ));
    }
    if let Load::Open { rate, .. } = load {
        if !(rate.is_finite() && rate > 0.0) {
            return Err(format!("open-loop rate must be positive, got {rate}"));
        }
    }
    // Everyone starts together, a little after the threads exist.
    let lead = 5_000_000u64;
    let win = Window {
        timed_from: lead + warmup.as_nanos() as u64,
        end: lead + (warmup + timed).as_nanos() as u64,
    };
    let stop = AtomicBool::new(false);
    let clock0 = Instant::now();
    let outs = std::thread::scope(|s| {
        let handles: Vec<_> = clients
            .into_iter()
            .enumerate()
            .map(|(i, mut c)| {
                let stop = &stop;
                std::thread::Builder::new()
                    .name(format!("load-{i}"))
                    .spawn_scoped(s, move || {
                        tight_timer_slack();
                        let clock = RealClock(clock0);
                        clock.sleep_until(lead);
                        let sched = match load {
                            Load::Closed { .. } => None,
                            Load::Open { clients, rate } => {
                                Some(Schedule::for_client(rate, clients, i, lead))
                            }
                        };
                        let r = client_loop(&clock, c.as_mut(), sched, win, stop);
                        if r.is_err() {
                            stop.store(true, Ordering::Relaxed);
                        }
                        r
                    })
                    .map_err(|e| format!("spawning a load thread: {e}"))
            })
            .collect();
        let clock = RealClock(clock0);
        while clock.now() < win.end && !stop.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(100));
            let done = clock.now() as f64 / win.end as f64;
            tick(done.min(1.0));
        }
        let mut outs = Vec::with_capacity(n);
        for h in handles {
            match h {
                Ok(h) => outs.push(
                    h.join()
                        .unwrap_or_else(|_| Err("a load thread panicked".into())),
                ),
                Err(e) => {
                    stop.store(true, Ordering::Relaxed);
                    outs.push(Err(e));
                }
            }
        }
        outs
    });
    RunOut::merge(outs.into_iter().collect::<Result<Vec<_>, _>>()?, timed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    /// A simulated clock; a simulated service advances it.
    struct SimClock(Cell<u64>);

    impl Clock for SimClock {
        fn now(&self) -> u64 {
            self.0.get()
        }
        fn sleep_until(&self, t: u64) {
            if t > self.0.get() {
                self.0.set(t);
            }
        }
    }

    const MS: u64 = 1_000_000;

    /// A service that takes 100 us per operation, except that operation
    /// number `stall_at` takes 50 ms (a stall, say a slow fsync).
    fn run_sim(schedule: Option<Schedule>, stall_at: u64) -> ClientOut {
        let clock = SimClock(Cell::new(0));
        let calls = Cell::new(0u64);
        let mut client = || {
            let i = calls.get();
            calls.set(i + 1);
            let cost = if i == stall_at { 50 * MS } else { MS / 10 };
            clock.0.set(clock.0.get() + cost);
            Ok(1)
        };
        let win = Window {
            timed_from: 0,
            end: 1_000 * MS,
        };
        let stop = AtomicBool::new(false);
        client_loop(&clock, &mut client, schedule, win, &stop).unwrap()
    }

    #[test]
    fn open_loop_charges_a_stall_to_every_operation_that_waited_for_it() {
        // 1,000 operations/s from one client: one every 1 ms for 1 s.
        let open = run_sim(Some(Schedule::for_client(1_000.0, 1, 0, 0)), 100);
        assert_eq!(open.ops, 1_000, "every intended operation was issued");
        assert_eq!(open.backlog, 0);
        // The stalled one took 50 ms; the ~49 due during the stall waited
        // 49, 48, ... ms. A closed loop sees one slow operation.
        let slow = open.hist.count_between(10 * MS, u64::MAX);
        assert!((45..=50).contains(&slow), "{slow} operations over 10 ms");
        assert!(open.hist.value_at_quantile(0.99) >= 40 * MS);
        assert!(open.hist.max() >= 50 * MS);

        let closed = run_sim(None, 100);
        assert_eq!(closed.hist.count_between(10 * MS, u64::MAX), 1);
        // Closed loop p99 looks healthy: the omission the open loop corrects.
        assert!(closed.hist.value_at_quantile(0.99) < MS);
        assert!(closed.ops > 9_000, "closed loop runs flat out");
    }

    #[test]
    fn open_loop_without_stalls_measures_service_time() {
        let open = run_sim(Some(Schedule::for_client(1_000.0, 1, 0, 0)), u64::MAX);
        assert_eq!(open.ops, 1_000);
        let p = open.hist.value_at_quantile(0.999);
        assert!((99_000..=101_000).contains(&p), "{p}");
        // The simulated clock wakes exactly on time.
        assert!(open.lateness.max() <= 1, "{}", open.lateness.max());
    }

    #[test]
    fn an_overloaded_open_loop_counts_its_backlog() {
        // 20,000/s against a 100 us service (10,000/s at most).
        let open = run_sim(Some(Schedule::for_client(20_000.0, 1, 0, 0)), u64::MAX);
        // ~10,000 done in the second; ~10,000 never issued.
        assert!((9_900..=10_001).contains(&open.ops), "{}", open.ops);
        assert!((9_900..=10_100).contains(&open.backlog), "{}", open.backlog);
        // Latency grows through the run: the last ones waited ~0.5 s.
        assert!(open.hist.max() >= 490 * MS, "{}", open.hist.max());
    }

    #[test]
    fn warm_up_operations_are_not_recorded() {
        let clock = SimClock(Cell::new(0));
        let mut client = || {
            clock.0.set(clock.0.get() + MS);
            Ok(1)
        };
        let win = Window {
            timed_from: 100 * MS,
            end: 200 * MS,
        };
        let stop = AtomicBool::new(false);
        let out = client_loop(&clock, &mut client, None, win, &stop).unwrap();
        assert_eq!(out.ops, 100);
        let sched = Schedule::for_client(100.0, 1, 0, 0); // every 10 ms
        clock.0.set(0);
        let out = client_loop(&clock, &mut client, Some(sched), win, &stop).unwrap();
        assert_eq!(out.ops, 10);
    }

    #[test]
    fn regression_a_pacer_asked_again_after_waiting_still_records_its_lateness() {
        // An event loop asks `next` when it computes its timeout (early)
        // and again when it wakes (on time or late).
        let win = Window {
            timed_from: 0,
            end: 100 * MS,
        };
        let mut p = Pacer::new(Some(Schedule::for_client(1_000.0, 1, 0, 0)), win);
        assert_eq!(p.next(0), Some(0));
        p.issued(0);
        p.completed(MS / 2, 1);
        assert_eq!(p.next(MS / 2), Some(MS), "the next is due at 1 ms");
        assert_eq!(p.next(MS + 30_000), Some(MS), "woke 30 us late");
        p.issued(MS + 30_000);
        p.completed(MS + 80_000, 1);
        assert_eq!(p.out.lateness.len(), 1);
        let late = p.out.lateness.max();
        assert!((29_000..=31_000).contains(&late), "{late}");
        // Behind schedule (never early): not the generator's lateness.
        assert_eq!(p.next(5 * MS), Some(2 * MS));
        p.issued(5 * MS);
        p.completed(5 * MS + 1, 1);
        assert_eq!(p.out.lateness.len(), 1);
        // Latency counts from the intended start: 3 ms, not 1 ns.
        assert!(p.out.hist.max() >= 3 * MS - 10_000);
    }

    #[test]
    fn clients_interleave_their_arrivals() {
        let s: Vec<Schedule> = (0..4)
            .map(|i| Schedule::for_client(4_000.0, 4, i, 0))
            .collect();
        // Together: one arrival every 250 us.
        let mut all: Vec<u64> = s
            .iter()
            .flat_map(|s| (0..10).map(move |k| s.intended(k)))
            .collect();
        all.sort_unstable();
        for (i, t) in all.iter().enumerate() {
            assert_eq!(*t, i as u64 * 250_000);
        }
    }

    #[test]
    fn pipelined_rounds_record_each_operation() {
        let clock = SimClock(Cell::new(0));
        let mut client = || {
            clock.0.set(clock.0.get() + MS);
            Ok(32)
        };
        let win = Window {
            timed_from: 0,
            end: 10 * MS,
        };
        let stop = AtomicBool::new(false);
        let out = client_loop(&clock, &mut client, None, win, &stop).unwrap();
        assert_eq!(out.ops, 320);
        assert_eq!(out.hist.len(), 320);
    }

    #[test]
    fn a_real_run_merges_clients() {
        let mk = || -> Box<dyn Client + Send> {
            Box::new(|| {
                std::thread::sleep(Duration::from_micros(200));
                Ok(1)
            })
        };
        let mut ticks = 0;
        let out = run(
            Load::Open {
                clients: 2,
                rate: 2_000.0,
            },
            vec![mk(), mk()],
            Duration::from_millis(50),
            Duration::from_millis(300),
            &mut |_| ticks += 1,
        )
        .unwrap();
        // 2,000/s for 0.3 s, give or take the edges: done, or counted as
        // backlog if a loaded machine fell behind at the end.
        let intended = out.ops + out.backlog;
        assert!((550..=650).contains(&intended), "{intended}");
        assert_eq!(out.hist.len(), intended);
        assert!(out.hist.value_at_quantile(0.5) >= 200_000);
        assert!(ticks >= 2);
        assert!(run(
            Load::Closed { clients: 3 },
            vec![mk()],
            Duration::ZERO,
            Duration::ZERO,
            &mut |_| {}
        )
        .is_err());
    }
}
