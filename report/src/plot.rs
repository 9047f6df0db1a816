//! The pictures: `progress.png` of one session ([`progress`]) and `comparison.png` of several
//! ([`Comparison::plot`]), drawn with plotters in DejaVu Sans, their y axis the session's metric and the way it
//! is better. Behind the `plot` feature (on by default), so that a crate that only reads and writes the files (the
//! research loop, the dashboard) does not link plotters.

use std::path::Path;

use anyhow::{bail, Context, Result};
use plotters::prelude::*;
use plotters::style::register_font;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use crate::compare::Comparison;
use crate::metric::{Goal, Metric};
use crate::noise::NoiseEstimate;
use crate::report::{kept_gains, KeptGain};
use crate::results::{self, Row, Status};
use crate::tree::{self, Search};

/// Picture size in pixels (the original's 16 × 8 inches at 150 dpi).
pub const PLOT_SIZE: (u32, u32) = (2400, 1200);

/// Cuts a description to about `n` characters.
fn cut(text: &str, n: usize) -> String {
    if text.chars().count() <= n {
        text.to_string()
    } else {
        text.chars().take(n - 1).collect::<String>() + "…"
    }
}

/// The y axis's name: the metric and which way is better.
fn axis_name(metric: &Metric) -> String {
    format!("{} ({})", metric.name, metric.goal.phrase())
}

/// progress.png's y range: from a little beyond the best (the kept value furthest the better way, or the
/// baseline) to a little beyond the baseline on the other side, so that worse discards far off are left out.
fn progress_range(baseline: f64, kept: &[f64], goal: Goal) -> (f64, f64) {
    let best = kept.iter().fold(baseline, |best, &v| if goal.better(v, best) { v } else { best });
    let pad = ((baseline - best).abs() * 0.15).max(1e-3 * baseline.abs().max(1e-3));
    (baseline.min(best) - pad, baseline.max(best) + pad)
}

/// progress.png: the metric by experiment (crashes and reruns left out, the rest numbered in order): discards
/// as small grey dots, keeps as larger green dots labelled with their description (orange where the gain is
/// smaller than 2σ of the measured noise), the running best ([`tree::running_best`]) as a green step line (down
/// for lower-is-better, up for higher). A frontier session's tree is drawn too: a line from each kept experiment
/// to the node it started from, the best's lineage thick. The y range is [`progress_range`]'s.
pub fn progress(path: &Path, out: &Path, noise: &[NoiseEstimate], metric: &Metric, search: Search) -> Result<()> {
    let rows = results::read(path)?.rows;
    // (x, the row's index in the file, the row)
    let numbered: Vec<(usize, usize, &Row)> = rows
        .iter()
        .enumerate()
        .filter(|(_, r)| r.status == Status::Keep || r.status == Status::Discard)
        .enumerate()
        .map(|(x, (i, r))| (x + 1, i, r))
        .collect();
    let points: Vec<(usize, &Row)> = numbered.iter().map(|&(x, _, r)| (x, r)).collect();
    let below_noise: Vec<bool> =
        kept_gains(&rows, noise, metric.goal, search).iter().map(KeptGain::below_noise).collect();
    let kept: Vec<(usize, f64, &str, bool)> = points
        .iter()
        .filter(|(_, r)| r.status == Status::Keep)
        .zip(&below_noise)
        .map(|((x, r), below)| (*x, r.val_bpb, r.description.as_str(), *below))
        .collect();
    let improvements = kept.len().saturating_sub(1);
    let lucky = below_noise.iter().filter(|b| **b).count();
    let caption = match lucky {
        0 => format!("{} Experiments, {improvements} Kept Improvements", points.len()),
        k => format!("{} Experiments, {improvements} Kept Improvements ({k} below 2σ noise, orange)", points.len()),
    };
    let _ = register_font("sans-serif", FontStyle::Normal, dejavu::sans::regular());

    let baseline = points.first().map_or(1.0, |(_, r)| r.val_bpb);
    let (y_lo, y_hi) = progress_range(baseline, &kept.iter().map(|k| k.1).collect::<Vec<_>>(), metric.goal);
    let n = points.len().max(1);

    let root = BitMapBackend::new(out, PLOT_SIZE).into_drawing_area();
    let draw = |e| anyhow::anyhow!("drawing {}: {e:?}", out.display());
    root.fill(&WHITE).map_err(draw)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(caption, ("sans-serif", 44))
        .margin(40)
        .x_label_area_size(80)
        .y_label_area_size(130)
        .build_cartesian_2d(0f64..(n as f64 + 1.0), y_lo..y_hi)
        .map_err(draw)?;
    chart
        .configure_mesh()
        .x_desc("Experiment #")
        .y_desc(axis_name(metric))
        .axis_desc_style(("sans-serif", 30))
        .label_style(("sans-serif", 24))
        .x_label_formatter(&|x| format!("{x:.0}"))
        .light_line_style(RGBColor(235, 235, 235))
        .draw()
        .map_err(draw)?;
    let in_range = |y: f64| y >= y_lo && y <= y_hi;
    let grey = RGBColor(200, 200, 200);
    chart
        .draw_series(
            points
                .iter()
                .filter(|(_, r)| r.status == Status::Discard && in_range(r.val_bpb))
                .map(|(x, r)| Circle::new((*x as f64, r.val_bpb), 5, grey.filled())),
        )
        .map_err(draw)?;
    // Running best: flat until it moves, then to its new value.
    let green = RGBColor(46, 160, 67);
    let running = tree::running_best(&rows, search, metric.goal);
    let mut steps = Vec::new();
    let mut current: Option<f64> = None;
    for &(x, i, _) in &numbered {
        let Some(y) = running[i] else { continue };
        if current == Some(y) {
            continue;
        }
        if let Some(before) = current {
            steps.push((x as f64, before));
        }
        current = Some(y);
        steps.push((x as f64, y));
    }
    if let Some(&(_, y)) = steps.last() {
        steps.push((n as f64 + 0.5, y));
    }
    chart.draw_series(LineSeries::new(steps, green.stroke_width(3))).map_err(draw)?;
    let dark = RGBColor(20, 80, 30);
    if search == Search::Frontier {
        // Each kept experiment's line to the node it started from; the best's lineage thick.
        let x_of: std::collections::HashMap<usize, usize> = numbered.iter().map(|&(x, i, _)| (i, x)).collect();
        let lineage = tree::best_path(&rows, search, metric.goal);
        let parents = tree::parent_rows(&rows);
        for &(x, i, r) in numbered.iter().filter(|(_, _, r)| r.status == Status::Keep) {
            let Some((px, p)) = parents[i].and_then(|p| Some((*x_of.get(&p)?, p))) else { continue };
            let on_path = lineage.iter().any(|&l| rows[l].commit == r.commit);
            let style = if on_path { dark.stroke_width(5) } else { green.mix(0.5).stroke_width(2) };
            let edge = [(px as f64, rows[p].val_bpb), (x as f64, r.val_bpb)];
            chart.draw_series(LineSeries::new(edge.into_iter().filter(|(_, y)| in_range(*y)), style)).map_err(draw)?;
        }
    }
    let orange = RGBColor(230, 140, 20);
    // Labels run from the point toward the worse side, where the chart has room (the bests lie at the other edge).
    let toward_worse = match metric.goal {
        Goal::Lower => FontTransform::Rotate270,
        Goal::Higher => FontTransform::Rotate90,
    };
    for &(x, y, description, below) in kept.iter().filter(|k| in_range(k.1)) {
        let fill = if below { orange } else { green };
        chart
            .draw_series([Circle::new((x as f64, y), 11, dark.filled()), Circle::new((x as f64, y), 8, fill.filled())])
            .map_err(draw)?;
        let style = TextStyle::from(("sans-serif", 20).into_font())
            .color(&dark)
            .transform(toward_worse.clone())
            .pos(Pos::new(HPos::Left, VPos::Center));
        // Beside the point, clear of the step line's step.
        chart
            .draw_series([Text::new(format!("  {}", cut(description, 45)), (x as f64 + 0.2, y), style)])
            .map_err(draw)?;
    }
    root.present().with_context(|| format!("writing {}", out.display()))?;
    Ok(())
}

impl Comparison {
    /// Two charts side by side: each session's best so far against experiment number, and against hours. Sessions
    /// that measure different metrics share no axis: an error.
    pub fn plot(&self, out: &Path) -> Result<()> {
        let metric = match self.metrics()[..] {
            [metric] => metric,
            _ => bail!("the sessions measure different metrics: their curves share no axis, so no picture"),
        };
        let _ = register_font("sans-serif", FontStyle::Normal, dejavu::sans::regular());
        let values: Vec<f64> = self.sessions.iter().flat_map(|s| s.best_so_far.iter().map(|b| b.val_bpb)).collect();
        let (lo, hi) = values.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| (lo.min(*v), hi.max(*v)));
        let (lo, hi) = if lo.is_finite() { (lo, hi) } else { (0.0, 1.0) };
        let pad = ((hi - lo) * 0.1).max(1e-3 * hi.abs().max(1e-3));
        let max_x = self.sessions.iter().map(|s| s.experiments).max().unwrap_or(1) as f64;
        let max_h = self.sessions.iter().filter_map(|s| s.hours).fold(0.0, f64::max).max(1e-3);
        let palette = [RGBColor(31, 119, 180), RGBColor(214, 39, 40), RGBColor(44, 160, 44), RGBColor(148, 103, 189)];

        let root = BitMapBackend::new(out, PLOT_SIZE).into_drawing_area();
        let draw = |e| anyhow::anyhow!("drawing {}: {e:?}", out.display());
        root.fill(&WHITE).map_err(draw)?;
        let (left, right) = root.split_horizontally(PLOT_SIZE.0 / 2);
        for (area, by_hours) in [(left, false), (right, true)] {
            let x_max = if by_hours { max_h } else { max_x + 1.0 };
            let mut chart = ChartBuilder::on(&area)
                .caption(
                    if by_hours { "Best so far, by hours" } else { "Best so far, by experiment" },
                    ("sans-serif", 36),
                )
                .margin(30)
                .x_label_area_size(70)
                .y_label_area_size(120)
                .build_cartesian_2d(0f64..x_max, (lo - pad)..(hi + pad))
                .map_err(draw)?;
            let x_labels = |x: &f64| if by_hours { format!("{x:.1}") } else { format!("{x:.0}") };
            chart
                .configure_mesh()
                .x_label_formatter(&x_labels)
                .x_desc(if by_hours { "Hours" } else { "Experiment #" })
                .y_desc(axis_name(metric))
                .axis_desc_style(("sans-serif", 26))
                .label_style(("sans-serif", 22))
                .light_line_style(RGBColor(235, 235, 235))
                .draw()
                .map_err(draw)?;
            for (k, s) in self.sessions.iter().enumerate() {
                let color = palette[k % palette.len()];
                // A step line: flat until the next keep, then to it.
                let mut points: Vec<(f64, f64)> = Vec::new();
                for b in &s.best_so_far {
                    let Some(x) = (if by_hours { b.hours } else { Some(b.experiment as f64) }) else { continue };
                    if let Some(&(_, y)) = points.last() {
                        points.push((x, y));
                    }
                    points.push((x, b.val_bpb));
                }
                chart
                    .draw_series(LineSeries::new(points, color.stroke_width(3)))
                    .map_err(draw)?
                    .label(format!("{} (best {})", s.file, s.best.map_or("-".into(), |b| format!("{b:.6}"))))
                    .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 30, y)], color.stroke_width(3)));
            }
            chart
                .configure_series_labels()
                .label_font(("sans-serif", 22))
                .background_style(WHITE.mix(0.9))
                .border_style(RGBColor(200, 200, 200))
                .draw()
                .map_err(draw)?;
        }
        root.present().with_context(|| format!("writing {}", out.display()))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compare::totals;

    fn close(a: (f64, f64), b: (f64, f64)) -> bool {
        (a.0 - b.0).abs() < 1e-12 && (a.1 - b.1).abs() < 1e-12
    }

    #[test]
    fn the_range_runs_from_beyond_the_best_to_beyond_the_baseline_either_way() {
        // Lower: best 0.9, pad 15 % of 0.1.
        assert!(close(progress_range(1.0, &[0.95, 0.9], Goal::Lower), (0.885, 1.015)));
        // Higher: best 0.86 above the baseline 0.80, pad 15 % of 0.06.
        assert!(close(progress_range(0.80, &[0.85, 0.86], Goal::Higher), (0.791, 0.869)));
        // The same values under lower-is-better: nothing beat the baseline, the range is a sliver around it.
        assert!(close(progress_range(0.80, &[0.85, 0.86], Goal::Lower), (0.7992, 0.8008)));
        assert_eq!(axis_name(&Metric { name: "accuracy".into(), goal: Goal::Higher }), "accuracy (higher is better)");
    }

    fn rows(values: &[(Status, f64)]) -> Vec<Row> {
        crate::results::numbered_rows(values, 60.0)
    }

    #[test]
    fn a_higher_is_better_session_is_drawn_and_different_metrics_are_not_drawn_together() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("results.tsv");
        let accuracy = Metric { name: "accuracy".into(), goal: Goal::Higher };
        let values = [(Status::Keep, 0.80), (Status::Discard, 0.70), (Status::Keep, 0.85), (Status::Keep, 0.86)];
        results::create(&path).unwrap();
        results::append(&path, &rows(&values)).unwrap();
        let png = dir.path().join("progress.png");
        progress(&path, &png, &[], &accuracy, Search::Greedy).unwrap();
        assert!(std::fs::metadata(&png).unwrap().len() > 20_000);
        let session = |metric: &Metric| totals(&path, results::read(&path).unwrap(), metric.clone(), Search::Greedy);
        let same = Comparison { sessions: vec![session(&accuracy), session(&accuracy)] };
        same.plot(&dir.path().join("comparison.png")).unwrap();
        let mixed = Comparison { sessions: vec![session(&accuracy), session(&Metric::default())] };
        let err = mixed.plot(&dir.path().join("mixed.png")).unwrap_err().to_string();
        assert!(err.contains("different metrics"), "{err}");
        assert!(!dir.path().join("mixed.png").exists());
    }

    #[test]
    fn a_frontier_session_is_drawn_with_its_tree() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("results.tsv");
        // 1 the baseline; 2 and 3 kept from it; 4 kept from 2; 5 kept from 3. Each keep is the best so far, so the
        // running best is the same either way and only the tree's lines tell the pictures apart.
        let values =
            [(Status::Keep, 1.0), (Status::Keep, 0.95), (Status::Keep, 0.9), (Status::Keep, 0.85), (Status::Keep, 0.8)];
        let mut rows = rows(&values);
        for (r, parent) in rows.iter_mut().zip([None, Some(1), Some(1), Some(2), Some(3)]) {
            r.extra.as_mut().unwrap().parent = parent;
        }
        results::create(&path).unwrap();
        results::append(&path, &rows).unwrap();
        let metric = Metric::default();
        let (tree, path_only) = (dir.path().join("frontier.png"), dir.path().join("greedy.png"));
        progress(&path, &tree, &[], &metric, Search::Frontier).unwrap();
        progress(&path, &path_only, &[], &metric, Search::Greedy).unwrap();
        assert_eq!(
            tree::running_best(&rows, Search::Frontier, metric.goal),
            tree::running_best(&rows, Search::Greedy, metric.goal)
        );
        assert_ne!(std::fs::read(&tree).unwrap(), std::fs::read(&path_only).unwrap());
    }
}
