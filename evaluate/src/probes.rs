//! The evaluation's calls with the causality probes mixed in: val_bpb over the validation rows and the checks
//! that the model is causal and does not change while it is evaluated, from one source of logits (on the CPU,
//! the model processes of [`crate::model_process`]), all taken here in fixed code.
//!
//! A probe is a row the metric does not count, fed the way the metric's rows are: every call holds the same
//! number of rows (the last of a side may hold fewer), and every row, probe or not, goes to a random place in a
//! random call, drawn from the nonce. No call holds two rows made from the same validation row. The calls go to
//! model processes, one after the other, each fresh from the checkpoint ("sides"): each validation row is drawn
//! to one side, and each of its altered copies to another side of its own, so that no process sees a row and a
//! copy of it, or two copies of one row, and a model that remembers what it was fed cannot answer a copy with
//! its original's logits. Two kinds:
//! - an altered copy of a metric row: its tokens from a cut p on (p uniform in 1..t) replaced by those of a row
//!   of the copy's own side (so that the copy carries no tokens its side would not see anyway). Before p, the
//!   log-probability it gives each of the original's targets must be the original's.
//! - a repeat: a metric row again, unchanged, on its side (one per side): its log-probabilities must be the
//!   same in both calls. The largest difference the repeats show (zero where the device is deterministic) is
//!   allowed for as the device's noise.
//!
//! The checks compare what the metric reads, the log-probability of each target: a leak that leaves it as it is
//! gains nothing, and one that raises it at a position before a cut must raise it in the copy too, without the
//! original's token there. So a cut at p shows any dependence of what the metric reads before p on a token at p
//! or later (a next-token leak at p - 1, say), and, since the copy sits among other rows than its original, any
//! dependence on the other rows of a call. A leak at a fraction f of the positions (or at every position of a
//! fraction f of the rows) escapes all A altered copies with probability at most (1 - f)^A: see
//! [`escape_bound`]. An evaluation has a twelfth of its rows' count of altered copies ([`Probing::routine`]); an
//! audit ([`Probing::audit`], before a keep) has as many as it takes to catch a leak at 1/256 of the positions
//! with probability 99 %, on as many sides as that needs.

use std::collections::{HashMap, HashSet, VecDeque};

use anyhow::{bail, ensure, Context, Result};
use autoresearch_harness::fit::is_out_of_memory;
use autoresearch_harness::metric::BpbSum;
use tch::Tensor;

use crate::causality::Draw;
use crate::evaluation::{cross_entropy, ValRows};

/// One altered copy per this many metric rows in an evaluation; with the repeats, the probes add about a twelfth
/// to the metric's rows.
const ROWS_PER_ALTERED: usize = 12;
/// The leak an audit must catch: at this fraction of the positions (or of the rows) ...
pub const AUDIT_FRACTION: f64 = 1.0 / 256.0;
/// ... with this probability.
pub const AUDIT_POWER: f64 = 0.99;
/// The most model processes an audit starts (rows with this many copies less one, at most).
const MAX_SIDES: usize = 8;
/// The checks compare log-probabilities, floored here: below it a probability is nothing to the metric, and a
/// model cannot widen what counts as the same with huge logits.
const LOG_PROB_FLOOR: f32 = -100.0;
/// The largest change of a log-probability (in nats) between two calls of one row that counts as the device's
/// rounding (other batch shapes take other kernels' paths: about 1e-6 on the CPU); more is a model that changed.
const REPEAT_LIMIT: f64 = 1e-3;
/// The most of the repeats' largest change that the altered copies' tolerance allows for: the CPU's rounding
/// between batch shapes is about 1e-6. A model that makes its repeats move more (a shift it applies to a row it
/// recognises as fed before) cannot so widen the tolerance for a leak of its own size.
const NOISE_ALLOWED: f64 = 2.5e-5;
/// What an altered copy's log-probabilities before its cut may differ from its original's by: rounding, and four
/// times the largest change the repeats showed, up to [`NOISE_ALLOWED`].
fn allowed(noise: f64) -> f64 {
    1e-4 + 4.0 * noise.min(NOISE_ALLOWED)
}

/// The probability that a leak at a fraction `f` of the positions (or on a fraction `f` of the rows) escapes
/// `altered` altered copies with uniform cuts: each finds it with probability f.
pub fn escape_bound(altered: usize, f: f64) -> f64 {
    (1.0 - f).powi(altered as i32)
}

/// How many altered copies, on how many sides.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Probing {
    pub altered: usize,
    pub sides: usize,
}

impl Probing {
    /// An evaluation's: a copy per [`ROWS_PER_ALTERED`] rows, on two sides.
    pub fn routine(rows: usize) -> Probing {
        Probing { altered: if rows < 2 { 0 } else { (rows / ROWS_PER_ALTERED).max(1) }, sides: 2 }
    }

    /// An audit's: enough copies that a leak at [`AUDIT_FRACTION`] escapes them with probability at most
    /// 1 - [`AUDIT_POWER`] (1,177), each row with at most one copy per side but its own; fewer where
    /// [`MAX_SIDES`] sides cannot hold them (a handful of rows).
    pub fn audit(rows: usize) -> Probing {
        let wanted = ((1.0 - AUDIT_POWER).ln() / (1.0 - AUDIT_FRACTION).ln()).ceil() as usize;
        if rows < 2 {
            return Probing { altered: 0, sides: 2 };
        }
        let sides = (1 + wanted.div_ceil(rows)).clamp(2, MAX_SIDES.min(rows));
        Probing { altered: wanted.min(rows * (sides - 1)), sides }
    }
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
    /// The model process it goes to.
    side: usize,
}

/// The rows of an evaluation and how they are split into calls: each call with its side, side 0's first.
#[derive(Debug)]
pub struct Plan {
    probes: Vec<Probe>,
    calls: Vec<(usize, Vec<Item>)>,
    pub altered: usize,
    pub repeats: usize,
    pub sides: usize,
}

impl Plan {
    /// The metric's rows and the probes `probing` asks for, in calls of `batch` rows, all drawn from `seed` (the
    /// nonce).
    pub fn new(rows: &ValRows, vocab: usize, batch: usize, seed: &str, probing: Probing) -> Result<Plan> {
        let (n, t) = (rows.rows, rows.cols);
        let sides = probing.sides;
        ensure!(sides >= 2, "an evaluation needs two model processes at least, not {sides}");
        let altered = if t < 2 { 0 } else { probing.altered };
        ensure!(
            altered == 0 || (n >= sides && altered <= n * (sides - 1)),
            "{altered} altered copies of {n} rows cannot go to {sides} model processes, each row's on sides of its own"
        );
        let mut draw = Draw::new(seed);
        let mut order: Vec<usize> = (0..n).collect();
        for i in 0..n {
            order.swap(i, i + draw.below(n - i));
        }
        // The rows (in a random order) spread evenly over the sides.
        let mut side = vec![0; n];
        let mut on_side = vec![Vec::new(); sides];
        for (i, &r) in order.iter().enumerate() {
            side[r] = i % sides;
            on_side[i % sides].push(r);
        }
        let row = |r: usize| &rows.inputs[r * t..(r + 1) * t];
        let mut probes = Vec::new();
        // The k-th copy takes the (k mod n)-th row of the order, on the (k / n + 1)-th side after the row's own.
        for k in 0..altered {
            let r = order[k % n];
            let s = (side[r] + 1 + k / n) % sides;
            let cut = 1 + draw.below(t - 1);
            let donor = on_side[s][draw.below(on_side[s].len())];
            let mut tokens = row(r).to_vec();
            for (i, x) in tokens.iter_mut().enumerate().skip(cut) {
                let replacement = row(donor)[i];
                // Where the other row has the same token, another drawn at random.
                *x = if replacement != *x {
                    replacement
                } else {
                    (*x + 1 + draw.below(vocab - 1) as i64) % vocab as i64
                };
            }
            probes.push(Probe { row: r, cut, tokens, side: s });
        }
        // A repeat on every side (that has rows).
        for (s, side_rows) in on_side.iter().enumerate().filter(|(_, rows)| n >= 2 && !rows.is_empty()) {
            let r = side_rows[draw.below(side_rows.len())];
            probes.push(Probe { row: r, cut: t, tokens: row(r).to_vec(), side: s });
        }
        let repeats = probes.len() - altered;
        let source = |item: Item| source(&probes, item);
        let side_of = |item: Item| match item {
            Item::Metric(r) => side[r],
            Item::Probe(k) => probes[k].side,
        };
        let mut calls = Vec::new();
        for s in 0..sides {
            let mut items: Vec<Item> = (0..n)
                .map(Item::Metric)
                .chain((0..probes.len()).map(Item::Probe))
                .filter(|&item| side_of(item) == s)
                .collect();
            for i in (1..items.len()).rev() {
                items.swap(i, draw.below(i + 1));
            }
            // Calls small enough that every row can be kept apart from its repeat.
            let batch = batch.clamp(1, (items.len() / 3).max(1));
            let mut side_calls: Vec<Vec<Item>> = items.chunks(batch).map(<[Item]>::to_vec).collect();
            separate(&mut side_calls, source, &mut draw)?;
            calls.extend(side_calls.into_iter().map(|c| (s, c)));
        }
        Ok(Plan { probes, calls, altered, repeats, sides })
    }

    fn inputs<'a>(&'a self, rows: &'a ValRows, item: Item) -> &'a [i64] {
        match item {
            Item::Metric(r) => &rows.inputs[r * rows.cols..(r + 1) * rows.cols],
            Item::Probe(k) => &self.probes[k].tokens,
        }
    }

    fn source(&self, item: Item) -> usize {
        source(&self.probes, item)
    }
}

/// The validation row an item is made from: its targets are the ones the checks read.
fn source(probes: &[Probe], item: Item) -> usize {
    match item {
        Item::Metric(r) => r,
        Item::Probe(k) => probes[k].row,
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
/// takes val_bpb over the metric's rows, and checks the probes. A call that runs out of memory is split in two,
/// and no later call is larger.
pub fn evaluate(
    plan: &Plan,
    rows: &ValRows,
    vocab: usize,
    token_bytes: Vec<u32>,
    mut logits: impl FnMut(usize, &Tensor) -> Result<Tensor>,
) -> Result<Evaluated> {
    let t = rows.cols;
    let probed: HashSet<usize> = plan.probes.iter().map(|p| p.row).collect();
    // The log-probabilities of its source row's targets, for every probe and every row a probe is made from.
    let mut kept: HashMap<Item, Vec<f32>> = HashMap::new();
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
            // Every row against its source row's targets: a probe is read where the metric reads its original.
            let targets: Vec<i64> = part
                .iter()
                .flat_map(|&item| rows.targets[plan.source(item) * t..(plan.source(item) + 1) * t].iter().copied())
                .collect();
            let y = Tensor::from_slice(&targets).view([part.len() as i64, t as i64]);
            let losses = Vec::<f32>::try_from(cross_entropy(&out, &y, vocab)?.flatten(0, -1))?;
            for (i, (&item, losses)) in part.iter().zip(losses.chunks(t)).enumerate() {
                if let Item::Metric(_) = item {
                    sum.add(&targets[i * t..(i + 1) * t], losses)?;
                }
                if matches!(item, Item::Probe(_)) || probed.contains(&plan.source(item)) {
                    kept.insert(item, losses.iter().map(|&l| (-l).max(LOG_PROB_FLOOR)).collect());
                }
            }
        }
    }
    check_probes(plan, &kept)?;
    Ok(Evaluated { val_bpb: sum.bits_per_byte()?, calls: made })
}

/// The checks, once every call is made: repeats first (a model that changed, and the device's noise), then the
/// altered copies.
fn check_probes(plan: &Plan, kept: &HashMap<Item, Vec<f32>>) -> Result<()> {
    let read = |item: Item| kept.get(&item).map(Vec::as_slice).context("a probe's log-probabilities were not kept");
    // The largest difference of two rows' log-probabilities over their first `p` positions (kept floored, so
    // never NaN), and where it is.
    let change = |a: &[f32], b: &[f32], p: usize| {
        (0..p).map(|q| (q, (a[q] as f64 - b[q] as f64).abs())).fold((0, 0.0f64), |worst, (q, d)| {
            if d > worst.1 {
                (q, d)
            } else {
                worst
            }
        })
    };
    let mut noise: f64 = 0.0;
    for (k, probe) in plan.probes.iter().enumerate().filter(|(_, p)| p.cut == p.tokens.len()) {
        let (_, moved) = change(read(Item::Metric(probe.row))?, read(Item::Probe(k))?, probe.cut);
        if moved > REPEAT_LIMIT {
            bail!(
                "the model changed while it was evaluated: its log-probabilities for the same row moved by \
                 {moved:.3} between two calls (or they depend on the other rows of a call)"
            );
        }
        noise = noise.max(moved);
    }
    let allowed = allowed(noise);
    for (k, probe) in plan.probes.iter().enumerate().filter(|(_, p)| p.cut < p.tokens.len()) {
        let (q, moved) = change(read(Item::Metric(probe.row))?, read(Item::Probe(k))?, probe.cut);
        if moved > allowed {
            bail!(
                "non-causal: position {q} sees later tokens or other rows (the log-probability of its target changed \
                 by {moved:.3} when the tokens from position {} on were replaced, in another call)",
                probe.cut
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

    use tch::Kind;

    struct Toy {
        table: Tensor,
        cheat: Cheat,
        calls: Cell<usize>,
        max_rows: i64,
        seen: RefCell<Vec<(Vec<i64>, Tensor)>>,
    }

    impl Toy {
        fn new(vocab: i64, cheat: Cheat) -> Toy {
            let table = crate::test_tables::fixed_table(vocab, vocab, 2.0);
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
        run_with(new, val, vocab, batch, seed, Probing::routine(val.rows))
    }

    fn run_with(
        new: impl Fn() -> Toy,
        val: &ValRows,
        vocab: usize,
        batch: usize,
        seed: &str,
        probing: Probing,
    ) -> Result<Evaluated> {
        let plan = Plan::new(val, vocab, batch, seed, probing)?;
        // Every side's table copied from the first's: draws from libtorch's generator, which tests on other
        // threads draw from too, could differ.
        let first = new();
        let mut sides: Vec<Toy> = (1..plan.sides).map(|_| Toy { table: first.table.copy(), ..new() }).collect();
        sides.insert(0, first);
        evaluate(&plan, val, vocab, vec![1; vocab], |side, x| sides[side].logits(x))
    }

    #[test]
    fn probes_look_like_the_metrics_rows_and_never_share_a_call_with_their_own() {
        let val = rows(100, 16, 32);
        let plan = Plan::new(&val, 32, 4, "plan", Probing::routine(100)).unwrap();
        assert_eq!((plan.altered, plan.repeats, plan.sides), (8, 2, 2));
        // Full calls but for each side's last, and a row's altered copy on the other side.
        for side in 0..plan.sides {
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
            let plan = Plan::new(&val, 32, 4, seed, Probing::routine(100)).unwrap();
            plan.calls.iter().position(|(_, c)| c.iter().any(|i| matches!(i, Item::Probe(_)))).unwrap()
        };
        let firsts: HashSet<usize> = (0..20).map(|i| first_probe_call(&format!("n{i}"))).collect();
        assert!(firsts.len() > 3, "{firsts:?}");
    }

    #[test]
    fn an_audit_gives_each_row_copies_on_sides_of_their_own() {
        // The small profile's count of rows (512), shorter.
        let (vocab, t, val) = (32, 16, rows(512, 16, 32));
        let probing = Probing::audit(512);
        assert_eq!(probing, Probing { altered: 1177, sides: 4 });
        assert!(escape_bound(1177, AUDIT_FRACTION) <= 1.0 - AUDIT_POWER);
        assert!(escape_bound(1176, AUDIT_FRACTION) > 1.0 - AUDIT_POWER);
        // At h100 (10,240 rows) two sides do; a handful of rows get as many copies as their sides hold.
        assert_eq!(Probing::audit(10_240), Probing { altered: 1177, sides: 2 });
        assert_eq!(Probing::audit(5), Probing { altered: 20, sides: 5 });
        let plan = Plan::new(&val, vocab, 4, "audit", probing).unwrap();
        assert_eq!((plan.altered, plan.repeats, plan.sides), (1177, 4, 4));
        let side_of_row = |r| plan.calls.iter().find(|(_, c)| c.contains(&Item::Metric(r))).unwrap().0;
        let mut copies = HashSet::new();
        for probe in plan.probes.iter().filter(|p| p.cut < t) {
            // A copy goes to a side other than its row's, one of a row's copies to a side at most ...
            assert_ne!(probe.side, side_of_row(probe.row), "{probe:?}");
            assert!(copies.insert((probe.row, probe.side)), "{probe:?}");
            // ... and its tokens from the cut on are those of a row of its own side.
            let original = &val.inputs[probe.row * t..(probe.row + 1) * t];
            // (Where that row's token is the original's, another one.)
            let from = |d: usize| {
                let donor = &val.inputs[d * t..(d + 1) * t];
                (probe.cut..t)
                    .all(|i| probe.tokens[i] == donor[i] || (donor[i] == original[i] && probe.tokens[i] != original[i]))
            };
            assert!((0..512).any(|d| side_of_row(d) == probe.side && from(d)), "{probe:?}");
        }
        // Every row has two copies at least: a leak on any one row is caught.
        let per_row = (0..512).map(|r| copies.iter().filter(|(row, _)| *row == r).count());
        assert!(per_row.clone().min() == Some(2) && per_row.max() == Some(3));
        // An honest model passes, with the val_bpb of a routine evaluation.
        let honest = run_with(|| Toy::new(vocab as i64, Cheat::None), &val, vocab, 4, "audit", probing).unwrap();
        let routine = run(|| Toy::new(vocab as i64, Cheat::None), &val, vocab, 4, "routine").unwrap();
        assert!((honest.val_bpb - routine.val_bpb).abs() < 1e-9, "{} vs {}", honest.val_bpb, routine.val_bpb);
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
        let plan = Plan::new(&val, vocab, 4, "pay", Probing::routine(120)).unwrap();
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
                let plan = Plan::new(&val, vocab, 4, seed, Probing::routine(120)).unwrap();
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

    /// The audit's bound, measured: a next-token leak at one position of a row (one in 255 of the places a cut
    /// can fall) escapes an audit of the small profile's 512 rows about once in a hundred, where it escapes a
    /// routine evaluation most of the time.
    #[test]
    fn an_audit_catches_a_leak_at_1_in_256_positions_99_times_in_100() {
        let (vocab, n, t) = (32, 512, 256);
        let val = rows(n, t, vocab as i64);
        let leak = Cheat::Peek(|_, q| q == 100);
        let escaped = |probing: Probing, tries: usize| {
            let leaky = || Toy::new(vocab as i64, leak);
            (0..tries).filter(|i| run_with(leaky, &val, vocab, 16, &format!("a{i}"), probing).is_ok()).count() as f64
                / tries as f64
        };
        let (audit, tries) = (Probing::audit(n), 200);
        let bound = escape_bound(audit.altered, 1.0 / (t - 1) as f64);
        assert!(bound < 0.011, "{bound}");
        let audits = escaped(audit, tries);
        let routine = escaped(Probing::routine(n), 40);
        eprintln!("a leak at 1/255 of the positions: escaped {audits:.3} of {tries} audits (bound {bound:.4}), {routine:.3} of 40 evaluations");
        assert!(audits <= bound + 4.0 * (bound * (1.0 - bound) / tries as f64).sqrt(), "escaped {audits}");
        assert!(routine > 0.6, "a routine evaluation lets it through most of the time: {routine}");
    }
}
