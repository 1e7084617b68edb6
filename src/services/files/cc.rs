//! Congestion control for the file service, run by `files-get`.
//!
//! The server keeps no state between requests (under the fork model each request
//! datagram is its own process), so the client holds the whole control loop, as a
//! TCP sender does but at the receiving end: it asks for chunks in windows, counts
//! every chunk that arrives as an acknowledgement, measures round-trip times, sizes
//! its requests by its congestion window and paces them (each GET names the gap the
//! server keeps between its chunks). Nothing a client asks for can exceed what its
//! own window allows, and a client that misbehaves only floods its own, validated,
//! address.
//!
//! - [`RttEstimator`]: RFC 6298 smoothed RTT and variance; the retransmission
//!   timeout is `srtt + max(G, 4·rttvar)` with exponential back-off, floored at
//!   [`MIN_RTO`] instead of RFC 6298's 1 s (as Linux's 200 ms and QUIC's PTO, RFC
//!   9002, do not use it either): a lost last chunk costs a few RTTs, not a second.
//! - [`Window`]: a loss-based AIMD with slow start, the Reno-friendly region of CUBIC
//!   (RFC 9438 §4.3: multiplicative decrease β = 0.7 and additive increase
//!   α = 3(1−β)/(1+β) ≈ 0.53 chunks per RTT, which takes the same average share as
//!   Reno's β = 0.5, α = 1 with a shallower saw-tooth, so a modest queue stays
//!   busy). One decrease per window of losses (NewReno's recovery point). Slow
//!   start starts at 10 chunks (RFC 6928) and leaves early on a rising RTT, as
//!   HyStart++ (RFC 9406) does, with its conservative slow start that resumes when
//!   the RTT rise was noise, so the queue is not overrun by a doubling. Two rounds of
//!   it rather than the RFC's five (each grows the window by a quarter: five
//!   overran a 64-packet queue by a few percent), and the rise is also judged within
//!   a round (a run of samples a quarter of the RTT above the minimum), because
//!   pacing at twice the window's rate fills a queue before the next round shows it.
//! - Loss classification (TCP Veno's idea): a loss while this round's RTT is within
//!   eta of the path's minimum (no queue stands) and the recent loss rate is under
//!   5% is taken as the path's (a radio, a bad cable) and does not shrink the
//!   window; a queue that overflows always shows a raised RTT first.
//! - Losses a later arrival shows to be spurious (reordering) give back the window
//!   they cost, as TCP's Eifel and DSACK undo do. Loss detection itself (RACK, RFC
//!   8985, and the retransmission timer) is in [`super::client`].
//!
//! Why loss-based and TCP-friendly rather than LEDBAT (RFC 6817): a file fetched on
//! request is foreground traffic the user waits for; LEDBAT would yield nearly the
//! whole link to any TCP flow and, on a link whose queue is shared with other
//! delay-blind traffic, get close to nothing. Sharing the link about evenly with TCP
//! downloads, as TCP flows share it among themselves, is what a file service should
//! do.

use std::time::Duration;

/// Floor of the retransmission timeout.
pub const MIN_RTO: Duration = Duration::from_millis(50);
/// Ceiling of the retransmission timeout (RFC 6298 2.5).
pub const MAX_RTO: Duration = Duration::from_secs(60);
/// Clock granularity G of RFC 6298.
const GRANULARITY: Duration = Duration::from_millis(1);

/// RFC 6298 round-trip time estimation.
#[derive(Debug, Clone)]
pub struct RttEstimator {
    srtt: Option<Duration>,
    rttvar: Duration,
    min: Duration,
    initial: Duration,
    backoff: u32,
}

impl RttEstimator {
    /// Before any sample the timeout is `initial` (RFC 6298 says 1 s).
    pub fn new(initial: Duration) -> RttEstimator {
        RttEstimator {
            srtt: None,
            rttvar: Duration::ZERO,
            min: Duration::MAX,
            initial,
            backoff: 0,
        }
    }

    /// Takes a measurement (never one of a request that was sent twice: Karn's rule
    /// is the caller's) and ends any back-off.
    pub fn sample(&mut self, r: Duration) {
        let r = r.max(Duration::from_micros(1));
        self.min = self.min.min(r);
        match self.srtt {
            None => {
                self.srtt = Some(r);
                self.rttvar = r / 2;
            }
            Some(srtt) => {
                let diff = srtt.abs_diff(r);
                self.rttvar = self.rttvar * 3 / 4 + diff / 4;
                self.srtt = Some(srtt * 7 / 8 + r / 8);
            }
        }
        self.backoff = 0;
    }

    /// The smoothed RTT (the initial timeout before any sample).
    pub fn srtt(&self) -> Duration {
        self.srtt.unwrap_or(self.initial)
    }

    /// The smallest RTT seen (the initial timeout before any sample).
    pub fn min_rtt(&self) -> Duration {
        if self.min == Duration::MAX {
            self.initial
        } else {
            self.min
        }
    }

    /// True once a sample was taken.
    pub fn measured(&self) -> bool {
        self.srtt.is_some()
    }

    /// The retransmission timeout, backed off.
    pub fn rto(&self) -> Duration {
        let base = match self.srtt {
            None => self.initial,
            Some(srtt) => (srtt + (self.rttvar * 4).max(GRANULARITY)).max(MIN_RTO),
        };
        (base * 2u32.saturating_pow(self.backoff)).min(MAX_RTO)
    }

    /// Ends the back-off without a sample: a chunk asked for arrived, so the path
    /// works again (RFC 6298 5.7 would wait for a sample, which Karn's rule
    /// withholds from chunks asked for twice, so on a lossy path the doubled timeout
    /// would linger for many rounds).
    pub fn progress(&mut self) {
        self.backoff = 0;
    }

    /// Doubles the timeout (RFC 6298 5.5).
    pub fn back_off(&mut self) {
        self.backoff = (self.backoff + 1).min(16);
    }
}

/// Multiplicative decrease on loss.
pub const BETA: f64 = 0.7;
/// Additive increase per RTT in congestion avoidance: 3(1−β)/(1+β).
pub const ALPHA: f64 = 3.0 * (1.0 - BETA) / (1.0 + BETA);
/// Initial window in chunks (RFC 6928).
pub const INITIAL_WINDOW: f64 = 10.0;
/// Smallest window after a loss.
pub const MIN_WINDOW: f64 = 2.0;
/// Samples a round needs before HyStart++ judges it (RFC 9406 N_RTT_SAMPLE).
const HYSTART_SAMPLES: u32 = 8;
/// Rounds of conservative slow start before congestion avoidance.
const CSS_ROUNDS: u32 = 2;

/// Where the window is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    SlowStart,
    /// HyStart++ saw the RTT rise: grow at a quarter of slow start's pace for a few
    /// rounds; back to slow start if the rise was noise.
    Conservative {
        rounds: u32,
        baseline: Duration,
    },
    Avoidance,
}

/// The congestion window, in chunks.
#[derive(Debug, Clone)]
pub struct Window {
    cwnd: f64,
    /// Slow start ends here (set by a loss or a timeout).
    ssthresh: f64,
    max: f64,
    phase: Phase,
    /// Losses of chunks requested before this sequence number belong to the episode
    /// that already reduced the window.
    recover: u64,
    /// The round (one RTT of requests) ends when a chunk requested at or after this
    /// sequence number arrives.
    round_end: u64,
    last_round_min: Duration,
    round_min: Duration,
    round_samples: u32,
    /// The window before the current loss episode, restored if every loss of the
    /// episode turns out spurious (as TCP's Eifel and DSACK undo do).
    prior: Option<(f64, f64, Phase)>,
    episode_losses: u32,
    episode_spurious: u32,
    /// The smallest RTT sample, and how many samples in a row exceeded it by eta.
    min_rtt: Duration,
    high_run: u32,
    /// Chunks acknowledged and lost this round, and the smoothed fraction lost.
    round_acks: u32,
    round_losses: u32,
    loss_rate: f64,
    random_losses: u64,
    /// A retransmission timeout happened (HyStart++ is for the first slow start).
    timed_out: bool,
}

/// Above this recent loss rate no loss is taken as random (see
/// `Window::looks_random`).
pub const RANDOM_LOSS_MAX: f64 = 0.05;

/// HyStart++'s threshold of a meaningful RTT rise: an eighth, within 4..16 ms.
fn eta(rtt: Duration) -> Duration {
    (rtt / 8).clamp(Duration::from_millis(4), Duration::from_millis(16))
}

impl Window {
    /// A window that never grows past `max` chunks (what the receive buffer holds).
    pub fn new(max: f64) -> Window {
        let max = max.max(MIN_WINDOW);
        Window {
            cwnd: INITIAL_WINDOW.min(max),
            ssthresh: f64::INFINITY,
            max,
            phase: Phase::SlowStart,
            recover: 0,
            round_end: 0,
            last_round_min: Duration::MAX,
            round_min: Duration::MAX,
            round_samples: 0,
            prior: None,
            episode_losses: 0,
            episode_spurious: 0,
            min_rtt: Duration::MAX,
            high_run: 0,
            round_acks: 0,
            round_losses: 0,
            loss_rate: 0.0,
            random_losses: 0,
            timed_out: false,
        }
    }

    pub fn cwnd(&self) -> f64 {
        self.cwnd
    }

    pub fn phase(&self) -> Phase {
        self.phase
    }

    /// Pacing: the gap between two chunks, `srtt / cwnd` sped up by the gain Linux
    /// uses (2 in slow start, 1.2 after), so pacing never holds back the window.
    pub fn gap(&self, srtt: Duration) -> Duration {
        let gain = if self.phase == Phase::SlowStart {
            2.0
        } else {
            1.2
        };
        srtt.div_f64(self.cwnd * gain)
    }

    /// A chunk requested with sequence number `seq` arrived; `rtt` is a sample taken
    /// from it, if any; `next_seq` is the next sequence number to be requested.
    pub fn on_ack(&mut self, seq: u64, rtt: Option<Duration>, next_seq: u64) {
        self.round_acks += 1;
        if let Some(r) = rtt {
            self.round_min = self.round_min.min(r);
            self.round_samples += 1;
            self.min_rtt = self.min_rtt.min(r);
            // A run of samples all above the path's minimum by eta: a queue is
            // building now, within this round.
            // (A quarter of the RTT at least: scheduling noise on a busy host must
            // not end slow start early.)
            let high = r >= self.min_rtt + eta(self.min_rtt).max(self.min_rtt / 4);
            self.high_run = if high { self.high_run + 1 } else { 0 };
        }
        if seq >= self.round_end {
            self.end_round(next_seq);
        }
        self.hystart_check();
        let grow = match self.phase {
            Phase::SlowStart => 1.0,
            Phase::Conservative { .. } => 0.25,
            Phase::Avoidance => ALPHA / self.cwnd,
        };
        self.cwnd = (self.cwnd + grow).min(self.max);
        if self.phase == Phase::SlowStart && self.cwnd >= self.ssthresh {
            self.phase = Phase::Avoidance;
        }
    }

    fn end_round(&mut self, next_seq: u64) {
        let sent = self.round_acks + self.round_losses;
        if sent >= HYSTART_SAMPLES {
            let frac = f64::from(self.round_losses) / f64::from(sent);
            self.loss_rate = 0.75 * self.loss_rate + 0.25 * frac;
        }
        self.round_acks = 0;
        self.round_losses = 0;
        if let Phase::Conservative { rounds, baseline } = self.phase {
            let judged = self.round_samples >= HYSTART_SAMPLES;
            if judged && self.round_min < baseline {
                // The RTT came back down: the rise was noise.
                self.phase = Phase::SlowStart;
                self.high_run = 0;
            } else if rounds + 1 >= CSS_ROUNDS {
                self.phase = Phase::Avoidance;
            } else {
                self.phase = Phase::Conservative {
                    rounds: rounds + 1,
                    baseline,
                };
            }
        }
        if self.round_samples >= HYSTART_SAMPLES {
            self.last_round_min = self.round_min;
        }
        self.round_min = Duration::MAX;
        self.round_samples = 0;
        self.round_end = next_seq;
    }

    /// HyStart++: leave slow start when this round's smallest RTT exceeds the last
    /// round's by more than eta, or (because pacing at twice the window's rate fills
    /// a queue within one round, before the next round could show it) when the last
    /// [`HYSTART_SAMPLES`] samples all exceed the path's minimum by eta.
    fn hystart_check(&mut self) {
        // Only the first slow start: after a timeout, slow start runs up to ssthresh
        // (RFC 9406 section 4.2).
        if self.phase != Phase::SlowStart || self.timed_out {
            return;
        }
        let rounds_rose = self.round_samples >= HYSTART_SAMPLES
            && self.last_round_min != Duration::MAX
            && self.round_min >= self.last_round_min + eta(self.last_round_min);
        if rounds_rose || self.high_run >= HYSTART_SAMPLES {
            self.phase = Phase::Conservative {
                rounds: 0,
                baseline: self.round_min.min(self.min_rtt + eta(self.min_rtt)),
            };
        }
    }

    /// A chunk requested with sequence number `seq` was lost; true when this starts
    /// a new loss episode (the window shrinks).
    pub fn on_loss(&mut self, seq: u64, next_seq: u64) -> bool {
        self.round_losses += 1;
        if seq < self.recover {
            self.episode_losses += 1;
            return false;
        }
        if self.looks_random() {
            // No queue stands in front of the loss, and losses are rare: the path
            // lost it (a radio, a bad cable), not a queue overflowing. Shrinking for
            // it would only leave the link idle.
            self.recover = next_seq;
            self.episode_losses = 1;
            self.random_losses += 1;
            return false;
        }
        self.prior = Some((self.cwnd, self.ssthresh, self.phase));
        self.episode_losses = 1;
        self.episode_spurious = 0;
        self.recover = next_seq;
        self.cwnd = (self.cwnd * BETA).max(MIN_WINDOW);
        self.ssthresh = self.cwnd;
        self.phase = Phase::Avoidance;
        true
    }

    /// True when a loss now is better explained by the path than by congestion: the
    /// RTT of this round (the last one, early in a round) is within eta of the
    /// smallest seen, so no queue has built, and the recent loss rate is under
    /// [`RANDOM_LOSS_MAX`] (a sender that never shrank on a path with a shallow
    /// buffer would see far more). This is TCP Veno's idea (Fu and Liew, 2003) with
    /// HyStart++'s threshold.
    fn looks_random(&self) -> bool {
        let rtt = if self.round_min != Duration::MAX {
            self.round_min
        } else {
            self.last_round_min
        };
        rtt != Duration::MAX
            && self.min_rtt != Duration::MAX
            && rtt < self.min_rtt + eta(self.min_rtt)
            && self.loss_rate < RANDOM_LOSS_MAX
    }

    /// Losses taken as the path's rather than congestion's.
    pub fn random_losses(&self) -> u64 {
        self.random_losses
    }

    /// A chunk declared lost arrived after all (it was only late): once every loss
    /// of the episode proved spurious, the window it cost comes back.
    pub fn on_spurious(&mut self) {
        self.episode_spurious += 1;
        if self.episode_spurious >= self.episode_losses
            && let Some((cwnd, ssthresh, phase)) = self.prior.take()
        {
            self.cwnd = self.cwnd.max(cwnd);
            self.ssthresh = ssthresh;
            self.phase = phase;
        }
    }

    /// The retransmission timer fired: everything in flight is presumed lost, and
    /// the window starts again from one chunk in slow start up to half of what it was
    /// (RFC 5681 3.1).
    pub fn on_timeout(&mut self, next_seq: u64) {
        self.ssthresh = (self.cwnd * BETA).max(MIN_WINDOW);
        self.prior = None;
        self.timed_out = true;
        self.recover = next_seq;
        self.cwnd = 1.0;
        self.phase = Phase::SlowStart;
        self.last_round_min = Duration::MAX;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn rtt_follows_rfc_6298() {
        let mut r = RttEstimator::new(Duration::from_secs(1));
        assert_eq!(r.rto(), Duration::from_secs(1));
        r.sample(100 * MS);
        assert_eq!(r.srtt(), 100 * MS);
        // srtt + 4 * rttvar = 100 + 4 * 50.
        assert_eq!(r.rto(), 300 * MS);
        r.sample(100 * MS);
        // rttvar = 3/4 * 50 + 0 = 37.5; srtt stays 100.
        assert_eq!(r.rto(), 250 * MS);
        r.back_off();
        assert_eq!(r.rto(), 500 * MS);
        for _ in 0..50 {
            r.sample(10 * MS);
        }
        assert!(r.rto() >= MIN_RTO && r.rto() < 60 * MS, "{:?}", r.rto());
        assert_eq!(r.min_rtt(), 10 * MS);
    }

    #[test]
    fn window_grows_halves_once_per_episode_and_restarts_after_timeout() {
        let mut w = Window::new(1000.0);
        for seq in 0..10 {
            w.on_ack(seq, None, seq + 20);
        }
        assert_eq!(w.cwnd(), 20.0, "slow start adds one per chunk");
        assert!(w.on_loss(5, 40));
        assert!((w.cwnd() - 14.0).abs() < 1e-9);
        assert!(!w.on_loss(30, 40), "same episode");
        assert!(w.on_loss(40, 60), "a new episode");
        let before = w.cwnd();
        for s in 0..before as u64 {
            w.on_ack(60 + s, None, 200);
        }
        // About ALPHA per window of acknowledgements.
        let grew = w.cwnd() - before;
        assert!(grew > 0.4 && grew < ALPHA + 0.01, "{} {before}", w.cwnd());
        assert!(w.on_loss(200, 220));
        let cut = w.cwnd();
        w.on_spurious();
        assert!(w.cwnd() > cut, "a spurious loss is undone");
        w.on_timeout(300);
        assert_eq!(w.cwnd(), 1.0);
        assert_eq!(w.phase(), Phase::SlowStart);
    }

    #[test]
    fn hystart_leaves_slow_start_when_the_rtt_rises() {
        let mut w = Window::new(1000.0);
        let mut seq = 0;
        let mut round = |w: &mut Window, rtt: Duration, n: u64| {
            let end = seq + n;
            for _ in 0..n {
                w.on_ack(seq, Some(rtt), end + 10);
                seq += 1;
            }
        };
        round(&mut w, 50 * MS, 12);
        round(&mut w, 50 * MS, 24);
        assert_eq!(w.phase(), Phase::SlowStart);
        round(&mut w, 70 * MS, 40);
        assert!(
            matches!(w.phase(), Phase::Conservative { .. }),
            "{:?}",
            w.phase()
        );
    }
}
