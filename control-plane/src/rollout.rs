//! Rollout rules (docs/artifacts.md, "Rollout rules"): wave specs, the
//! assignment of devices to waves, the next step of a running rollout and
//! the operator actions. Pure: no I/O, the time is passed in. The store
//! applies what these functions decide as one conditional `UPDATE`
//! ([`Transition`]), the driver (`rollout/driver.rs`) runs them.

pub mod driver;

use std::fmt;

use crate::store::UnixMillis;

/// The most waves a rollout may have.
pub const MAX_WAVES: usize = 100;
/// The reason of a rollout paused between waves until an operator approves.
pub const AWAITING_APPROVAL: &str = "awaiting approval";
/// The reason of a rollout an operator paused.
pub const PAUSED_BY_OPERATOR: &str = "paused by an operator";
/// `--wave-timeout` when none is given.
pub const DEFAULT_WAVE_TIMEOUT_MS: i64 = 10 * 60 * 1000;

/// A rollout's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RolloutState {
    Running,
    Paused,
    Completed,
    Aborted,
}

impl RolloutState {
    pub const ALL: [RolloutState; 4] = [
        RolloutState::Running,
        RolloutState::Paused,
        RolloutState::Completed,
        RolloutState::Aborted,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            RolloutState::Running => "running",
            RolloutState::Paused => "paused",
            RolloutState::Completed => "completed",
            RolloutState::Aborted => "aborted",
        }
    }

    pub fn parse(s: &str) -> Option<RolloutState> {
        RolloutState::ALL.into_iter().find(|x| x.as_str() == s)
    }

    /// Running or paused: it still holds its artifact name.
    pub fn is_active(self) -> bool {
        matches!(self, RolloutState::Running | RolloutState::Paused)
    }
}

impl fmt::Display for RolloutState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where a device stands in a rollout (the agent's report states, and
/// `pending` before the first report).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DeviceState {
    Pending,
    Downloading,
    Installing,
    Verifying,
    Succeeded,
    Failed,
    RolledBack,
}

impl DeviceState {
    pub const ALL: [DeviceState; 7] = [
        DeviceState::Pending,
        DeviceState::Downloading,
        DeviceState::Installing,
        DeviceState::Verifying,
        DeviceState::Succeeded,
        DeviceState::Failed,
        DeviceState::RolledBack,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            DeviceState::Pending => "pending",
            DeviceState::Downloading => "downloading",
            DeviceState::Installing => "installing",
            DeviceState::Verifying => "verifying",
            DeviceState::Succeeded => "succeeded",
            DeviceState::Failed => "failed",
            DeviceState::RolledBack => "rolled_back",
        }
    }

    pub fn parse(s: &str) -> Option<DeviceState> {
        DeviceState::ALL.into_iter().find(|x| x.as_str() == s)
    }

    /// Order of progress: a report only moves a device forward. The three
    /// outcomes share the last rank (an outcome is final).
    pub fn rank(self) -> u8 {
        match self {
            DeviceState::Pending => 0,
            DeviceState::Downloading => 1,
            DeviceState::Installing => 2,
            DeviceState::Verifying => 3,
            DeviceState::Succeeded | DeviceState::Failed | DeviceState::RolledBack => 4,
        }
    }

    /// The states a device in `self` may be moved from (lower rank).
    pub fn predecessors(self) -> Vec<DeviceState> {
        DeviceState::ALL
            .into_iter()
            .filter(|s| s.rank() < self.rank())
            .collect()
    }

    pub fn is_failure(self) -> bool {
        matches!(self, DeviceState::Failed | DeviceState::RolledBack)
    }

    pub fn is_outcome(self) -> bool {
        self.rank() == 4
    }
}

impl fmt::Display for DeviceState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One wave size spec: a cumulative count of devices or percentage of all.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WaveSpec {
    Count(u64),
    Percent(u8),
}

impl WaveSpec {
    pub fn parse(s: &str) -> Result<WaveSpec, String> {
        let t = s.trim();
        if let Some(p) = t.strip_suffix('%') {
            match p.parse::<u8>() {
                Ok(v) if (1..=100).contains(&v) => Ok(WaveSpec::Percent(v)),
                _ => Err(format!(
                    "wave {s:?}: a percentage is a whole number from 1% to 100%"
                )),
            }
        } else {
            match t.parse::<u64>() {
                Ok(v) if v >= 1 => Ok(WaveSpec::Count(v)),
                _ => Err(format!(
                    "wave {s:?}: a wave is a device count (1, 2, …) or a percentage (25%)"
                )),
            }
        }
    }

    /// The cumulative number of devices this spec asks for out of `total`
    /// (percentages rounded up).
    fn target(self, total: u64) -> u64 {
        match self {
            WaveSpec::Count(n) => n.min(total),
            WaveSpec::Percent(p) => (total * u64::from(p)).div_ceil(100),
        }
    }
}

impl fmt::Display for WaveSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WaveSpec::Count(n) => write!(f, "{n}"),
            WaveSpec::Percent(p) => write!(f, "{p}%"),
        }
    }
}

/// Parses a rollout's wave specs. Cumulative: none may ask for fewer
/// devices than the one before (counts and percentages are not compared
/// with each other), and the last must be `100%`, so every matching device
/// is in a wave (anything else is refused rather than guessed).
pub fn parse_waves(specs: &[String]) -> Result<Vec<WaveSpec>, String> {
    if specs.is_empty() {
        return Err("waves: at least one wave (e.g. 100%)".into());
    }
    if specs.len() > MAX_WAVES {
        return Err(format!("waves: at most {MAX_WAVES} waves"));
    }
    let parsed = specs
        .iter()
        .map(|s| WaveSpec::parse(s))
        .collect::<Result<Vec<_>, _>>()?;
    for pair in parsed.windows(2) {
        let shrinks = match (pair[0], pair[1]) {
            (WaveSpec::Count(a), WaveSpec::Count(b)) => b < a,
            (WaveSpec::Percent(a), WaveSpec::Percent(b)) => b < a,
            _ => false,
        };
        if shrinks {
            return Err(format!(
                "waves are cumulative: {} after {} would shrink",
                pair[1], pair[0]
            ));
        }
    }
    if parsed.last() != Some(&WaveSpec::Percent(100)) {
        return Err("waves: the last wave must be 100% (every matching device)".into());
    }
    Ok(parsed)
}

/// The cumulative end of each wave for `total` devices. Each wave brings at
/// least one more device while any remain; waves that would be empty (fewer
/// devices than waves) are left out, and the wave that reaches every device
/// carries the last spec (`100%`): returns the specs kept and their
/// cumulative ends (the last is `total`).
pub fn wave_ends(specs: &[WaveSpec], total: u64) -> Vec<(WaveSpec, u64)> {
    let mut out: Vec<(WaveSpec, u64)> = Vec::new();
    let mut prev = 0u64;
    for (i, spec) in specs.iter().enumerate() {
        let last = i + 1 == specs.len();
        let mut end = if last { total } else { spec.target(total) };
        if prev < total {
            end = end.max(prev + 1);
        }
        let end = end.min(total);
        if end == total && end > prev {
            // The wave that reaches every device carries the last spec.
            out.push((specs.last().copied().unwrap_or(*spec), end));
            break;
        }
        if end > prev {
            out.push((*spec, end));
            prev = end;
        }
    }
    out
}

/// The order a rollout takes devices in: SHA-256(rollout id ‖ device id).
fn order_key(rollout_id: &str, device_id: &str) -> Vec<u8> {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    ctx.update(rollout_id.as_bytes());
    ctx.update(device_id.as_bytes());
    ctx.finish().as_ref().to_vec()
}

/// Cuts `device_ids` into waves: returns the specs kept ([`wave_ends`]) and
/// each device with its 0-based wave, in rollout order. Deterministic for a
/// rollout id, and a different order for each rollout.
pub fn assign_waves(
    rollout_id: &str,
    device_ids: &[String],
    specs: &[WaveSpec],
) -> (Vec<WaveSpec>, Vec<(String, u32)>) {
    let mut keyed: Vec<(Vec<u8>, &String)> = device_ids
        .iter()
        .map(|d| (order_key(rollout_id, d), d))
        .collect();
    keyed.sort();
    keyed.dedup_by(|a, b| a.1 == b.1);
    let ends = wave_ends(specs, keyed.len() as u64);
    let mut out = Vec::with_capacity(keyed.len());
    let mut wave = 0usize;
    for (pos, (_, d)) in keyed.into_iter().enumerate() {
        while wave + 1 < ends.len() && pos as u64 >= ends[wave].1 {
            wave += 1;
        }
        out.push((d.clone(), wave as u32));
    }
    (ends.into_iter().map(|(s, _)| s).collect(), out)
}

/// What the rules need of a rollout's row.
#[derive(Debug, Clone, PartialEq)]
pub struct RolloutView {
    pub state: RolloutState,
    pub reason: Option<String>,
    /// 0-based index of the newest started wave.
    pub current_wave: u32,
    pub wave_count: u32,
    pub wave_started_at: UnixMillis,
    pub wave_timeout_ms: i64,
    pub max_failures: u32,
    pub accepted_failures: u32,
    pub approve_waves: bool,
}

/// What the rules need of one device of a rollout.
#[derive(Debug, Clone, PartialEq)]
pub struct DeviceView {
    pub device_id: String,
    pub wave: u32,
    pub state: DeviceState,
    pub error: Option<String>,
    pub updated_at: UnixMillis,
}

/// What the rules need of the current wave's devices: counted in the store
/// for the driver (which then loads no devices), or from a loaded rollout.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct WaveTally {
    /// Devices of the wave without an outcome yet.
    pub unfinished: u64,
    /// Devices of the wave that failed (`failed`, `rolled_back`).
    pub failures: u64,
    /// The newest of those (a pause names it).
    pub newest_failure: Option<DeviceView>,
}

impl WaveTally {
    /// The tally of wave `wave` among `devices`.
    pub fn of(devices: &[DeviceView], wave: u32) -> WaveTally {
        let mut t = WaveTally::default();
        for d in devices.iter().filter(|d| d.wave == wave) {
            if !d.state.is_outcome() {
                t.unfinished += 1;
            }
            if d.state.is_failure() {
                t.failures += 1;
                t.note_failure(d);
            }
        }
        t
    }

    /// Keeps `d` as the newest failure if it is newer than the one kept:
    /// the latest `updated_at`, then the smallest device id.
    pub fn note_failure(&mut self, d: &DeviceView) {
        let newer = match &self.newest_failure {
            None => true,
            Some(n) => (d.updated_at, &n.device_id) > (n.updated_at, &d.device_id),
        };
        if newer {
            self.newest_failure = Some(d.clone());
        }
    }
}

/// A change of a rollout's row, applied only while the row is still in
/// `from_state` at `from_wave` (so of two replicas deciding the same step,
/// one applies it).
#[derive(Debug, Clone, PartialEq)]
pub struct Transition {
    pub from_state: RolloutState,
    pub from_wave: u32,
    pub state: RolloutState,
    pub reason: Option<String>,
    pub current_wave: u32,
    pub wave_started_at: UnixMillis,
    pub accepted_failures: u32,
}

impl Transition {
    /// A transition that keeps everything of `r` but what the caller changes.
    fn from(r: &RolloutView) -> Transition {
        Transition {
            from_state: r.state,
            from_wave: r.current_wave,
            state: r.state,
            reason: r.reason.clone(),
            current_wave: r.current_wave,
            wave_started_at: r.wave_started_at,
            accepted_failures: r.accepted_failures,
        }
    }

    /// Whether this transition starts a wave (its devices get the artifact).
    pub fn starts_wave(&self) -> Option<u32> {
        (self.state == RolloutState::Running && self.current_wave != self.from_wave)
            .then_some(self.current_wave)
    }
}

fn plural(n: u64, one: &str, many: &str) -> String {
    if n == 1 {
        format!("{n} {one}")
    } else {
        format!("{n} {many}")
    }
}

/// The next step of a rollout at `now`, or `None` when there is nothing to
/// do (not running, or the current wave is still under way).
///
/// - more failures (`failed`, `rolled_back`) in the current wave than
///   `accepted_failures + max_failures`: pause, naming the newest failure;
/// - the current wave is done — every device has an outcome (the failures
///   among them within the limit) or `wave_timeout` passed since it
///   started: complete after the last wave, else pause for approval
///   (`approve_waves`), else start the next wave.
pub fn decide(r: &RolloutView, wave: &WaveTally, now: UnixMillis) -> Option<Transition> {
    if r.state != RolloutState::Running {
        return None;
    }
    let allowed = u64::from(r.accepted_failures) + u64::from(r.max_failures);
    if wave.failures > allowed {
        let mut reason = format!(
            "wave {}: {} (max {})",
            r.current_wave + 1,
            plural(wave.failures, "failure", "failures"),
            r.max_failures
        );
        if let Some(d) = &wave.newest_failure {
            reason.push_str(&format!(
                ": {}: {}",
                d.device_id,
                d.error.as_deref().unwrap_or(d.state.as_str())
            ));
        }
        let mut t = Transition::from(r);
        t.state = RolloutState::Paused;
        t.reason = Some(reason);
        return Some(t);
    }
    let all_done = wave.unfinished == 0;
    let timed_out = now.saturating_sub(r.wave_started_at) >= r.wave_timeout_ms;
    if !all_done && !timed_out {
        return None;
    }
    let mut t = Transition::from(r);
    if r.current_wave + 1 >= r.wave_count {
        t.state = RolloutState::Completed;
        t.reason = None;
    } else if r.approve_waves {
        t.state = RolloutState::Paused;
        t.reason = Some(AWAITING_APPROVAL.into());
    } else {
        start_next(&mut t, now);
    }
    Some(t)
}

fn start_next(t: &mut Transition, now: UnixMillis) {
    t.state = RolloutState::Running;
    t.reason = None;
    t.current_wave += 1;
    t.wave_started_at = now;
    t.accepted_failures = 0;
}

/// An operator's action on a rollout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Pause,
    Resume,
    Abort,
    Approve,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Pause => "pause",
            Action::Resume => "resume",
            Action::Abort => "abort",
            Action::Approve => "approve",
        }
    }
}

/// Why an action is refused (HTTP 409), worded for the operator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused(pub String);

impl fmt::Display for Refused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// What an operator's action does to a rollout at `now`:
/// - `pause`: running → paused;
/// - `resume`: paused (not awaiting approval) → running, accepting the
///   failures of the current wave so far, its wave timer started again;
/// - `abort`: running or paused → aborted (devices that started keep it);
/// - `approve`: paused awaiting approval → the next wave starts.
pub fn act(
    r: &RolloutView,
    wave: &WaveTally,
    action: Action,
    now: UnixMillis,
) -> Result<Transition, Refused> {
    let awaiting =
        r.state == RolloutState::Paused && r.reason.as_deref() == Some(AWAITING_APPROVAL);
    let refuse = || {
        Refused(format!(
            "cannot {} a rollout that is {}{}",
            action.as_str(),
            r.state,
            if awaiting { " (awaiting approval)" } else { "" }
        ))
    };
    let mut t = Transition::from(r);
    match action {
        Action::Pause => {
            if r.state != RolloutState::Running {
                return Err(refuse());
            }
            t.state = RolloutState::Paused;
            t.reason = Some(PAUSED_BY_OPERATOR.into());
        }
        Action::Resume => {
            if awaiting {
                return Err(Refused(
                    "the rollout is paused awaiting approval: use approve".into(),
                ));
            }
            if r.state != RolloutState::Paused {
                return Err(refuse());
            }
            let failures = u32::try_from(wave.failures).unwrap_or(u32::MAX);
            t.state = RolloutState::Running;
            t.reason = None;
            t.accepted_failures = failures.max(r.accepted_failures);
            // The wave's timer starts again: the time spent paused is not
            // the wave's, or resuming after a long pause would time the
            // wave out at once and start the next while its devices still
            // install.
            t.wave_started_at = now;
        }
        Action::Abort => {
            if !r.state.is_active() {
                return Err(refuse());
            }
            t.state = RolloutState::Aborted;
            t.reason = Some("aborted by an operator".into());
        }
        Action::Approve => {
            if !awaiting || r.current_wave + 1 >= r.wave_count {
                return Err(refuse());
            }
            start_next(&mut t, now);
        }
    }
    Ok(t)
}

/// Parses `--wave-timeout` (`10m`, `90s`, `1h`): at least a second, at most
/// a week.
pub fn parse_wave_timeout(s: &str) -> Result<i64, String> {
    let d = humantime::parse_duration(s.trim())
        .map_err(|e| format!("wave_timeout {s:?}: {e} (e.g. 10m, 90s)"))?;
    if d < std::time::Duration::from_secs(1) || d > std::time::Duration::from_secs(7 * 24 * 3600) {
        return Err(format!("wave_timeout {s:?}: must be from 1s to 7 days"));
    }
    Ok(d.as_millis() as i64)
}

/// Formats a wave timeout back (`10m`).
pub fn format_wave_timeout(ms: i64) -> String {
    humantime::format_duration(std::time::Duration::from_millis(ms.max(0) as u64)).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn specs(s: &[&str]) -> Vec<String> {
        s.iter().map(|x| x.to_string()).collect()
    }

    fn ids(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("dev_{i:03}")).collect()
    }

    #[test]
    fn wave_specs_parse_and_refuse() {
        assert_eq!(
            parse_waves(&specs(&["1", "25%", "100%"])).unwrap(),
            vec![
                WaveSpec::Count(1),
                WaveSpec::Percent(25),
                WaveSpec::Percent(100)
            ]
        );
        assert_eq!(
            parse_waves(&specs(&["100%"])).unwrap(),
            vec![WaveSpec::Percent(100)]
        );
        for bad in [
            vec![],
            vec!["0", "100%"],
            vec!["0%", "100%"],
            vec!["101%"],
            vec!["-1", "100%"],
            vec!["x"],
            vec!["1.5%", "100%"],
            vec!["50%"],
            vec!["1", "5"],
            vec!["50%", "25%", "100%"],
            vec!["5", "2", "100%"],
        ] {
            assert!(parse_waves(&specs(&bad)).is_err(), "{bad:?}");
        }
        let too_many: Vec<String> = (0..=MAX_WAVES).map(|_| "100%".to_string()).collect();
        assert!(parse_waves(&too_many).is_err());
        assert!(parse_waves(&specs(&["50%"])).unwrap_err().contains("100%"));
    }

    #[test]
    fn wave_ends_are_cumulative_rounded_up_and_never_empty() {
        let w = parse_waves(&specs(&["1", "25%", "100%"])).unwrap();
        let ends = |n| {
            wave_ends(&w, n)
                .into_iter()
                .map(|(_, e)| e)
                .collect::<Vec<_>>()
        };
        assert_eq!(ends(100), vec![1, 25, 100]);
        assert_eq!(ends(10), vec![1, 3, 10]); // 25 % of 10 rounds up to 3
        assert_eq!(ends(4), vec![1, 2, 4]); // at least one more device
        assert_eq!(ends(2), vec![1, 2]); // an empty wave is left out
        assert_eq!(ends(1), vec![1]);
        assert_eq!(ends(0), Vec::<u64>::new());
        let w = parse_waves(&specs(&["10", "100%"])).unwrap();
        assert_eq!(
            wave_ends(&w, 5)
                .into_iter()
                .map(|(_, e)| e)
                .collect::<Vec<_>>(),
            vec![5]
        );
        // the wave that reaches every device carries the last spec
        let w = parse_waves(&specs(&["1", "25%", "100%"])).unwrap();
        let kept = |w: &[WaveSpec], n| {
            wave_ends(w, n)
                .into_iter()
                .map(|(s, _)| s)
                .collect::<Vec<_>>()
        };
        assert_eq!(
            kept(&w, 2),
            vec![WaveSpec::Count(1), WaveSpec::Percent(100)]
        );
        assert_eq!(
            kept(&w, 100),
            vec![
                WaveSpec::Count(1),
                WaveSpec::Percent(25),
                WaveSpec::Percent(100)
            ]
        );
        let w = parse_waves(&specs(&["10", "100%"])).unwrap();
        assert_eq!(kept(&w, 5), vec![WaveSpec::Percent(100)]);
    }

    #[test]
    fn assignment_is_deterministic_and_differs_per_rollout() {
        let w = parse_waves(&specs(&["1", "25%", "100%"])).unwrap();
        let devices = ids(20);
        let (kept, a) = assign_waves("ro_a", &devices, &w);
        assert_eq!(kept.len(), 3);
        let mut reversed = devices.clone();
        reversed.reverse();
        let (_, again) = assign_waves("ro_a", &reversed, &w);
        assert_eq!(a, again, "the input order does not matter");
        let count = |v: &[(String, u32)], w| v.iter().filter(|(_, x)| *x == w).count();
        assert_eq!((count(&a, 0), count(&a, 1), count(&a, 2)), (1, 4, 15));
        let (_, b) = assign_waves("ro_b", &devices, &w);
        assert_ne!(
            a.iter().map(|(d, _)| d).collect::<Vec<_>>(),
            b.iter().map(|(d, _)| d).collect::<Vec<_>>(),
            "another rollout samples the fleet in another order"
        );
        // the order is the hash order
        let mut by_hash = devices.clone();
        by_hash.sort_by_key(|d| order_key("ro_a", d));
        assert_eq!(
            a.iter().map(|(d, _)| d.clone()).collect::<Vec<_>>(),
            by_hash
        );
        // duplicates count once
        let mut dup = devices.clone();
        dup.push(devices[0].clone());
        assert_eq!(assign_waves("ro_a", &dup, &w).1, a);
    }

    fn rollout(waves: u32) -> RolloutView {
        RolloutView {
            state: RolloutState::Running,
            reason: None,
            current_wave: 0,
            wave_count: waves,
            wave_started_at: 1_000,
            wave_timeout_ms: 60_000,
            max_failures: 0,
            accepted_failures: 0,
            approve_waves: false,
        }
    }

    fn dev(id: &str, wave: u32, state: DeviceState) -> DeviceView {
        DeviceView {
            device_id: id.into(),
            wave,
            state,
            error: None,
            updated_at: 1_000,
        }
    }

    /// The rules on a list of devices (the tally made as the REST actions
    /// make it).
    fn decide(r: &RolloutView, d: &[DeviceView], now: UnixMillis) -> Option<Transition> {
        super::decide(r, &WaveTally::of(d, r.current_wave), now)
    }

    fn act(
        r: &RolloutView,
        d: &[DeviceView],
        action: Action,
        now: UnixMillis,
    ) -> Result<Transition, Refused> {
        super::act(r, &WaveTally::of(d, r.current_wave), action, now)
    }

    fn apply(r: &mut RolloutView, t: &Transition) {
        assert_eq!((r.state, r.current_wave), (t.from_state, t.from_wave));
        r.state = t.state;
        r.reason = t.reason.clone();
        r.current_wave = t.current_wave;
        r.wave_started_at = t.wave_started_at;
        r.accepted_failures = t.accepted_failures;
    }

    use DeviceState::*;

    #[test]
    fn a_wave_starts_when_the_previous_succeeded_and_the_last_completes() {
        let mut r = rollout(2);
        let mut d = vec![
            dev("a", 0, Pending),
            dev("b", 1, Pending),
            dev("c", 1, Pending),
        ];
        assert_eq!(decide(&r, &d, 2_000), None);
        d[0].state = Verifying;
        assert_eq!(decide(&r, &d, 2_000), None);
        d[0].state = Succeeded;
        let t = decide(&r, &d, 2_000).unwrap();
        assert_eq!(t.starts_wave(), Some(1));
        assert_eq!(
            (t.state, t.wave_started_at, t.accepted_failures),
            (RolloutState::Running, 2_000, 0)
        );
        apply(&mut r, &t);
        assert_eq!(decide(&r, &d, 3_000), None);
        d[1].state = Succeeded;
        assert_eq!(decide(&r, &d, 3_000), None);
        d[2].state = Succeeded;
        let t = decide(&r, &d, 3_000).unwrap();
        assert_eq!(t.state, RolloutState::Completed);
        assert_eq!(t.starts_wave(), None);
        apply(&mut r, &t);
        assert_eq!(decide(&r, &d, 99_000_000), None);
    }

    #[test]
    fn a_timed_out_wave_goes_on_without_its_unfinished_devices() {
        let mut r = rollout(3);
        let d = vec![
            dev("a", 0, Downloading),
            dev("b", 1, Pending),
            dev("c", 2, Pending),
        ];
        assert_eq!(decide(&r, &d, 1_000 + 59_999), None);
        let t = decide(&r, &d, 1_000 + 60_000).unwrap();
        assert_eq!(t.starts_wave(), Some(1));
        apply(&mut r, &t);
        assert_eq!(r.wave_started_at, 61_000);
        assert_eq!(decide(&r, &d, 61_000 + 59_999), None);
        let t = decide(&r, &d, 61_000 + 60_000).unwrap();
        assert_eq!(t.starts_wave(), Some(2));
        apply(&mut r, &t);
        let t = decide(&r, &d, 121_000 + 60_000).unwrap();
        assert_eq!(t.state, RolloutState::Completed);
    }

    #[test]
    fn failures_over_the_limit_pause_and_resume_accepts_them() {
        let mut r = rollout(2);
        let mut d = vec![
            dev("a", 0, Failed),
            dev("b", 0, Pending),
            dev("c", 1, Pending),
        ];
        d[0].error = Some("health check exited 1".into());
        let t = decide(&r, &d, 2_000).unwrap();
        assert_eq!(t.state, RolloutState::Paused);
        assert_eq!(
            t.reason.as_deref(),
            Some("wave 1: 1 failure (max 0): a: health check exited 1")
        );
        apply(&mut r, &t);
        assert_eq!(decide(&r, &d, 2_000), None, "paused: nothing to do");
        // a timeout does not move a paused rollout either
        assert_eq!(decide(&r, &d, 10_000_000), None);

        let t = act(&r, &d, Action::Resume, 3_000).unwrap();
        assert_eq!(
            (t.state, t.accepted_failures, t.reason.clone()),
            (RolloutState::Running, 1, None)
        );
        apply(&mut r, &t);
        assert_eq!(decide(&r, &d, 3_000), None, "b still under way");
        // a second failure pauses again, counting both
        d[1].state = RolledBack;
        d[1].updated_at = 3_500;
        let t = decide(&r, &d, 4_000).unwrap();
        assert_eq!(
            t.reason.as_deref(),
            Some("wave 1: 2 failures (max 0): b: rolled_back")
        );
        apply(&mut r, &t);
        let t = act(&r, &d, Action::Resume, 5_000).unwrap();
        apply(&mut r, &t);
        assert_eq!(r.accepted_failures, 2);
        // every device of the wave has an outcome: the next wave starts,
        // and its failures are counted afresh
        let t = decide(&r, &d, 5_000).unwrap();
        assert_eq!((t.starts_wave(), t.accepted_failures), (Some(1), 0));
    }

    #[test]
    fn resume_and_approve_start_the_wave_timer_again() {
        let mut r = rollout(3);
        let d = vec![
            dev("a", 0, Installing),
            dev("b", 1, Pending),
            dev("c", 2, Pending),
        ];
        // Paused by an operator a second into the wave, resumed an hour on.
        let t = act(&r, &d, Action::Pause, 2_000).unwrap();
        apply(&mut r, &t);
        let resumed = 3_600_000;
        let t = act(&r, &d, Action::Resume, resumed).unwrap();
        assert_eq!(t.wave_started_at, resumed);
        assert_eq!(t.starts_wave(), None);
        apply(&mut r, &t);
        assert_eq!(
            decide(&r, &d, resumed + 1),
            None,
            "the wave is not timed out by the pause"
        );
        assert_eq!(decide(&r, &d, resumed + 59_999), None);
        let t = decide(&r, &d, resumed + 60_000).unwrap();
        assert_eq!(t.starts_wave(), Some(1));

        // Approve starts the next wave with its own timer.
        let mut r = rollout(3);
        r.approve_waves = true;
        r.state = RolloutState::Paused;
        r.reason = Some(AWAITING_APPROVAL.into());
        let approved = 7_200_000;
        let t = act(&r, &d, Action::Approve, approved).unwrap();
        assert_eq!((t.starts_wave(), t.wave_started_at), (Some(1), approved));
        apply(&mut r, &t);
        assert_eq!(decide(&r, &d, approved + 59_999), None);
    }

    #[test]
    fn failures_within_max_failures_do_not_pause() {
        let mut r = rollout(2);
        r.max_failures = 1;
        let d = vec![
            dev("a", 0, Failed),
            dev("b", 0, Succeeded),
            dev("c", 1, Pending),
        ];
        let t = decide(&r, &d, 2_000).unwrap();
        assert_eq!(t.starts_wave(), Some(1));
        let d = vec![
            dev("a", 0, Failed),
            dev("b", 0, Failed),
            dev("c", 1, Pending),
        ];
        let t = decide(&r, &d, 2_000).unwrap();
        assert_eq!(t.state, RolloutState::Paused);
        assert!(
            t.reason
                .unwrap()
                .starts_with("wave 1: 2 failures (max 1): ")
        );
        // failures of another wave do not count
        let d = vec![
            dev("a", 0, Pending),
            dev("c", 1, Failed),
            dev("e", 1, Failed),
        ];
        assert_eq!(decide(&r, &d, 2_000), None);
    }

    #[test]
    fn approve_waves_pauses_after_each_wave_but_the_last() {
        let mut r = rollout(3);
        r.approve_waves = true;
        let d = vec![
            dev("a", 0, Succeeded),
            dev("b", 1, Succeeded),
            dev("c", 2, Succeeded),
        ];
        let t = decide(&r, &d, 2_000).unwrap();
        assert_eq!(
            (t.state, t.reason.as_deref()),
            (RolloutState::Paused, Some(AWAITING_APPROVAL))
        );
        apply(&mut r, &t);
        assert_eq!(decide(&r, &d, 2_000), None);
        let err = act(&r, &d, Action::Resume, 2_500).unwrap_err();
        assert!(err.0.contains("use approve"), "{err}");
        let t = act(&r, &d, Action::Approve, 3_000).unwrap();
        assert_eq!((t.starts_wave(), t.wave_started_at), (Some(1), 3_000));
        apply(&mut r, &t);
        assert!(
            act(&r, &d, Action::Approve, 3_000).is_err(),
            "only when awaiting"
        );
        let t = decide(&r, &d, 3_000).unwrap();
        assert_eq!(t.reason.as_deref(), Some(AWAITING_APPROVAL));
        apply(&mut r, &t);
        let t = act(&r, &d, Action::Approve, 4_000).unwrap();
        apply(&mut r, &t);
        assert_eq!(r.current_wave, 2);
        let t = decide(&r, &d, 4_000).unwrap();
        assert_eq!(
            t.state,
            RolloutState::Completed,
            "no approval after the last wave"
        );
    }

    #[test]
    fn operator_actions_follow_the_states() {
        let d = vec![dev("a", 0, Pending), dev("b", 1, Pending)];
        let mut r = rollout(2);
        assert!(act(&r, &d, Action::Resume, 0).is_err());
        assert!(act(&r, &d, Action::Approve, 0).is_err());
        let t = act(&r, &d, Action::Pause, 0).unwrap();
        assert_eq!(
            (t.state, t.reason.as_deref()),
            (RolloutState::Paused, Some(PAUSED_BY_OPERATOR))
        );
        apply(&mut r, &t);
        let err = act(&r, &d, Action::Pause, 0).unwrap_err();
        assert_eq!(err.0, "cannot pause a rollout that is paused");
        assert!(act(&r, &d, Action::Approve, 0).is_err());
        let t = act(&r, &d, Action::Resume, 0).unwrap();
        assert_eq!((t.state, t.accepted_failures), (RolloutState::Running, 0));
        apply(&mut r, &t);
        let t = act(&r, &d, Action::Abort, 0).unwrap();
        assert_eq!(t.state, RolloutState::Aborted);
        apply(&mut r, &t);
        for a in [
            Action::Pause,
            Action::Resume,
            Action::Abort,
            Action::Approve,
        ] {
            let err = act(&r, &d, a, 0).unwrap_err();
            assert!(err.0.contains("aborted"), "{err}");
        }
        assert_eq!(decide(&r, &d, 10_000_000), None);
        // a paused rollout can be aborted too
        let mut r = rollout(2);
        r.state = RolloutState::Paused;
        r.reason = Some(AWAITING_APPROVAL.into());
        assert_eq!(
            act(&r, &d, Action::Abort, 0).unwrap().state,
            RolloutState::Aborted
        );
        let mut r = rollout(1);
        r.state = RolloutState::Completed;
        assert!(
            act(&r, &d, Action::Abort, 0)
                .unwrap_err()
                .0
                .contains("completed")
        );
    }

    #[test]
    fn device_states_only_move_forward() {
        assert!(Pending.predecessors().is_empty());
        assert_eq!(Installing.predecessors(), vec![Pending, Downloading]);
        assert_eq!(
            Failed.predecessors(),
            vec![Pending, Downloading, Installing, Verifying]
        );
        for s in DeviceState::ALL {
            assert_eq!(DeviceState::parse(s.as_str()), Some(s));
        }
        assert_eq!(DeviceState::parse("done"), None);
        for s in RolloutState::ALL {
            assert_eq!(RolloutState::parse(s.as_str()), Some(s));
        }
    }

    #[test]
    fn wave_timeouts_parse_within_bounds() {
        assert_eq!(parse_wave_timeout("10m").unwrap(), 600_000);
        assert_eq!(parse_wave_timeout("90s").unwrap(), 90_000);
        assert!(parse_wave_timeout("0s").is_err());
        assert!(parse_wave_timeout("8days").is_err());
        assert!(parse_wave_timeout("soon").is_err());
        assert_eq!(format_wave_timeout(600_000), "10m");
    }
}
