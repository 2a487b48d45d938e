//! Scenes of the synthetic world: 1–4 flat objects, each with a shape, color, size and cell of
//! a 3×3 grid.

use rand::Rng;
use rand::rngs::StdRng;
use serde::{Deserialize, Serialize};

/// Object shapes; the frequencies are uneven so that POPE's "popular" negatives mean something.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Shape {
    /// ○
    Circle,
    /// □
    Square,
    /// △
    Triangle,
    /// ◇
    Diamond,
    /// ☆
    Star,
}

impl Shape {
    /// All shapes.
    pub const ALL: [Shape; 5] = [
        Shape::Circle,
        Shape::Square,
        Shape::Triangle,
        Shape::Diamond,
        Shape::Star,
    ];
    /// Sampling weights of [`Shape::ALL`].
    pub const WEIGHTS: [f32; 5] = [0.30, 0.25, 0.20, 0.15, 0.10];

    /// The word.
    pub fn name(self) -> &'static str {
        match self {
            Shape::Circle => "circle",
            Shape::Square => "square",
            Shape::Triangle => "triangle",
            Shape::Diamond => "diamond",
            Shape::Star => "star",
        }
    }

    /// The shape that tends to appear with this one (co-occurrence for adversarial negatives).
    pub fn partner(self) -> Shape {
        match self {
            Shape::Circle => Shape::Square,
            Shape::Square => Shape::Circle,
            Shape::Triangle => Shape::Diamond,
            Shape::Diamond => Shape::Triangle,
            Shape::Star => Shape::Circle,
        }
    }
}

/// Object colors.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Color {
    /// Red.
    Red,
    /// Green.
    Green,
    /// Blue.
    Blue,
    /// Yellow.
    Yellow,
    /// Purple.
    Purple,
    /// Orange.
    Orange,
}

impl Color {
    /// All colors.
    pub const ALL: [Color; 6] = [
        Color::Red,
        Color::Green,
        Color::Blue,
        Color::Yellow,
        Color::Purple,
        Color::Orange,
    ];

    /// The word.
    pub fn name(self) -> &'static str {
        match self {
            Color::Red => "red",
            Color::Green => "green",
            Color::Blue => "blue",
            Color::Yellow => "yellow",
            Color::Purple => "purple",
            Color::Orange => "orange",
        }
    }

    /// Drawing color.
    pub fn rgb(self) -> [u8; 3] {
        match self {
            Color::Red => [214, 39, 40],
            Color::Green => [44, 160, 44],
            Color::Blue => [31, 90, 220],
            Color::Yellow => [238, 200, 20],
            Color::Purple => [136, 60, 180],
            Color::Orange => [250, 127, 14],
        }
    }
}

/// Object sizes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Size {
    /// Radius 9 % of the image.
    Small,
    /// Radius 15 % of the image.
    Large,
}

impl Size {
    /// The word.
    pub fn name(self) -> &'static str {
        match self {
            Size::Small => "small",
            Size::Large => "large",
        }
    }

    fn radius(self) -> f32 {
        match self {
            Size::Small => 0.09,
            Size::Large => 0.15,
        }
    }
}

/// Names of the 3×3 grid cells, row by row.
pub const POSITIONS: [&str; 9] = [
    "top left",
    "top",
    "top right",
    "left",
    "center",
    "right",
    "bottom left",
    "bottom",
    "bottom right",
];

/// One object.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Object {
    /// Shape.
    pub shape: Shape,
    /// Color.
    pub color: Color,
    /// Size.
    pub size: Size,
    /// Grid cell (index into [`POSITIONS`]).
    pub cell: usize,
    /// Center x in [0, 1].
    pub cx: f32,
    /// Center y in [0, 1].
    pub cy: f32,
    /// Radius in image widths.
    pub radius: f32,
    /// Whether the color was drawn from the language prior.
    #[serde(default)]
    pub prior: bool,
}

impl Object {
    /// `[x0, y0, x1, y1]` in [0, 1].
    pub fn bbox(&self) -> [f32; 4] {
        [
            self.cx - self.radius,
            self.cy - self.radius,
            self.cx + self.radius,
            self.cy + self.radius,
        ]
    }

    /// The position phrase.
    pub fn position(&self) -> &'static str {
        POSITIONS[self.cell]
    }
}

/// An image's content.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Scene {
    /// Image id (file stem).
    pub id: String,
    /// Objects, in reading order (by cell).
    pub objects: Vec<Object>,
}

impl Scene {
    /// Distinct shapes present.
    pub fn shapes(&self) -> Vec<Shape> {
        let mut s: Vec<Shape> = Vec::new();
        for o in &self.objects {
            if !s.contains(&o.shape) {
                s.push(o.shape);
            }
        }
        s
    }
}

/// Sampling knobs.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SceneSampler {
    /// Probability that a star is yellow (the language prior); 0 disables the bias and stars
    /// take any color uniformly.
    pub prior: f32,
    /// Probability that a further object takes the first object's partner shape.
    pub co_occurrence: f32,
}

impl Default for SceneSampler {
    fn default() -> Self {
        Self {
            prior: 0.8,
            co_occurrence: 0.4,
        }
    }
}

fn weighted_shape(rng: &mut StdRng) -> Shape {
    let mut u: f32 = rng.random();
    for (s, w) in Shape::ALL.iter().zip(Shape::WEIGHTS) {
        if u < w {
            return *s;
        }
        u -= w;
    }
    Shape::Star
}

impl SceneSampler {
    /// One object of `shape` in `cell`.
    pub fn object(&self, shape: Shape, cell: usize, rng: &mut StdRng) -> Object {
        let (color, prior) = if shape == Shape::Star && self.prior > 0.0 {
            if rng.random::<f32>() < self.prior {
                (Color::Yellow, true)
            } else {
                let others: Vec<Color> = Color::ALL
                    .into_iter()
                    .filter(|c| *c != Color::Yellow)
                    .collect();
                (others[rng.random_range(0..others.len())], true)
            }
        } else {
            (Color::ALL[rng.random_range(0..Color::ALL.len())], false)
        };
        let size = if rng.random::<bool>() {
            Size::Large
        } else {
            Size::Small
        };
        let radius = size.radius();
        let slack = (1.0 / 6.0 - radius).max(0.0) * 0.6;
        let (row, col) = (cell / 3, cell % 3);
        let cx = (col as f32 + 0.5) / 3.0 + rng.random_range(-slack..=slack);
        let cy = (row as f32 + 0.5) / 3.0 + rng.random_range(-slack..=slack);
        Object {
            shape,
            color,
            size,
            cell,
            cx,
            cy,
            radius,
            prior,
        }
    }

    /// A scene of 1–4 objects in distinct cells.
    pub fn scene(&self, id: String, rng: &mut StdRng) -> Scene {
        let n = rng.random_range(1..=4);
        let mut cells: Vec<usize> = (0..9).collect();
        for i in 0..n {
            let j = rng.random_range(i..9);
            cells.swap(i, j);
        }
        let mut objects: Vec<Object> = Vec::with_capacity(n);
        for &cell in &cells[..n] {
            let shape = match objects.first() {
                Some(first) if rng.random::<f32>() < self.co_occurrence => first.shape.partner(),
                _ => weighted_shape(rng),
            };
            objects.push(self.object(shape, cell, rng));
        }
        objects.sort_by_key(|o| o.cell);
        Scene { id, objects }
    }
}
