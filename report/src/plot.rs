//! The pictures: `progress.png` of one session ([`progress`]) and `comparison.png` of several
//! ([`Comparison::plot`]), drawn with plotters in DejaVu Sans. Behind the `plot` feature (on by default), so that
//! a crate that only reads and writes the files (the research loop, the dashboard) does not link plotters.

use std::path::Path;

use anyhow::{Context, Result};
use plotters::prelude::*;
use plotters::style::register_font;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use crate::compare::Comparison;
use crate::noise::NoiseEstimate;
use crate::report::{kept_gains, KeptGain};
use crate::results::{self, Row, Status};

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

/// progress.png: val_bpb by experiment (crashes and reruns left out, the rest numbered in order): discards
/// as small grey dots, keeps as larger green dots labelled with their description (orange where the gain is
/// smaller than 2σ of the measured noise), the running best as a green step line. The y range runs from a
/// little below the best to a little above the baseline.
pub fn progress(path: &Path, out: &Path, noise: &[NoiseEstimate]) -> Result<()> {
    let rows = results::read(path)?.rows;
    let points: Vec<(usize, &Row)> = rows
        .iter()
        .filter(|r| r.status == Status::Keep || r.status == Status::Discard)
        .enumerate()
        .map(|(i, r)| (i + 1, r))
        .collect();
    let below_noise: Vec<bool> = kept_gains(&rows, noise).iter().map(KeptGain::below_noise).collect();
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
    let best = kept.iter().map(|k| k.1).fold(f64::INFINITY, f64::min).min(baseline);
    let pad = ((baseline - best) * 0.15).max(1e-3 * baseline.abs().max(1e-3));
    let (y_lo, y_hi) = (best - pad, baseline + pad);
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
        .y_desc("Validation BPB (lower is better)")
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
    // Running best ([`results::running_best`]): flat until the next keep, then to it.
    let green = RGBColor(46, 160, 67);
    let mut steps = Vec::new();
    let mut current: Option<f64> = None;
    for &(x, y, _, _) in &kept {
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
    let orange = RGBColor(230, 140, 20);
    for &(x, y, description, below) in kept.iter().filter(|k| in_range(k.1)) {
        let fill = if below { orange } else { green };
        chart
            .draw_series([Circle::new((x as f64, y), 11, dark.filled()), Circle::new((x as f64, y), 8, fill.filled())])
            .map_err(draw)?;
        let style = TextStyle::from(("sans-serif", 20).into_font())
            .color(&dark)
            .transform(FontTransform::Rotate270)
            .pos(Pos::new(HPos::Left, VPos::Center));
        // Beside the point, clear of the step line's drop.
        chart
            .draw_series([Text::new(format!("  {}", cut(description, 45)), (x as f64 + 0.2, y), style)])
            .map_err(draw)?;
    }
    root.present().with_context(|| format!("writing {}", out.display()))?;
    Ok(())
}

impl Comparison {
    /// Two charts side by side: each session's best so far against experiment number, and against hours.
    pub fn plot(&self, out: &Path) -> Result<()> {
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
                .y_desc("Validation BPB (lower is better)")
                .axis_desc_style(("sans-serif", 26))
                .label_style(("sans-serif", 22))
                .light_line_style(RGBColor(235, 235, 235))
                .draw()
                .map_err(draw)?;
            for (k, s) in self.sessions.iter().enumerate() {
                let color = palette[k % palette.len()];
                // A step line: flat until the next keep, then down to it.
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
