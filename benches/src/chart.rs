//! Charts of benchmark results, drawn with plotters as SVG (text is laid out by the viewer, so
//! no font library is needed to build or draw them).

use anyhow::{anyhow, Result};
use plotters::prelude::*;
use std::path::Path;

/// One figure of a side-by-side comparison: its name and meterstream's cost over each peer's
/// (below 1 is better for meterstream).
#[derive(Debug, Clone)]
pub struct Ratio {
    /// The figure, e.g. "bytes per point".
    pub figure: String,
    /// (peer, ratio) in the order of the chart's legend.
    pub ratios: Vec<(String, f64)>,
}

const COLOURS: [RGBColor; 4] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
];

fn err<E: std::fmt::Debug>(e: E) -> anyhow::Error {
    anyhow!("drawing the chart: {e:?}")
}

/// Draws one horizontal bar per figure and peer, on a logarithmic axis of ratios with a line at
/// 1.0: bars left of it are figures where meterstream wins.
pub fn ratio_chart(path: &Path, title: &str, rows: &[Ratio]) -> Result<()> {
    let peers: Vec<&str> = rows
        .first()
        .map(|r| r.ratios.iter().map(|(p, _)| p.as_str()).collect())
        .unwrap_or_default();
    let height = 120 + rows.len() as u32 * 34;
    let root = SVGBackend::new(path, (1100, height)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let finite = rows
        .iter()
        .flat_map(|r| r.ratios.iter().map(|(_, v)| *v))
        .filter(|v| v.is_finite() && *v > 0.0);
    let (lo, hi) = finite.fold((0.5f64, 2.0f64), |(lo, hi), v| (lo.min(v), hi.max(v)));
    let (lo, hi) = (lo / 1.5, hi * 1.5);
    let n = rows.len() as f64;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(340)
        .build_cartesian_2d((lo..hi).log_scale(), 0f64..n)
        .map_err(err)?;
    chart
        .configure_mesh()
        .disable_y_mesh()
        .y_labels(0)
        .x_desc("meterstream's cost / the peer's (log scale; left of 1 = meterstream better)")
        .x_label_formatter(&|v| format!("{v}"))
        .draw()
        .map_err(err)?;
    let bar = 0.8 / peers.len().max(1) as f64;
    for (p, peer) in peers.iter().enumerate() {
        let colour = COLOURS[p % COLOURS.len()];
        let bars = rows.iter().enumerate().filter_map(|(i, r)| {
            let v = r.ratios.get(p)?.1;
            if !(v.is_finite() && v > 0.0) {
                return None;
            }
            // The first figure on top, and within it the first peer on top.
            let y0 = n - i as f64 - 0.1 - (p + 1) as f64 * bar;
            Some(Rectangle::new([(lo, y0), (v, y0 + bar)], colour.filled()))
        });
        chart
            .draw_series(bars)
            .map_err(err)?
            .label(*peer)
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 14, y + 5)], colour.filled()));
    }
    chart
        .draw_series(LineSeries::new(
            [(1.0, 0.0), (1.0, n)],
            BLACK.stroke_width(2),
        ))
        .map_err(err)?;
    let label = ("sans-serif", 14).into_font().color(&BLACK);
    for (i, r) in rows.iter().enumerate() {
        let (_, y) = chart.backend_coord(&(lo, n - i as f64 - 0.5));
        let text = Text::new(
            r.figure.clone(),
            (10, y),
            label.clone().pos(plotters::style::text_anchor::Pos::new(
                plotters::style::text_anchor::HPos::Left,
                plotters::style::text_anchor::VPos::Center,
            )),
        );
        root.draw(&text).map_err(err)?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK)
        .draw()
        .map_err(err)?;
    root.present().map_err(err)?;
    Ok(())
}

/// One panel of a scaling chart: a figure, and its value for each store at each x.
#[derive(Debug, Clone)]
pub struct Panel {
    /// The figure and its unit, e.g. "resident memory, MB".
    pub figure: String,
    /// (store, value at each x); a missing value is NaN.
    pub lines: Vec<(String, Vec<f64>)>,
}

/// Draws one panel per figure in a grid of `columns`, each with a line per store over `xs` on a
/// logarithmic x axis; the y axis is logarithmic when the figure spans more than a factor of 20.
pub fn scaling_chart(
    path: &Path,
    title: &str,
    x_desc: &str,
    xs: &[f64],
    panels: &[Panel],
    columns: usize,
) -> Result<()> {
    let columns = columns.max(1);
    let rows = panels.len().div_ceil(columns).max(1);
    let root =
        SVGBackend::new(path, (420 * columns as u32, 40 + 320 * rows as u32)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let root = root.titled(title, ("sans-serif", 22)).map_err(err)?;
    let areas = root.split_evenly((rows, columns));
    let (x0, x1) = xs
        .iter()
        .fold((f64::MAX, f64::MIN), |(a, b), x| (a.min(*x), b.max(*x)));
    let (x0, x1) = (x0 / 1.3, x1 * 1.3);
    for (panel, area) in panels.iter().zip(areas) {
        let values = panel
            .lines
            .iter()
            .flat_map(|(_, v)| v.iter().copied())
            .filter(|v| v.is_finite() && *v > 0.0);
        let (lo, hi) = values.fold((f64::MAX, f64::MIN), |(a, b), v| (a.min(v), b.max(v)));
        let (lo, hi) = if lo > hi { (0.1, 10.0) } else { (lo, hi) };
        // A logarithmic axis only for figures that span more than a factor of 20; a narrower
        // one would show no labels.
        if hi / lo > 20.0 {
            panel_chart(
                &area,
                panel,
                x_desc,
                xs,
                x0..x1,
                (lo / 1.5..hi * 1.5).log_scale(),
            )?;
        } else {
            panel_chart(&area, panel, x_desc, xs, x0..x1, 0.0..hi * 1.15)?;
        }
    }
    root.present().map_err(err)?;
    Ok(())
}

/// One panel of [`scaling_chart`]: the x axis logarithmic, the y axis as given.
fn panel_chart<DB, Y>(
    area: &DrawingArea<DB, plotters::coord::Shift>,
    panel: &Panel,
    x_desc: &str,
    xs: &[f64],
    x: std::ops::Range<f64>,
    y: Y,
) -> Result<()>
where
    DB: DrawingBackend,
    Y: plotters::coord::ranged1d::AsRangedCoord<Value = f64>,
    Y::CoordDescType: plotters::coord::ranged1d::ValueFormatter<f64>,
{
    let mut chart = ChartBuilder::on(area)
        .caption(&panel.figure, ("sans-serif", 15))
        .margin(8)
        .x_label_area_size(34)
        .y_label_area_size(56)
        .build_cartesian_2d(x.log_scale(), y)
        .map_err(err)?;
    chart
        .configure_mesh()
        .light_line_style(TRANSPARENT)
        .x_desc(x_desc)
        .x_label_formatter(&|v| compact(*v))
        .y_label_formatter(&|v| compact(*v))
        .draw()
        .map_err(err)?;
    for (s, (store, ys)) in panel.lines.iter().enumerate() {
        let colour = COLOURS[s % COLOURS.len()];
        let pts: Vec<(f64, f64)> = xs
            .iter()
            .zip(ys)
            .filter(|(_, y)| y.is_finite() && **y > 0.0)
            .map(|(x, y)| (*x, *y))
            .collect();
        chart
            .draw_series(LineSeries::new(pts.clone(), colour.stroke_width(2)))
            .map_err(err)?
            .label(store.as_str())
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 16, y)], colour.stroke_width(2))
            });
        chart
            .draw_series(pts.into_iter().map(|p| Circle::new(p, 3, colour.filled())))
            .map_err(err)?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .label_font(("sans-serif", 11))
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()
        .map_err(err)?;
    Ok(())
}

/// 1500 → "1.5k", 2e6 → "2M", 0.25 → "0.25".
fn compact(v: f64) -> String {
    let (v, suffix) = match v.abs() {
        a if a >= 1e9 => (v / 1e9, "G"),
        a if a >= 1e6 => (v / 1e6, "M"),
        a if a >= 1e3 => (v / 1e3, "k"),
        _ => (v, ""),
    };
    let s = format!("{v:.2}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    format!("{s}{suffix}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compact_numbers() {
        assert_eq!(compact(1500.0), "1.5k");
        assert_eq!(compact(2e6), "2M");
        assert_eq!(compact(0.25), "0.25");
        assert_eq!(compact(100.0), "100");
    }

    #[test]
    fn charts_name_every_figure_and_store() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("r.svg");
        let rows = vec![
            Ratio {
                figure: "bytes per point".into(),
                ratios: vec![("VictoriaMetrics".into(), 0.9), ("InfluxDB".into(), 0.2)],
            },
            Ratio {
                figure: "ingest, points/s".into(),
                ratios: vec![
                    ("VictoriaMetrics".into(), f64::NAN),
                    ("InfluxDB".into(), 3.0),
                ],
            },
        ];
        ratio_chart(&p, "side by side", &rows).unwrap();
        let svg = std::fs::read_to_string(&p).unwrap();
        for s in [
            "side by side",
            "bytes per point",
            "ingest, points/s",
            "VictoriaMetrics",
            "InfluxDB",
        ] {
            assert!(svg.contains(s), "{s} missing");
        }
        // A bar for each finite ratio, and a swatch in the legend for each peer.
        assert_eq!(svg.matches(r##"fill="#1F77B4""##).count(), 1 + 1, "{svg}");
        assert_eq!(svg.matches(r##"fill="#FF7F0E""##).count(), 2 + 1, "{svg}");

        let p = dir.path().join("s.svg");
        let panels = vec![Panel {
            figure: "resident memory, MB".into(),
            lines: vec![
                ("meterstream".into(), vec![100.0, 300.0, 900.0]),
                ("VictoriaMetrics".into(), vec![80.0, f64::NAN, 700.0]),
            ],
        }];
        scaling_chart(&p, "fleet", "meters", &[100.0, 1000.0, 10000.0], &panels, 2).unwrap();
        let svg = std::fs::read_to_string(&p).unwrap();
        for s in [
            "fleet",
            "resident memory, MB",
            "meterstream",
            "VictoriaMetrics",
        ] {
            assert!(svg.contains(s), "{s} missing");
        }
        // Five points with values.
        assert_eq!(svg.matches("<circle").count(), 5, "{svg}");
    }
}
