//! `pixel_head.png`: held-out world images with, for each word that names an object, the
//! object's true centre (ring) and the head's point (filled dot, joined to its centre by a
//! line), coloured by word kind.

use std::collections::BTreeMap;
use std::path::Path;

use plotters::prelude::*;
use vlalign_data::WordKind;

use crate::seed_ideas_pixel::Placed;

/// Pixels per image side in the picture.
const TILE: u32 = 320;
/// Images per row.
const COLUMNS: u32 = 3;
/// Height of the legend strip.
const LEGEND: u32 = 28;

fn colour(kind: WordKind) -> RGBColor {
    match kind {
        WordKind::Color => RGBColor(230, 25, 75),
        WordKind::Shape => RGBColor(0, 130, 200),
        WordKind::Size => RGBColor(245, 130, 48),
        WordKind::Position => RGBColor(60, 180, 75),
        WordKind::YesNo => RGBColor(145, 30, 180),
        _ => RGBColor(90, 90, 90),
    }
}

/// Draw `placed` (grouped by record id, in order) onto the records' images found through
/// `image_of` (record id → image path) into `path`.
pub fn draw(
    path: &Path,
    image_of: &BTreeMap<String, std::path::PathBuf>,
    placed: &[Placed],
) -> Result<(), String> {
    let mut ids: Vec<&str> = Vec::new();
    for p in placed {
        if ids.last() != Some(&p.id.as_str()) {
            ids.push(&p.id);
        }
    }
    if ids.is_empty() {
        return Ok(());
    }
    let rows = (ids.len() as u32).div_ceil(COLUMNS);
    let (w, h) = (TILE * COLUMNS.min(ids.len() as u32), TILE * rows + LEGEND);
    let mut canvas = image::RgbImage::from_pixel(w, h, image::Rgb([255, 255, 255]));
    for (i, id) in ids.iter().enumerate() {
        let file = image_of
            .get(*id)
            .ok_or_else(|| format!("no image for held-out record {id}"))?;
        let img = image::open(file)
            .map_err(|e| format!("{}: {e}", file.display()))?
            .resize_exact(TILE, TILE, image::imageops::FilterType::Nearest)
            .to_rgb8();
        let (x, y) = (TILE * (i as u32 % COLUMNS), TILE * (i as u32 / COLUMNS));
        image::imageops::replace(&mut canvas, &img, i64::from(x), i64::from(y));
    }
    overlay(&mut canvas, &ids, placed).map_err(|e| format!("{}: {e}", path.display()))?;
    canvas
        .save(path)
        .map_err(|e| format!("{}: {e}", path.display()))
}

fn overlay(
    canvas: &mut image::RgbImage,
    ids: &[&str],
    placed: &[Placed],
) -> Result<(), Box<dyn std::error::Error>> {
    let (w, h) = canvas.dimensions();
    let root = BitMapBackend::with_buffer(canvas.as_mut(), (w, h)).into_drawing_area();
    let at = |tile: usize, p: [f32; 2]| {
        let (x0, y0) = (
            TILE * (tile as u32 % COLUMNS),
            TILE * (tile as u32 / COLUMNS),
        );
        (
            x0 as i32 + (p[0] * TILE as f32) as i32,
            y0 as i32 + (p[1] * TILE as f32) as i32,
        )
    };
    for tile in 0..ids.len() as u32 {
        let (x, y) = (
            (TILE * (tile % COLUMNS)) as i32,
            (TILE * (tile / COLUMNS)) as i32,
        );
        let edge = (x + TILE as i32 - 1, y + TILE as i32 - 1);
        root.draw(&Rectangle::new([(x, y), edge], BLACK.stroke_width(1)))?;
    }
    for p in placed {
        let Some(tile) = ids.iter().position(|id| *id == p.id) else {
            continue;
        };
        let c = colour(p.kind);
        let truth = at(tile, vlalign_align::box_centre(p.bbox));
        let guess = at(tile, p.predicted);
        root.draw(&PathElement::new(vec![truth, guess], c.stroke_width(2)))?;
        root.draw(&Circle::new(truth, 9, c.stroke_width(3)))?;
        root.draw(&Circle::new(guess, 4, c.filled()))?;
    }
    if crate::plot::font() {
        let y = (h - LEGEND + 6) as i32;
        let kinds = [
            WordKind::Color,
            WordKind::Shape,
            WordKind::Size,
            WordKind::Position,
            WordKind::YesNo,
        ];
        for (i, kind) in kinds.iter().enumerate() {
            let x = 10 + 100 * i as i32;
            root.draw(&Circle::new((x, y + 8), 5, colour(*kind).filled()))?;
            root.draw(&Text::new(
                kind.name(),
                (x + 10, y),
                ("sans-serif", 16).into_font(),
            ))?;
        }
        root.draw(&Text::new(
            "ring: object centre, dot: predicted",
            (10 + 100 * 5, y),
            ("sans-serif", 16).into_font(),
        ))?;
    }
    root.present()?;
    Ok(())
}
