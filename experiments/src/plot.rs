//! Loss curves as PNG (plotters). Text needs a TrueType font: the first of a few common system
//! fonts is used; without one the curves are drawn without labels (and the report names the
//! series in order).

use std::path::Path;

use plotters::prelude::*;

const FONTS: [&str; 4] = [
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
    "/System/Library/Fonts/Supplemental/Arial.ttf",
];

/// A named curve: (label, (step, loss)).
pub type Series = (String, Vec<(usize, f64)>);

/// Register a system font for plotters once; whether one was found.
pub fn font() -> bool {
    static FOUND: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *FOUND.get_or_init(|| {
        for path in FONTS {
            if let Ok(bytes) = std::fs::read(path) {
                let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
                if plotters::style::register_font("sans-serif", FontStyle::Normal, bytes).is_ok() {
                    return true;
                }
            }
        }
        false
    })
}

/// Moving average over `w` points (the raw per-step loss is noisy).
fn smooth(points: &[(usize, f64)], w: usize) -> Vec<(f64, f64)> {
    (0..points.len())
        .map(|i| {
            let lo = i.saturating_sub(w / 2);
            let hi = (i + w / 2 + 1).min(points.len());
            let m = points[lo..hi].iter().map(|p| p.1).sum::<f64>() / (hi - lo) as f64;
            (points[i].0 as f64, m)
        })
        .collect()
}

/// Draw `series` (label, (step, loss)) into `path`, one panel per group of labels sharing a
/// prefix before the first `-` (e.g. `pretrain`, `finetune`).
pub fn loss_curves(
    path: &Path,
    title: &str,
    series: &[(String, Vec<(usize, f64)>)],
) -> Result<(), String> {
    let has_font = font();
    let mut groups: Vec<(String, Vec<&Series>)> = Vec::new();
    for s in series.iter().filter(|s| !s.1.is_empty()) {
        let key = s.0.split('-').next().unwrap_or("").to_string();
        match groups.iter_mut().find(|(k, _)| *k == key) {
            Some((_, v)) => v.push(s),
            None => groups.push((key, vec![s])),
        }
    }
    if groups.is_empty() {
        return Ok(());
    }
    let root = BitMapBackend::new(path, (640 * groups.len() as u32, 420)).into_drawing_area();
    let e = |e: &dyn std::fmt::Display| format!("{}: {e}", path.display());
    root.fill(&WHITE).map_err(|x| e(&x))?;
    let panels = root.split_evenly((1, groups.len()));
    for (panel, (key, group)) in panels.iter().zip(&groups) {
        let x_max = group
            .iter()
            .flat_map(|s| s.1.iter().map(|p| p.0))
            .max()
            .unwrap_or(1) as f64;
        let ys = group.iter().flat_map(|s| s.1.iter().map(|p| p.1));
        let (y_min, y_max) = ys.fold((f64::MAX, f64::MIN), |(a, b), y| (a.min(y), b.max(y)));
        let mut builder = ChartBuilder::on(panel);
        builder.margin(12);
        if has_font {
            builder
                .caption(format!("{title}: {key}"), ("sans-serif", 18))
                .x_label_area_size(32)
                .y_label_area_size(48);
        }
        let mut chart = builder
            .build_cartesian_2d(0.0..x_max.max(1.0), (y_min * 0.95)..(y_max * 1.02))
            .map_err(|x| e(&x))?;
        let mut mesh = chart.configure_mesh();
        if has_font {
            mesh.x_desc("step").y_desc("loss");
        } else {
            mesh.disable_x_axis().disable_y_axis();
        }
        mesh.draw().map_err(|x| e(&x))?;
        for (i, (label, points)) in group.iter().map(|s| (&s.0, &s.1)).enumerate() {
            let color = Palette99::pick(i).to_rgba();
            let w = (points.len() / 25).max(1);
            let line = chart
                .draw_series(LineSeries::new(smooth(points, w), color.stroke_width(2)))
                .map_err(|x| e(&x))?;
            if has_font {
                line.label(label.as_str()).legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 16, y)], color.stroke_width(2))
                });
            }
        }
        if has_font {
            chart
                .configure_series_labels()
                .background_style(WHITE.mix(0.8))
                .border_style(BLACK)
                .draw()
                .map_err(|x| e(&x))?;
        }
    }
    root.present().map_err(|x| e(&x))
}
