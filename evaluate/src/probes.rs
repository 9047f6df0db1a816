//! The evaluation's calls with the causality probes mixed in: val_bpb over the validation rows and the checks
//! that the model is causal and does not change while it is evaluated, from one source of logits (on the CPU,
//! the model processes of [`crate::model_process`]), all taken here in fixed code.
//!
//! A probe is a row the metric does not count, fed the way the metric's rows are: every call holds the same
//! number of rows (the last may hold fewer), and every row, probe or not, goes to a random place in a random
//! call, drawn from the nonce. No call holds two rows made from the same validation row. The calls go to two
//! model processes, one after the other, each fresh from the checkpoint ("sides"): each validation row is drawn
//! to one side, its altered copy goes to the other, so that no process sees both a row and its copy, and a model
//! that remembers what it was fed cannot answer a copy with its original's logits. Two kinds:
//! - an altered copy of a metric row: its tokens from a cut p on (p uniform in 1..t) replaced by another row's.
//!   Its logits before p must be the original's. Altered copies are made of distinct rows.
//! - a repeat: a metric row again, unchanged, on its side: its logits must be the same in both calls. The
//!   largest difference the repeats show (zero where the device is deterministic) is allowed for as the device's
//!   noise.
//!
//! What a probe catches: a cut at p shows any dependence of the logits before p on a token at p or later (a
//! next-token leak at p - 1, say), and, since the copy sits among other rows than its original, any dependence
//! on the other rows of a call. A leak at a fraction f of the positions (or at every position of a fraction f
//! of the rows) escapes all A altered copies with probability at most (1 - f)^A: see [`escape_bound`].

use std::collections::{HashSet, VecDeque};

use anyhow::{bail, ensure, Context, Result};
use autoresearch_harness::fit::is_out_of_memory;
use autoresearch_harness::metric::BpbSum;
use tch::{Kind, Tensor};

use crate::causality::Draw;
use crate::evaluation::{cross_entropy, ValRows};

/// One altered copy per this many metric rows; with the repeats, the probes add about a twelfth to the metric's
/// rows.
const ROWS_PER_ALTERED: usize = 12;
/// Repeats of metric rows.
const REPEATS: usize = 2;
/// The checks compare log-probabilities (log-softmax, what the metric reads), floored here: below it a
/// probability is nothing to the metric, and a model cannot widen what counts as the same with huge logits.
const LOG_PROB_FLOOR: f64 = -100.0;
/// The largest change of a log-probability (in nats) between two calls of one row that counts as the device's
/// rounding (other batch shapes take other kernels' paths: about 1e-6 on the CPU); more is a model that changed.
const REPEAT_LIMIT: f64 = 1e-3;
/// What an altered copy's log-probabilities before its cut may differ from its original's by: rounding, and four
/// times the largest change the repeats showed.
fn allowed(noise: f64) -> f64 {
    1e-4 + 4.0 * noise
}

/// The probability that a leak at a fraction `f` of the positions (or on a fraction `f` of the rows) escapes
/// `altered` altered copies of distinct rows with uniform cuts: each finds it with probability f.
pub fn escape_bound(altered: usize, f: f64) -> f64 {
    (1.0 - f).powi(altered as i32)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Item {
    /// A validation row, counted in the metric.
    Metric(usize),
    /// A probe, by its index in [`Plan::probes`].
    Probe(usize),
}

#[derive(Debug)]
struct Probe {
    /// The validation row it is made from.
    row: usize,
    /// Tokens from here on are another row's; `t` for a repeat.
    cut: usize,
    tokens: Vec<i64>,
}

/// The model processes the calls go to.
pub const SIDES: usize = 2;

/// The rows of an evaluation and how they are split into calls: each call with its side, side 0's first.
#[derive(Debug)]
pub struct Plan {
    probes: Vec<Probe>,
    calls: Vec<(usize, Vec<Item>)>,
    pub altered: usize,
    pub repeats: usize,
}

impl Plan {
    /// The metric's rows and the probes, in calls of `batch` rows, all drawn from `seed` (the nonce).
    pub fn new(rows: &ValRows, vocab: usize, batch: usize, seed: &str) -> Result<Plan> {
        let (n, t) = (rows.rows, rows.cols);
        let mut draw = Draw::new(seed);
        let altered = if n < 2 || t < 2 { 0 } else { (n / ROWS_PER_ALTERED).max(1) };
        let repeats = if n < 2 { 0 } else { REPEATS };
        let mut order: Vec<usize> = (0..n).collect();
        for i in 0..n {
            order.swap(i, i + draw.below(n - i));
        }
        // Half the rows (in a random order) on each side.
        let mut side = vec![0; n];
        for (i, &r) in order.iter().enumerate() {
            side[r] = i % SIDES;
        }
        let row = |r: usize| &rows.inputs[r * t..(r + 1) * t];
        let mut probes = Vec::new();
        for &r in &order[..altered] {
            let cut = 1 + draw.below(t - 1);
            let other = (r + 1 + draw.below(n - 1)) % n;
            let mut tokens = row(r).to_vec();
            for (i, x) in tokens.iter_mut().enumerate().skip(cut) {
                let replacement = row(other)[i];
                // Where the other row has the same token, any other token will do.
                *x = if replacement != *x { replacement } else { (*x + 1) % vocab as i64 };
            }
            probes.push(Probe { row: r, cut, tokens });
        }
        for _ in 0..repeats {
            let r = draw.below(n);
            probes.push(Probe { row: r, cut: t, tokens: row(r).to_vec() });
        }
        let source = |item: Item| match item {
            Item::Metric(r) => r,
            Item::Probe(k) => probes[k].row,
        };
        let side_of = |item: Item| match item {
            Item::Probe(k) if probes[k].cut < t => (side[probes[k].row] + 1) % SIDES,
            _ => side[source(item)],
        };
        let mut calls = Vec::new();
        for s in 0..SIDES {
            let mut items: Vec<Item> = (0..n)
                .map(Item::Metric)
                .chain((0..probes.len()).map(Item::Probe))
                .filter(|&item| side_of(item) == s)
                .collect();
            for i in (1..items.len()).rev() {
                items.swap(i, draw.below(i + 1));
            }
            // Calls small enough that every row can be kept apart from its copies.
            let batch = batch.clamp(1, (items.len() / 3).max(1));
            let mut side_calls: Vec<Vec<Item>> = items.chunks(batch).map(<[Item]>::to_vec).collect();
            separate(&mut side_calls, source, &mut draw)?;
            calls.extend(side_calls.into_iter().map(|c| (s, c)));
        }
        Ok(Plan { probes, calls, altered, repeats })
    }

    /// Calls of the plan.
    pub fn calls(&self) -> usize {
        self.calls.len()
    }

    fn inputs<'a>(&'a self, rows: &'a ValRows, item: Item) -> &'a [i64] {
        match item {
            Item::Metric(r) => &rows.inputs[r * rows.cols..(r + 1) * rows.cols],
            Item::Probe(k) => &self.probes[k].tokens,
        }
    }
}

/// Moves rows between calls until no call holds two rows made from the same validation row.
fn separate(calls: &mut [Vec<Item>], source: impl Fn(Item) -> usize, draw: &mut Draw) -> Result<()> {
    let clash = |call: &[Item], skip: usize, row: usize| {
        call.iter().enumerate().any(|(i, &other)| i != skip && source(other) == row)
    };
    for c in 0..calls.len() {
        let mut i = 0;
        while i < calls[c].len() {
            let item = calls[c][i];
            if !clash(&calls[c], i, source(item)) {
                i += 1;
                continue;
            }
            let mut moved = false;
            for _ in 0..10_000 {
                let d = draw.below(calls.len());
                let j = draw.below(calls[d].len());
                let other = calls[d][j];
                if d != c && !clash(&calls[d], j, source(item)) && !clash(&calls[c], i, source(other)) {
                    calls[c][i] = other;
                    calls[d][j] = item;
                    moved = true;
                    break;
                }
            }
            ensure!(moved, "cannot keep the probes apart from their rows in {} calls", calls.len());
        }
    }
    Ok(())
}

/// What the evaluation measured.
#[derive(Debug)]
pub struct Evaluated {
    pub val_bpb: f64,
    /// Calls made (more than planned where a call ran out of memory and was split).
    pub calls: usize,
}

/// Feeds the plan's calls to `logits` (a side, and token ids (rows, t) on the CPU, to float logits (rows, t, vocab)),
/// takes
/// val_bpb over the metric's rows, and checks the probes. A call that runs out of memory is split in two, and
/// no later call is larger.
pub fn evaluate(
    plan: &Plan,
    rows: &ValRows,
    vocab: usize,
    token_bytes: Vec<u32>,
    mut logits: impl FnMut(usize, &Tensor) -> Result<Tensor>,
) -> Result<Evaluated> {
    let t = rows.cols;
    let probed: HashSet<usize> = plan.probes.iter().map(|p| p.row).collect();
    // The log-probabilities of every probe and of every row a probe is made from, kept for the checks.
    let mut kept: Vec<(Item, Tensor)> = Vec::new();
    let mut sum = BpbSum::new(token_bytes);
    let (mut limit, mut made) = (usize::MAX, 0);
    for (side, call) in &plan.calls {
        let mut parts = VecDeque::from([call.as_slice()]);
        while let Some(part) = parts.pop_front() {
            if part.len() > limit {
                let (a, b) = part.split_at(limit);
                parts.push_front(b);
                parts.push_front(a);
                continue;
            }
            let inputs: Vec<i64> = part.iter().flat_map(|&item| plan.inputs(rows, item).iter().copied()).collect();
            let x = Tensor::from_slice(&inputs).view([part.len() as i64, t as i64]);
            made += 1;
            let out = match logits(*side, &x) {
                Ok(out) => out,
                Err(e) if part.len() > 1 && is_out_of_memory(&format!("{e:#}")) => {
                    limit = part.len() / 2;
                    parts.push_front(part);
                    continue;
                }
                Err(e) => return Err(e),
            };
            ensure!(
                out.size() == [part.len() as i64, t as i64, vocab as i64],
                "the model's logits have shape {:?}; the evaluation needs [{}, {t}, {vocab}] (batch, sequence, \
                 vocabulary)",
                out.size(),
                part.len()
            );
            for (i, &item) in part.iter().enumerate() {
                let row = out.get(i as i64);
                if let Item::Metric(r) = item {
                    let y = Tensor::from_slice(&rows.targets[r * t..(r + 1) * t]).view([1, t as i64]);
                    let losses = cross_entropy(&row.unsqueeze(0), &y, vocab)?;
                    sum.add(&rows.targets[r * t..(r + 1) * t], &Vec::<f32>::try_from(losses.flatten(0, -1))?)?;
                }
                if matches!(item, Item::Probe(_)) || matches!(item, Item::Metric(r) if probed.contains(&r)) {
                    kept.push((item, row.log_softmax(-1, Kind::Float).clamp_min(LOG_PROB_FLOOR)));
                }
            }
        }
    }
    check_probes(plan, &kept)?;
    Ok(Evaluated { val_bpb: sum.bits_per_byte()?, calls: made })
}

/// The checks, once every call is made: repeats first (a model that changed, and the device's noise), then the
/// altered copies.
fn check_probes(plan: &Plan, kept: &[(Item, Tensor)]) -> Result<()> {
    let logits = |item: Item| -> Result<Tensor> {
        let (_, l) = kept.iter().find(|(i, _)| *i == item).context("a probe's logits were not kept")?;
        Ok(l.to_kind(Kind::Double))
    };
    let max_abs = |t: &Tensor| t.abs().max().double_value(&[]);
    let mut noise: f64 = 0.0;
    for (k, probe) in plan.probes.iter().enumerate().filter(|(_, p)| p.cut == p.tokens.len()) {
        let (first, again) = (logits(Item::Metric(probe.row))?, logits(Item::Probe(k))?);
        let change = max_abs(&(&first - &again));
        if change.is_nan() || change > REPEAT_LIMIT {
            bail!(
                "the model changed while it was evaluated: its log-probabilities for the same row moved by \
                 {change:.3} between two calls (or they depend on the other rows of a call)"
            );
        }
        noise = noise.max(change);
    }
    for (k, probe) in plan.probes.iter().enumerate().filter(|(_, p)| p.cut < p.tokens.len()) {
        let p = probe.cut as i64;
        let before = logits(Item::Metric(probe.row))?.narrow(0, 0, p);
        let after = logits(Item::Probe(k))?.narrow(0, 0, p);
        let allowed = allowed(noise);
        let changes = Vec::<f64>::try_from((&before - &after).abs().amax([-1], false))?;
        if let Some(q) = changes.iter().position(|&c| c.is_nan() || c > allowed) {
            bail!(
                "non-causal: position {q} sees later tokens or other rows (its log-probabilities changed by {:.3} \
                 when the tokens from position {p} on were replaced, in another call)",
                changes[q]
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::{Cell, RefCell};

    /// Toy rows: `n` rows of `t` tokens of a fixed pseudo-random text over `vocab` ids.
    fn rows(n: usize, t: usize, vocab: i64) -> ValRows {
        let mut x = 7u64;
        let tokens: Vec<i64> = (0..n * (t + 1))
            .map(|_| {
                x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                ((x >> 33) % vocab as u64) as i64
            })
            .collect();
        let (mut inputs, mut targets) = (Vec::new(), Vec::new());
        for row in tokens.chunks(t + 1) {
            inputs.extend_from_slice(&row[..t]);
            targets.extend_from_slice(&row[1..]);
        }
        ValRows { inputs, targets, rows: n, cols: t }
    }

    /// Where a peeking toy model leaks: given a row and a position.
    type Leaks = fn(&[i64], usize) -> bool;

    /// How a toy model cheats, if it does.
    #[derive(Clone, Copy)]
    enum Cheat {
        None,
        /// Bets on the next input token at the positions where `leaks(row, q)`.
        Peek(Leaks),
        /// Adds the mean of the batch's embeddings to every row's logits.
        CrossRow,
        /// Peeks everywhere but in its first call.
        AfterFirstCall,
        /// Peeks everywhere unless its call holds `n` rows.
        UnlessBatchOf(i64),
        /// Peeks everywhere but in calls holding a row whose first 8 tokens another row of the call shares.
        UnlessDuplicated,
        /// Learns from what it is fed: each call scales its table.
        Drift,
        /// Peeks everywhere, and gives one token a logit of -1e30 (a token the metric never meets), so that a
        /// tolerance scaled by the logits' size would let any leak through.
        PeekWithAHugeLogit,
        /// Peeks everywhere, and remembers the rows it was fed with its logits: for a row that shares a prefix
        /// with one it saw, the same logits there (so that a copy looks causal beside its original).
        Remembers,
    }

    struct Toy {
        table: Tensor,
        cheat: Cheat,
        calls: Cell<usize>,
        max_rows: i64,
        seen: RefCell<Vec<(Vec<i64>, Tensor)>>,
    }

    impl Toy {
        fn new(vocab: i64, cheat: Cheat) -> Toy {
            tch::manual_seed(1);
            let table = Tensor::randn([vocab, vocab], (Kind::Float, tch::Device::Cpu));
            Toy { table, cheat, calls: Cell::new(0), max_rows: i64::MAX, seen: RefCell::new(Vec::new()) }
        }

        fn logits(&self, x: &Tensor) -> Result<Tensor> {
            let (n, t) = x.size2()?;
            ensure!(n <= self.max_rows, "CUDA out of memory (a test's stand-in): {n} rows");
            self.calls.set(self.calls.get() + 1);
            if let Cheat::Drift = self.cheat {
                let _ = self.table.shallow_clone().g_mul_scalar_(1.01);
            }
            let logits = Tensor::embedding(&self.table, x, -1, false, false);
            let vocab = self.table.size()[0];
            let bet = || x.roll([-1], [1]).one_hot(vocab).to_kind(Kind::Float) * 20.0;
            let tokens = Vec::<i64>::try_from(x.flatten(0, -1))?;
            let duplicated = || {
                let starts: Vec<&[i64]> = tokens.chunks(t as usize).map(|r| &r[..8.min(t as usize)]).collect();
                (0..starts.len()).any(|i| (0..i).any(|j| starts[i] == starts[j]))
            };
            Ok(match self.cheat {
                Cheat::None | Cheat::Drift => logits,
                Cheat::Peek(leaks) => {
                    let mask: Vec<f32> = tokens
                        .chunks(t as usize)
                        .flat_map(|row| (0..t as usize).map(move |q| if leaks(row, q) { 1.0 } else { 0.0 }))
                        .collect();
                    logits + bet() * Tensor::from_slice(&mask).view([n, t, 1])
                }
                Cheat::CrossRow => &logits + logits.mean_dim(0, true, Kind::Float),
                Cheat::AfterFirstCall if self.calls.get() == 1 => logits,
                Cheat::UnlessBatchOf(b) if n == b => logits,
                Cheat::UnlessDuplicated if duplicated() => logits,
                Cheat::AfterFirstCall | Cheat::UnlessBatchOf(_) | Cheat::UnlessDuplicated => logits + bet(),
                Cheat::PeekWithAHugeLogit => {
                    let huge = Tensor::zeros([vocab], (Kind::Float, tch::Device::Cpu));
                    let _ = huge.narrow(0, vocab - 1, 1).fill_(-1e30);
                    logits + bet() + huge
                }
                Cheat::Remembers => {
                    let leaky = logits + bet();
                    let mut seen = self.seen.borrow_mut();
                    for (i, row) in tokens.chunks(t as usize).enumerate() {
                        let out = leaky.get(i as i64);
                        let shared =
                            |(old, _): &&(Vec<i64>, Tensor)| old.iter().zip(row).take_while(|(a, b)| a == b).count();
                        if let Some(earlier) = seen.iter().max_by_key(shared) {
                            let p = shared(&earlier) as i64;
                            out.narrow(0, 0, p).copy_(&earlier.1.narrow(0, 0, p));
                        }
                        seen.push((row.to_vec(), out.copy()));
                    }
                    leaky
                }
            })
        }
    }

    /// Evaluates with a model made by `new` on each side, as the model processes are.
    fn run(new: impl Fn() -> Toy, val: &ValRows, vocab: usize, batch: usize, seed: &str) -> Result<Evaluated> {
        let plan = Plan::new(val, vocab, batch, seed)?;
        // The second side's table copied from the first's: two draws from libtorch's generator, which tests on
        // other threads draw from too, could differ.
        let first = new();
        let second = Toy { table: first.table.copy(), ..new() };
        let sides = [first, second];
        evaluate(&plan, val, vocab, vec![1; vocab], |side, x| sides[side].logits(x))
    }

    #[test]
    fn probes_look_like_the_metrics_rows_and_never_share_a_call_with_their_own() {
        let val = rows(100, 16, 32);
        let plan = Plan::new(&val, 32, 4, "plan").unwrap();
        assert_eq!((plan.altered, plan.repeats), (8, 2));
        // Full calls but for each side's last, and a row's altered copy on the other side.
        for side in 0..SIDES {
            let sizes: Vec<usize> = plan.calls.iter().filter(|(s, _)| *s == side).map(|(_, c)| c.len()).collect();
            assert!(sizes[..sizes.len() - 1].iter().all(|&s| s == 4), "{sizes:?}");
        }
        assert_eq!(plan.calls.iter().map(|(_, c)| c.len()).sum::<usize>(), 110);
        let side_of = |wanted: Item| plan.calls.iter().find(|(_, c)| c.contains(&wanted)).unwrap().0;
        for (k, probe) in plan.probes.iter().enumerate() {
            let same = side_of(Item::Probe(k)) == side_of(Item::Metric(probe.row));
            assert_eq!(same, probe.cut == 16, "{probe:?}");
        }
        for (_, call) in &plan.calls {
            let sources: Vec<usize> = call
                .iter()
                .map(|&i| match i {
                    Item::Metric(r) => r,
                    Item::Probe(k) => plan.probes[k].row,
                })
                .collect();
            assert_eq!(sources.iter().collect::<HashSet<_>>().len(), sources.len(), "{call:?}");
        }
        // The probes are spread: not all in the first calls, nor in one place for every nonce.
        let first_probe_call = |seed: &str| {
            let plan = Plan::new(&val, 32, 4, seed).unwrap();
            plan.calls.iter().position(|(_, c)| c.iter().any(|i| matches!(i, Item::Probe(_)))).unwrap()
        };
        let firsts: HashSet<usize> = (0..20).map(|i| first_probe_call(&format!("n{i}"))).collect();
        assert!(firsts.len() > 3, "{firsts:?}");
    }

    #[test]
    fn an_honest_model_passes_and_its_val_bpb_is_the_plain_one() {
        let (vocab, val) = (32, rows(60, 16, 32));
        let model = Toy::new(vocab as i64, Cheat::None);
        let got = run(|| Toy::new(vocab as i64, Cheat::None), &val, vocab, 4, "honest").unwrap();
        // val_bpb in one plain pass over the rows, without probes.
        let x = Tensor::from_slice(&val.inputs).view([60, 16]);
        let y = Tensor::from_slice(&val.targets).view([60, 16]);
        let losses = cross_entropy(&model.logits(&x).unwrap(), &y, vocab).unwrap();
        let plain = losses.sum(Kind::Double).double_value(&[]) / (std::f64::consts::LN_2 * 960.0);
        assert!((got.val_bpb - plain).abs() < 1e-9, "{} vs {plain}", got.val_bpb);
        // A call that runs out of memory is split, and every row still counts once.
        let small = || Toy { max_rows: 2, ..Toy::new(vocab as i64, Cheat::None) };
        let split = run(small, &val, vocab, 4, "honest").unwrap();
        assert!((split.val_bpb - plain).abs() < 1e-9 && split.calls > got.calls);
    }

    #[test]
    fn leaks_and_models_that_recognise_a_check_are_caught() {
        let (vocab, val) = (32, rows(120, 16, 32));
        let (leak, changed) = ("non-causal: position ", "the model changed while it was evaluated");
        let cases = [
            (Cheat::Peek(|_, _| true), &[leak][..]),
            (Cheat::CrossRow, &[changed]),
            // Caught by whichever probe shares a call with the first: a repeat, or an altered copy.
            (Cheat::AfterFirstCall, &[leak, changed]),
            (Cheat::UnlessBatchOf(2), &[leak, changed]),
            (Cheat::UnlessDuplicated, &[leak]),
            (Cheat::Drift, &[changed]),
            (Cheat::Remembers, &[leak]),
            (Cheat::PeekWithAHugeLogit, &[leak]),
        ];
        for (i, (cheat, errors)) in cases.into_iter().enumerate() {
            for seed in ["a", "b", "c"] {
                let err = run(|| Toy::new(vocab as i64, cheat), &val, vocab, 4, seed).unwrap_err().to_string();
                assert!(errors.iter().any(|e| err.starts_with(e)), "case {i}, seed {seed}: {err}");
            }
        }
        // The leaks pay: a peeking model's val_bpb is far below an honest one's.
        let honest = Toy::new(vocab as i64, Cheat::None);
        let peeking = Toy::new(vocab as i64, Cheat::Peek(|_, _| true));
        let plan = Plan::new(&val, vocab, 4, "pay").unwrap();
        let plain = |m: &Toy| {
            let x = Tensor::from_slice(&val.inputs).view([120, 16]);
            let y = Tensor::from_slice(&val.targets).view([120, 16]);
            cross_entropy(&m.logits(&x).unwrap(), &y, vocab).unwrap().mean(Kind::Double).double_value(&[])
        };
        assert!(plain(&peeking) < plain(&honest) / 2.0);
        evaluate(&plan, &val, vocab, vec![1; vocab], |_, x| honest.logits(x)).unwrap();
        // A model that remembers escapes where one process saw both a row and its copy: the two sides catch it.
        let escaped = ["a", "b", "c"]
            .iter()
            .filter(|seed| {
                let remembers = Toy::new(vocab as i64, Cheat::Remembers);
                let plan = Plan::new(&val, vocab, 4, seed).unwrap();
                evaluate(&plan, &val, vocab, vec![1; vocab], |_, x| remembers.logits(x)).is_ok()
            })
            .count();
        assert!(escaped > 0, "one process for both sides would not have caught it every time");
    }

    /// The bound of [`escape_bound`], measured: a next-token leak at a fixed fraction of the positions, and one on
    /// a fraction of the rows, each tried with many nonces, escape about as often as the bound says, and no more.
    #[test]
    fn sparse_leaks_escape_no_more_often_than_the_bound() {
        let (vocab, n, t) = (32, 120, 16);
        let val = rows(n, t, vocab as i64);
        let altered = n / ROWS_PER_ALTERED;
        // One position in 16 (column 9), and every position of the rows whose first token is below 2 (1/16).
        let leaks: [(Leaks, f64); 2] = [
            (|_, q| q == 9, 1.0 / (t - 1) as f64),
            (|row, _| row[0] < 2, (0..n).filter(|r| val.inputs[r * t] < 2).count() as f64 / n as f64),
        ];
        for (leak, f) in leaks {
            let tries = 300;
            let escaped = (0..tries)
                .filter(|i| run(|| Toy::new(vocab as i64, Cheat::Peek(leak)), &val, vocab, 4, &format!("s{i}")).is_ok())
                .count() as f64
                / tries as f64;
            let bound = escape_bound(altered, f);
            eprintln!("a leak at a fraction {f:.4}: escaped {escaped:.3} of {tries} evaluations, bound {bound:.3}");
            // Four standard deviations of a binomial proportion above the bound.
            let slack = 4.0 * (bound * (1.0 - bound) / tries as f64).sqrt();
            assert!(escaped <= bound + slack, "escaped {escaped}, bound {bound}");
            assert!(escaped > 0.0 && bound > 0.05, "the test measures something: {escaped}, {bound}");
        }
        // The numbers README states: at h100 (10240 rows) and at small (512 rows).
        assert!(escape_bound(10240 / ROWS_PER_ALTERED, 1.0 / 256.0) < 0.036);
        assert!(escape_bound(10240 / ROWS_PER_ALTERED, 1.0 / 185.0) < 0.01);
        assert!(escape_bound(512 / ROWS_PER_ALTERED, 1.0 / 9.0) < 0.01);
        assert!(escape_bound(512 / ROWS_PER_ALTERED, 1.0 / 256.0) > 0.84);
    }
}
