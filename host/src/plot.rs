//! Pictures of runs, samples and benchmarks, as PNG and SVG (`spiketile plot`).
//!
//! Every picture is a [`Picture`]: it draws itself on any plotters backend, and [`save`] draws it
//! twice, into an RGB buffer (encoded as `PREFIX.png` by the `png` crate) and into an SVG string
//! (`PREFIX.svg`), both written atomically. Text uses Noto Sans (Apache-2.0), compiled into the
//! binary from the `ttf-noto-sans` crate, so no system font or font library is needed.
//!
//! - [`MetricsPicture`]: loss, train/test accuracy and samples/s per epoch of a `--metrics` file;
//! - [`RasterPicture`]: input, hidden and output spikes of one sample, and the output counts;
//! - [`SweepPicture`]: throughput against the swept variable of a `bench --sweep` CSV.

use crate::atomic::write_atomic;
use anyhow::{anyhow, bail, ensure, Context, Result};
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use plotters::style::{register_font, FontStyle};
use serde::Deserialize;
use std::path::{Path, PathBuf};
use std::sync::Once;

const FONT: &str = "sans-serif";
const TRAIN: RGBColor = RGBColor(31, 119, 180);
const TEST: RGBColor = RGBColor(255, 127, 14);
const SPEED: RGBColor = RGBColor(44, 160, 44);
const SPIKE: RGBColor = RGBColor(20, 20, 20);
const LABEL: RGBColor = RGBColor(44, 160, 44);
const WRONG: RGBColor = RGBColor(214, 39, 40);
const BAR: RGBColor = RGBColor(160, 160, 160);

/// Something drawn on a plotters drawing area.
pub trait Picture {
    /// Size in pixels.
    fn size(&self) -> (u32, u32);
    /// Draws the picture on `root` (already white).
    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Result<()>;
}

/// Turns plotters' errors into anyhow's.
trait Drawn<T> {
    fn drawn(self) -> Result<T>;
}

impl<T, E: std::fmt::Display> Drawn<T> for std::result::Result<T, E> {
    fn drawn(self) -> Result<T> {
        self.map_err(|e| anyhow!("drawing: {e}"))
    }
}

fn register_fonts() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // The bundled font is a valid TrueType file; a failure here would be a build problem.
        if register_font(FONT, FontStyle::Normal, ttf_noto_sans::REGULAR).is_err() {
            eprintln!("warning: the bundled font could not be loaded; text will be missing");
        }
    });
}

/// `PREFIX.png` and `PREFIX.svg` (a `.png`/`.svg` extension on the prefix is dropped).
pub fn output_paths(prefix: &Path) -> (PathBuf, PathBuf) {
    let base = match prefix.extension().and_then(|e| e.to_str()) {
        Some("png" | "svg") => prefix.with_extension(""),
        _ => prefix.to_path_buf(),
    };
    let with = |ext: &str| {
        let mut s = base.as_os_str().to_owned();
        s.push(ext);
        PathBuf::from(s)
    };
    (with(".png"), with(".svg"))
}

/// Draws `pic` into `PREFIX.png` and `PREFIX.svg`; returns the two paths.
pub fn save(pic: &impl Picture, prefix: &Path) -> Result<(PathBuf, PathBuf)> {
    register_fonts();
    let (png_path, svg_path) = output_paths(prefix);
    if let Some(dir) = png_path.parent().filter(|d| !d.as_os_str().is_empty()) {
        ensure!(
            dir.is_dir(),
            "cannot write {}: no directory {}",
            png_path.display(),
            dir.display()
        );
    }
    let (w, h) = pic.size();
    let mut rgb = vec![0u8; w as usize * h as usize * 3];
    {
        let root = BitMapBackend::with_buffer(&mut rgb, (w, h)).into_drawing_area();
        root.fill(&WHITE).drawn()?;
        pic.draw(&root)?;
        root.present().drawn()?;
    }
    let mut png_bytes = Vec::new();
    {
        let mut enc = png::Encoder::new(&mut png_bytes, w, h);
        enc.set_color(png::ColorType::Rgb);
        enc.set_depth(png::BitDepth::Eight);
        let mut writer = enc.write_header().context("encoding PNG")?;
        writer.write_image_data(&rgb).context("encoding PNG")?;
    }
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (w, h)).into_drawing_area();
        root.fill(&WHITE).drawn()?;
        pic.draw(&root)?;
        root.present().drawn()?;
    }
    write_atomic(&png_path, &png_bytes)
        .with_context(|| format!("writing {}", png_path.display()))?;
    write_atomic(&svg_path, svg.as_bytes())
        .with_context(|| format!("writing {}", svg_path.display()))?;
    Ok((png_path, svg_path))
}

/// A range around `lo..hi` with some room, never empty.
fn padded(lo: f64, hi: f64, pad: f64) -> std::ops::Range<f64> {
    if !(lo.is_finite() && hi.is_finite()) {
        return 0.0..1.0;
    }
    let span = (hi - lo).abs();
    let room = if span > 0.0 { span * pad } else { lo.abs().max(1.0) * 0.1 };
    (lo - room)..(hi + room)
}

/// Tick labels at whole numbers only.
fn integer_label(x: &f64) -> String {
    if (x - x.round()).abs() < 1e-6 {
        format!("{x:.0}")
    } else {
        String::new()
    }
}

/// A tick label without trailing zeros.
fn short_number(y: f64) -> String {
    let s = format!("{y:.3}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    if s == "-0" {
        "0".into()
    } else {
        s.into()
    }
}

/// One line of a `--metrics` file (unknown fields ignored).
#[derive(Clone, Debug, Deserialize)]
pub struct MetricsRow {
    /// Epoch, from 1.
    pub epoch: f64,
    /// Mean training loss.
    pub loss: f64,
    /// Training accuracy.
    pub train_acc: f64,
    /// Test accuracy, if any.
    #[serde(default)]
    pub test_acc: Option<f64>,
    /// Training throughput.
    pub samples_per_s: f64,
}

/// Reads a JSON-lines metrics file (`train --metrics`).
pub fn read_metrics(path: &Path) -> Result<Vec<MetricsRow>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading metrics {}", path.display()))?;
    let mut rows = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let row: MetricsRow = serde_json::from_str(line).with_context(|| {
            format!("{} line {}: not a metrics line of `train --metrics`", path.display(), i + 1)
        })?;
        rows.push(row);
    }
    ensure!(!rows.is_empty(), "{}: no metrics lines", path.display());
    Ok(rows)
}

/// One panel of the metrics picture: caption, y description, y range, named lines.
type Panel<'a> =
    (&'a str, &'a str, std::ops::Range<f64>, Vec<(&'a str, RGBColor, &'a Vec<(f64, f64)>)>);

/// Loss, accuracy and throughput per epoch.
#[derive(Clone, Debug)]
pub struct MetricsPicture {
    /// The epochs.
    pub rows: Vec<MetricsRow>,
    /// Title (e.g. the file name).
    pub title: String,
}

impl Picture for MetricsPicture {
    fn size(&self) -> (u32, u32) {
        (1500, 480)
    }

    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Result<()> {
        let root = root.titled(&self.title, (FONT, 26)).drawn()?;
        let panels = root.split_evenly((1, 3));
        let epochs: Vec<f64> = self.rows.iter().map(|r| r.epoch).collect();
        let xr = padded(epochs[0], *epochs.last().unwrap_or(&1.0), 0.05);
        let series = |f: &dyn Fn(&MetricsRow) -> Option<f64>| -> Vec<(f64, f64)> {
            self.rows.iter().filter_map(|r| f(r).map(|y| (r.epoch, y))).collect()
        };
        let loss = series(&|r| Some(r.loss));
        let train = series(&|r| Some(100.0 * r.train_acc));
        let test = series(&|r| r.test_acc.map(|a| 100.0 * a));
        let speed = series(&|r| Some(r.samples_per_s));
        let max_loss = loss.iter().map(|p| p.1).fold(0.0f64, f64::max);
        let max_speed = speed.iter().map(|p| p.1).fold(0.0f64, f64::max);
        let min_acc = train.iter().chain(&test).map(|p| p.1).fold(100.0f64, f64::min);
        let acc_lo = (min_acc / 10.0).floor() * 10.0;
        let charts: [Panel<'_>; 3] = [
            (
                "training loss",
                "loss",
                0.0..(max_loss * 1.1).max(1e-3),
                vec![("train", TRAIN, &loss)],
            ),
            (
                "accuracy",
                "accuracy (%)",
                acc_lo.min(90.0)..100.5,
                vec![("train", TRAIN, &train), ("test", TEST, &test)],
            ),
            (
                "training throughput",
                "samples / s",
                0.0..(max_speed * 1.15).max(1.0),
                vec![("samples/s", SPEED, &speed)],
            ),
        ];
        for (panel, (caption, ydesc, yr, lines)) in panels.iter().zip(charts) {
            let mut chart = ChartBuilder::on(panel)
                .caption(caption, (FONT, 22))
                .margin(12)
                .x_label_area_size(45)
                .y_label_area_size(70)
                .build_cartesian_2d(xr.clone(), yr)
                .drawn()?;
            chart
                .configure_mesh()
                .x_desc("epoch")
                .y_desc(ydesc)
                .x_labels(epochs.len().clamp(2, 12))
                .x_label_formatter(&integer_label)
                .y_label_formatter(&|y| short_number(*y))
                .label_style((FONT, 15))
                .axis_desc_style((FONT, 17))
                .light_line_style(WHITE.mix(0.0))
                .draw()
                .drawn()?;
            let several = lines.iter().filter(|l| !l.2.is_empty()).count() > 1;
            for (name, color, pts) in lines {
                if pts.is_empty() {
                    continue;
                }
                let style = ShapeStyle::from(color).stroke_width(2);
                let drawn =
                    chart.draw_series(LineSeries::new(pts.iter().copied(), style)).drawn()?;
                if several {
                    drawn.label(name).legend(move |(x, y)| {
                        PathElement::new(vec![(x, y), (x + 22, y)], color.stroke_width(3))
                    });
                }
                chart
                    .draw_series(PointSeries::of_element(
                        pts.iter().copied(),
                        4,
                        ShapeStyle::from(color).filled(),
                        &|c, s, st| Circle::new(c, s, st),
                    ))
                    .drawn()?;
            }
            if several {
                chart
                    .configure_series_labels()
                    .position(SeriesLabelPosition::LowerRight)
                    .label_font((FONT, 16))
                    .background_style(WHITE.mix(0.85))
                    .border_style(BLACK.mix(0.4))
                    .draw()
                    .drawn()?;
            }
        }
        Ok(())
    }
}

/// One layer of a raster.
#[derive(Clone, Debug)]
pub struct RasterLayer {
    /// `input`, `hidden1`, ..., `output`.
    pub name: String,
    /// Neurons.
    pub width: usize,
    /// `[t] -> ids`.
    pub spikes: Vec<Vec<u16>>,
}

/// Spikes of one sample through a network, and its output counts.
#[derive(Clone, Debug)]
pub struct RasterPicture {
    /// Input, hidden layers, output.
    pub layers: Vec<RasterLayer>,
    /// Output spike counts per class.
    pub counts: Vec<f32>,
    /// The sample's label.
    pub label: usize,
    /// The predicted class.
    pub prediction: usize,
    /// Title.
    pub title: String,
}

impl Picture for RasterPicture {
    fn size(&self) -> (u32, u32) {
        (1500, 1000)
    }

    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Result<()> {
        let root = root.titled(&self.title, (FONT, 26)).drawn()?;
        let (left, right) = root.split_horizontally(1080);
        // Row heights: by width, within bounds, so that small layers stay readable.
        let weights: Vec<f64> =
            self.layers.iter().map(|l| (l.width as f64).sqrt().clamp(10.0, 30.0)).collect();
        let total: f64 = weights.iter().sum();
        let (_, h) = left.dim_in_pixel();
        let mut breaks = Vec::new();
        let mut acc = 0.0;
        for w in &weights[..weights.len().saturating_sub(1)] {
            acc += w;
            breaks.push((acc / total * h as f64) as i32);
        }
        let rows = left.split_by_breakpoints::<i32, i32, _, _>(Vec::<i32>::new(), breaks);
        let t_steps = self.layers.first().map_or(1, |l| l.spikes.len()).max(1);
        for (area, layer) in rows.iter().zip(&self.layers) {
            let n_spikes: usize = layer.spikes.iter().map(Vec::len).sum();
            let caption = format!(
                "{}: {} neurons, {} spikes ({:.2}% of neuron-steps)",
                layer.name,
                layer.width,
                n_spikes,
                100.0 * n_spikes as f64 / (layer.width * t_steps).max(1) as f64
            );
            let mut chart = ChartBuilder::on(area)
                .caption(caption, (FONT, 18))
                .margin(8)
                .x_label_area_size(35)
                .y_label_area_size(60)
                .build_cartesian_2d(0.0..t_steps as f64, 0.0..layer.width as f64)
                .drawn()?;
            chart
                .configure_mesh()
                .disable_mesh()
                .x_desc("time step")
                .y_desc("neuron")
                .y_labels(5)
                .x_label_formatter(&integer_label)
                .y_label_formatter(&integer_label)
                .label_style((FONT, 14))
                .axis_desc_style((FONT, 15))
                .draw()
                .drawn()?;
            let style = ShapeStyle::from(SPIKE).filled();
            chart
                .draw_series(layer.spikes.iter().enumerate().flat_map(|(t, ids)| {
                    ids.iter().map(move |&i| {
                        let (t, i) = (t as f64, i as f64);
                        Rectangle::new([(t + 0.1, i), (t + 0.9, i + 1.0)], style)
                    })
                }))
                .drawn()?;
        }
        let classes = self.counts.len().max(1);
        let max_count = self.counts.iter().copied().fold(0.0f32, f32::max).max(1.0) as f64;
        let mut chart = ChartBuilder::on(&right)
            .caption("output spike counts", (FONT, 20))
            .margin(12)
            .margin_top(70)
            .x_label_area_size(45)
            .y_label_area_size(50)
            .build_cartesian_2d(0.0..max_count * 1.15, -0.5..classes as f64 - 0.5)
            .drawn()?;
        chart
            .configure_mesh()
            .disable_mesh()
            .x_desc("spikes")
            .y_desc("class")
            .y_labels(classes.min(40))
            .y_label_formatter(&integer_label)
            .x_label_formatter(&integer_label)
            .label_style((FONT, 14))
            .axis_desc_style((FONT, 15))
            .draw()
            .drawn()?;
        let (label, pred) = (self.label, self.prediction);
        chart
            .draw_series(self.counts.iter().enumerate().map(|(k, &c)| {
                let color = if k == label {
                    LABEL
                } else if k == pred {
                    WRONG
                } else {
                    BAR
                };
                let y = k as f64;
                Rectangle::new([(0.0, y - 0.35), (c as f64, y + 0.35)], color.filled())
            }))
            .drawn()?;
        let verdict = if label == pred { "correct" } else { "wrong" };
        let note = [
            (format!("label {label} (green)"), LABEL),
            (format!("predicted {pred}: {verdict}"), if label == pred { LABEL } else { WRONG }),
        ];
        for (i, (text, color)) in note.iter().enumerate() {
            right
                .draw(&Text::new(
                    text.clone(),
                    (70, 36 + 24 * i as i32),
                    TextStyle::from((FONT, 17)).color(color),
                ))
                .drawn()?;
        }
        Ok(())
    }
}

/// One point of a `bench --sweep` CSV.
#[derive(Clone, Debug, PartialEq)]
pub struct SweepPoint {
    /// The swept value.
    pub value: f64,
    /// Training samples per second.
    pub samples_per_s: f64,
    /// Hidden-layer activity measured, if the column is there.
    pub hidden_activity: Option<f64>,
}

/// Reads a `bench --sweep ... --out FILE.csv` file: `(sweep name, points)`.
pub fn read_sweep(path: &Path) -> Result<(String, Vec<SweepPoint>)> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading sweep {}", path.display()))?;
    let mut lines = text.lines().filter(|l| !l.trim().is_empty());
    let header: Vec<&str> = lines.next().context("empty file")?.split(',').map(str::trim).collect();
    let col = |name: &str| header.iter().position(|h| *h == name);
    let (Some(sweep_c), Some(value_c), Some(speed_c)) =
        (col("sweep"), col("value"), col("samples_per_s"))
    else {
        bail!(
            "{}: not a `bench --sweep` CSV (needs columns sweep, value, samples_per_s)",
            path.display()
        );
    };
    let act_c = col("hidden_activity");
    let mut name = String::new();
    let mut points = Vec::new();
    for (i, line) in lines.enumerate() {
        let f: Vec<&str> = line.split(',').map(str::trim).collect();
        let get = |c: usize| {
            f.get(c)
                .copied()
                .with_context(|| format!("{} row {}: too few fields", path.display(), i + 2))
        };
        let num = |c: usize| -> Result<f64> {
            let s = get(c)?;
            s.parse::<f64>()
                .with_context(|| format!("{} row {}: {s:?} is not a number", path.display(), i + 2))
        };
        name = get(sweep_c)?.to_string();
        points.push(SweepPoint {
            value: num(value_c)?,
            samples_per_s: num(speed_c)?,
            hidden_activity: act_c.and_then(|c| f.get(c)?.parse().ok()),
        });
    }
    ensure!(!points.is_empty(), "{}: no rows", path.display());
    Ok((name, points))
}

/// Throughput against the swept variable.
#[derive(Clone, Debug)]
pub struct SweepPicture {
    /// `Activity`, `Hidden` or `Threads` (as in the CSV).
    pub sweep: String,
    /// The points.
    pub points: Vec<SweepPoint>,
    /// Title.
    pub title: String,
}

impl SweepPicture {
    fn x_desc(&self) -> &'static str {
        match self.sweep.to_ascii_lowercase().as_str() {
            "activity" => "input activity (% of channels spiking per step)",
            "hidden" => "hidden layer width (neurons)",
            "threads" => "worker threads",
            _ => "swept value",
        }
    }

    fn x_of(&self, v: f64) -> f64 {
        if self.sweep.eq_ignore_ascii_case("activity") {
            100.0 * v
        } else {
            v
        }
    }
}

impl Picture for SweepPicture {
    fn size(&self) -> (u32, u32) {
        (1000, 620)
    }

    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Result<()> {
        let root = root.titled(&self.title, (FONT, 24)).drawn()?;
        let pts: Vec<(f64, f64)> =
            self.points.iter().map(|p| (self.x_of(p.value), p.samples_per_s)).collect();
        let (lo, hi) = pts.iter().fold((f64::MAX, f64::MIN), |(a, b), p| (a.min(p.0), b.max(p.0)));
        let max_y = pts.iter().map(|p| p.1).fold(0.0f64, f64::max);
        let mut chart = ChartBuilder::on(&root)
            .margin(20)
            .x_label_area_size(55)
            .y_label_area_size(80)
            .build_cartesian_2d(padded(lo, hi, 0.05), 0.0..(max_y * 1.2).max(1.0))
            .drawn()?;
        chart
            .configure_mesh()
            .x_desc(self.x_desc())
            .y_desc("training samples / s")
            .x_label_formatter(&|x| short_number(*x))
            .y_label_formatter(&|y| short_number(*y))
            .label_style((FONT, 16))
            .axis_desc_style((FONT, 18))
            .light_line_style(WHITE.mix(0.0))
            .draw()
            .drawn()?;
        let style = ShapeStyle::from(TRAIN).stroke_width(2);
        chart.draw_series(LineSeries::new(pts.iter().copied(), style)).drawn()?;
        chart
            .draw_series(PointSeries::of_element(
                pts.iter().copied(),
                5,
                ShapeStyle::from(TRAIN).filled(),
                &|c, s, st| Circle::new(c, s, st),
            ))
            .drawn()?;
        // Each point labelled with its throughput (and the hidden activity it ran at); the last
        // point's label ends at the point, so that it stays inside the picture.
        let last = pts.len().saturating_sub(1);
        let labels = self.points.iter().zip(&pts).enumerate().map(|(i, (p, &(x, y)))| {
            let act =
                p.hidden_activity.map_or(String::new(), |a| format!(" (hidden {:.1}%)", 100.0 * a));
            let dy = if i % 2 == 0 { -26 } else { 12 };
            let (dx, align) =
                if i == last && i > 0 { (10, HPos::Right) } else { (-30, HPos::Left) };
            let style = TextStyle::from((FONT, 15).into_font()).pos(Pos::new(align, VPos::Top));
            EmptyElement::at((x, y)) + Text::new(format!("{y:.0}{act}"), (dx, dy), style)
        });
        chart.draw_series(labels).drawn()?;
        Ok(())
    }
}
