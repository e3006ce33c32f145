"""The embedded default benchmark: procedural street/nature-like scenes, no downloads.

Each image is a smooth partition into 2-4 large *stuff* regions (a warped, weighted Voronoi
diagram whose seeds follow per-class vertical priors: sky near the top, road/water near the
bottom) with 1-5 occluding *thing* objects on top. Pixels are rendered from per-class *looks*
(texture kind + period + orientation + colour distribution), jittered per instance (phase, period,
orientation, contrast, colour), then lit with a per-image colour cast and brightness ramp, blurred
and noised. Every scene is a deterministic function of ``(cfg.seed, split, index)`` plus the
class count and image size.

What makes it a segmentation benchmark rather than a texture test (a texture-only prototype was
solved best by a tiny full-resolution net, because texture is local):

- colour is unreliable: classes share a palette of 8 base colours, many looks draw their colour
  per instance, and each image gets a random colour cast;
- *shape* pairs: identical look, different outline (disk/box, ring/plate);
- *context* pairs: identical look and shape, identity given by the stuff underneath
  (car on road / boat on water, bird on sky / fish on water);
- *part* context: a lamp is a glowing disk on top of a pole, a ball is the same disk elsewhere;
- long-tailed frequencies: stuff and thing classes are drawn with Zipf weights over their rank.

Those need receptive field and depth; texture-only classes remain for the local path. Labels are
``0..C-1`` (stuff first, then things); there are no ignore pixels before augmentation.
``num_classes`` from 2 to 255 works; the first classes are hand-written, the rest generated.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from segdistill.config import DataConfig
from segdistill.data.registry import IGNORE_INDEX, DatasetInfo, register_dataset

# ----------------------------------------------------------------------------------------------
# Class catalogue
# ----------------------------------------------------------------------------------------------

PALETTE: dict[str, tuple[float, float, float]] = {
    "blue": (0.28, 0.42, 0.72),
    "green": (0.30, 0.55, 0.28),
    "gray": (0.50, 0.50, 0.50),
    "brown": (0.52, 0.38, 0.24),
    "yellow": (0.80, 0.72, 0.38),
    "red": (0.72, 0.28, 0.24),
    "white": (0.86, 0.86, 0.84),
    "dark": (0.18, 0.18, 0.22),
}

TEXTURE_KINDS = ("flat", "gradient", "grain", "stripes", "waves", "checker", "dots", "bricks", "noise",
                 "radial", "sheen")


@dataclass(frozen=True)
class Look:
    """A texture and colour distribution, in pixels at image size 128 (scaled with the image).

    ``angle`` (degrees) is the direction along which the pattern varies (0: vertical stripes).
    An instance picks its primary colour from ``colours``; ``accent`` is a palette name, "shade"
    (a darker primary) or "tint" (a lighter primary); the texture mixes the two by ``contrast``.
    """

    kind: str
    period: float
    angle: float
    colours: tuple[str, ...]
    accent: str
    contrast: float

    def __post_init__(self) -> None:
        if self.kind not in TEXTURE_KINDS:
            raise ValueError(f"unknown texture kind {self.kind!r}; known: {TEXTURE_KINDS}")


@dataclass(frozen=True)
class StuffClass:
    name: str
    look: Look
    y_range: tuple[float, float]  # where region seeds fall vertically (0 = top, 1 = bottom)


SHAPES = ("disk", "square", "rect", "ring", "triangle", "ellipse", "upright", "blob", "diamond", "cross",
          "hexagon", "bar")


@dataclass(frozen=True)
class ThingClass:
    """``on``: name of the stuff class the object must sit on (context cue), or None.
    ``attach``: name of a thing class it sits on top of ("pole" for lamps), or None.
    ``cue``: what tells it apart from its look-alikes ("texture", "shape", "context", "part")."""

    name: str
    shape: str
    look: Look
    on: str | None = None
    attach: str | None = None
    cue: str = "texture"

    def __post_init__(self) -> None:
        if self.shape not in SHAPES:
            raise ValueError(f"unknown shape {self.shape!r}; known: {SHAPES}")


_STUFF_CATALOGUE: tuple[StuffClass, ...] = (
    StuffClass("sky", Look("gradient", 0, 90, ("blue",), "white", 0.7), (0.0, 0.2)),
    StuffClass("road", Look("grain", 0, 0, ("gray", "dark"), "shade", 0.8), (0.7, 1.0)),
    StuffClass("water", Look("waves", 7, 90, ("blue",), "white", 0.6), (0.55, 1.0)),
    StuffClass("grass", Look("stripes", 4, 0, ("green",), "shade", 0.7), (0.55, 1.0)),
    StuffClass("wall", Look("bricks", 9, 90, ("red", "brown", "gray"), "white", 0.7), (0.25, 0.7)),
    StuffClass("sand", Look("dots", 6, 20, ("yellow",), "brown", 0.8), (0.6, 1.0)),
    StuffClass("foliage", Look("noise", 4, 0, ("green",), "dark", 0.9), (0.15, 0.6)),
    StuffClass("floor", Look("checker", 14, 0, ("gray", "brown"), "white", 0.6), (0.6, 1.0)),
    StuffClass("snow", Look("noise", 14, 0, ("white",), "gray", 0.5), (0.3, 1.0)),
    StuffClass("field", Look("stripes", 10, 45, ("yellow", "green"), "shade", 0.6), (0.5, 1.0)),
    StuffClass("rock", Look("noise", 2.5, 0, ("gray", "brown"), "dark", 0.8), (0.3, 0.9)),
    StuffClass("mud", Look("noise", 8, 0, ("brown",), "dark", 0.8), (0.6, 1.0)),
    StuffClass("building", Look("stripes", 8, 90, ("gray", "white"), "dark", 0.7), (0.15, 0.55)),
    StuffClass("carpet", Look("checker", 6, 45, ("red", "blue"), "dark", 0.7), (0.6, 1.0)),
    StuffClass("ceiling", Look("stripes", 14, 90, ("white",), "gray", 0.5), (0.0, 0.3)),
)

_VEHICLE = Look("sheen", 22, 90, ("red", "white", "dark", "yellow", "blue"), "shade", 0.6)
_DOTTED = Look("dots", 5, 0, ("yellow", "red", "green"), "white", 0.9)
_RINGED = Look("stripes", 4.5, 0, ("white", "yellow", "gray"), "dark", 0.8)
_SCALES = Look("checker", 4.5, 45, ("dark", "white", "brown"), "tint", 0.7)
_GLOW = Look("radial", 0, 0, ("yellow", "white", "red"), "shade", 0.9)

# Frequency rank = position (Zipf weights); look-alike groups are complete from 13 things on.
_THING_CATALOGUE: tuple[ThingClass, ...] = (
    ThingClass("car", "rect", _VEHICLE, on="road", cue="context"),
    ThingClass("disk", "disk", _DOTTED, cue="shape"),
    ThingClass("pole", "bar", Look("stripes", 9, 90, ("gray", "dark"), "white", 0.5)),
    ThingClass("person", "upright", Look("noise", 3, 0, ("red", "blue", "green", "yellow", "brown"), "shade", 0.8)),
    ThingClass("ring", "ring", _RINGED, cue="shape"),
    ThingClass("bird", "ellipse", _SCALES, on="sky", cue="context"),
    ThingClass("box", "square", _DOTTED, cue="shape"),
    ThingClass("lamp", "disk", _GLOW, attach="pole", cue="part"),
    ThingClass("boat", "rect", _VEHICLE, on="water", cue="context"),
    ThingClass("sign", "triangle", Look("stripes", 6, 45, ("red", "yellow"), "white", 0.9)),
    ThingClass("plate", "disk", _RINGED, cue="shape"),
    ThingClass("ball", "disk", _GLOW, cue="part"),
    ThingClass("fish", "ellipse", _SCALES, on="water", cue="context"),
    ThingClass("bush", "blob", Look("noise", 2.5, 0, ("green",), "dark", 0.9)),
    ThingClass("tent", "triangle", Look("checker", 9, 0, ("yellow", "blue", "red"), "white", 0.7)),
    ThingClass("barrel", "hexagon", Look("stripes", 7, 90, ("brown", "red"), "dark", 0.7)),
    ThingClass("kite", "diamond", Look("checker", 7, 45, ("red", "blue", "yellow"), "white", 0.8)),
    ThingClass("medkit", "cross", Look("grain", 0, 0, ("white", "red"), "shade", 0.7)),
    ThingClass("tire", "ring", Look("grain", 0, 0, ("dark",), "gray", 0.8)),
    ThingClass("boulder", "blob", Look("noise", 2.5, 0, ("gray", "brown"), "dark", 0.8), cue="shape"),
)

_ORIENTED = ("stripes", "waves", "checker", "dots", "bricks", "gradient")
_GENERIC_PERIODS: dict[str, tuple[float, ...]] = {
    "stripes": (4, 7, 12), "waves": (6, 10), "checker": (5, 9, 15), "dots": (5, 8, 12),
    "bricks": (7, 12), "noise": (2.5, 5, 10), "grain": (0,), "gradient": (0,),
}
_GENERIC_THING_KINDS = ("stripes", "checker", "dots", "noise", "grain", "radial", "sheen", "bricks", "waves")
_GENERIC_SHAPES = ("disk", "square", "triangle", "ring", "ellipse", "upright", "blob", "diamond", "cross", "hexagon", "rect")
_COLOURS = tuple(PALETTE)


def _generic_look(rng: np.random.Generator, kinds: tuple[str, ...]) -> Look:
    kind = str(rng.choice(kinds))
    periods = _GENERIC_PERIODS.get(kind, (0,))
    period = float(rng.choice(periods)) if kind != "sheen" else 20.0
    angle = float(rng.choice((0, 45, 90, 135))) if kind in _ORIENTED else 0.0
    n_col = int(rng.integers(1, 4))
    colours = tuple(str(c) for c in rng.choice(_COLOURS, size=n_col, replace=False))
    accent = str(rng.choice(("shade", "tint") + _COLOURS))
    if accent in colours:
        accent = "shade"
    return Look(kind, period, angle, colours, accent, float(rng.uniform(0.6, 0.9)))


def _look_name(look: Look) -> str:
    p = f"{look.period:g}" if look.period else ""
    a = f"-{look.angle:g}" if look.kind in _ORIENTED and look.kind != "gradient" else ""
    return f"{look.colours[0]}-{look.kind}{p}{a}"


@functools.lru_cache(maxsize=8)
def _generic_stuff(count: int) -> tuple[StuffClass, ...]:
    """``count`` extra stuff classes with distinct looks, the same for every call (fixed seed)."""
    rng = np.random.default_rng(0x5EED)
    priors = ((0.0, 0.4), (0.3, 0.7), (0.6, 1.0), (0.0, 1.0))
    taken = {_look_name(s.look) for s in _STUFF_CATALOGUE}
    out: list[StuffClass] = []
    while len(out) < count:
        look = _generic_look(rng, tuple(_GENERIC_PERIODS))
        name = _look_name(look)
        if name in taken:
            continue
        taken.add(name)
        out.append(StuffClass(name, look, priors[int(rng.integers(len(priors)))]))
    return tuple(out)


@functools.lru_cache(maxsize=8)
def _generic_things(count: int) -> tuple[ThingClass, ...]:
    """``count`` extra thing classes in look-alike groups: every third group a context pair (same
    look and shape on two different stuff classes, given as ``"#k"`` stuff indices), every third
    a shape pair, the rest singles."""
    rng = np.random.default_rng(0x7419)
    out: list[ThingClass] = []
    names: set[str] = {t.name for t in _THING_CATALOGUE}
    group = 0
    while len(out) < count:
        look = _generic_look(rng, _GENERIC_THING_KINDS)
        shape = str(rng.choice(_GENERIC_SHAPES))
        base = f"{_look_name(look)}-{shape}"
        if base in names:
            continue
        if group % 3 == 0:
            a, b = (int(x) for x in rng.choice(6, size=2, replace=False))
            members = [ThingClass(f"{base}-on-#{a}", shape, look, on=f"#{a}", cue="context"),
                       ThingClass(f"{base}-on-#{b}", shape, look, on=f"#{b}", cue="context")]
        elif group % 3 == 1:
            other = str(rng.choice([s for s in _GENERIC_SHAPES if s != shape]))
            members = [ThingClass(base, shape, look, cue="shape"),
                       ThingClass(f"{_look_name(look)}-{other}", other, look, cue="shape")]
        else:
            members = [ThingClass(base, shape, look)]
        members = [m for m in members if m.name not in names]
        names.update(m.name for m in members)
        out.extend(members)
        group += 1
    return tuple(out[:count])


@dataclass(frozen=True)
class ClassTable:
    """The classes of a synthetic dataset with ``num_classes`` classes: stuff ids ``0..S-1``,
    thing ids ``S..C-1``. ``thing_on[j]`` is the stuff id thing ``j`` must sit on (or -1),
    ``thing_attach[j]`` the thing index it sits on top of (or -1)."""

    stuff: tuple[StuffClass, ...]
    things: tuple[ThingClass, ...]
    thing_on: tuple[int, ...]
    thing_attach: tuple[int, ...]

    @property
    def num_classes(self) -> int:
        return len(self.stuff) + len(self.things)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(s.name for s in self.stuff) + tuple(t.name for t in self.things)

    @property
    def cues(self) -> tuple[str, ...]:
        """Per class: "stuff" or the thing's cue ("texture", "shape", "context", "part")."""
        return ("stuff",) * len(self.stuff) + tuple(t.cue for t in self.things)


def num_stuff_classes(num_classes: int) -> int:
    """Stuff classes among ``num_classes``: about 42 %, at least 2 (1 when there are only 2 classes)."""
    if num_classes == 2:
        return 1
    return max(2, min(num_classes - 1, round(0.42 * num_classes)))


@functools.lru_cache(maxsize=32)
def class_table(num_classes: int) -> ClassTable:
    """The deterministic class table for ``num_classes`` (2..255): hand-written classes first."""
    if not 2 <= num_classes <= 255:
        raise ValueError(f"synthetic num_classes must be in [2, 255], got {num_classes}")
    n_stuff = num_stuff_classes(num_classes)
    n_things = num_classes - n_stuff
    stuff = (_STUFF_CATALOGUE + _generic_stuff(max(0, n_stuff - len(_STUFF_CATALOGUE))))[:n_stuff]
    things = (_THING_CATALOGUE + _generic_things(max(0, n_things - len(_THING_CATALOGUE))))[:n_things]
    stuff_ids = {s.name: i for i, s in enumerate(stuff)}
    thing_ids = {t.name: j for j, t in enumerate(things)}

    # Context classes whose stuff is not among these classes sit on a present stuff class instead,
    # chosen so that look-alikes (same look and shape) never share one.
    thing_on: list[int] = []
    used: dict[tuple[Look, str], set[int]] = {}
    for j, t in enumerate(things):
        if t.on is None:
            thing_on.append(-1)
            continue
        if t.on.startswith("#"):
            want = int(t.on[1:]) % n_stuff
        else:
            want = stuff_ids.get(t.on, -1)
        taken = used.setdefault((t.look, t.shape), set())
        if want < 0 or want in taken:
            free = [k for k in range(n_stuff) if k not in taken]
            want = free[j % len(free)] if free else -1
        if want >= 0:
            taken.add(want)
        thing_on.append(want)
    thing_attach = []
    for t in things:
        if t.attach is not None and t.attach not in thing_ids:
            raise AssertionError(f"thing {t.name!r} attaches to {t.attach!r}, which must precede it")
        thing_attach.append(thing_ids[t.attach] if t.attach else -1)
    table = ClassTable(stuff, things, tuple(thing_on), tuple(thing_attach))
    if len(set(table.names)) != num_classes:
        raise AssertionError("synthetic class names are not unique")
    return table


def synthetic_class_names(num_classes: int) -> tuple[str, ...]:
    return class_table(num_classes).names


# ----------------------------------------------------------------------------------------------
# Rendering
# ----------------------------------------------------------------------------------------------

STUFF_ZIPF = 1.0        # stuff class weights (rank + 1) ** -STUFF_ZIPF
THING_ZIPF = 1.3        # thing class weights (rank + 1) ** -THING_ZIPF
THING_RADIUS = (15.0, 25.0)   # equal-area radius of things, px at image size 128
MAX_THINGS = 4
RING_OUTER, RING_INNER = 1.4, 0.7      # ring radii / r
BAR_HALF_WIDTH = (0.42, 0.5)          # pole half width / r
WARP = (10.0, 40.0)                   # stuff boundary warp: amplitude, correlation length (px)
SPLIT_CODES = {"train": 0, "val": 1}

# Shape outlines: (extent / r) bounding radius; each keeps the area near pi * r**2.
_EXTENT = {"disk": 1.0, "square": 1.26, "rect": 1.45, "ring": 1.4, "triangle": 1.32, "ellipse": 1.46,
           "upright": 1.46, "blob": 1.4, "diamond": 1.26, "cross": 1.33, "hexagon": 1.1}


@functools.lru_cache(maxsize=256)
def _noise_matrix(n: int, corr: float) -> np.ndarray:
    """``(n, g)`` Gaussian interpolation from a coarse grid of spacing ``corr`` px; rows have unit
    L2 norm, so ``A @ G @ B.T`` of an i.i.d. N(0, 1) grid ``G`` is unit-variance smooth noise."""
    g = int(math.ceil(n / corr)) + 4
    centres = (np.arange(g) - 2.0) * corr
    d = (np.arange(n, dtype=np.float64)[:, None] + 0.5 - centres[None, :]) / corr
    k = np.exp(-0.5 * (d / 0.75) ** 2)
    k /= np.sqrt((k ** 2).sum(1, keepdims=True))
    return k.astype(np.float32)


def smooth_noise(rng: np.random.Generator, h: int, w: int, corr: float) -> np.ndarray:
    """Unit-variance Gaussian random field ``(h, w)`` with correlation length ~``corr`` px."""
    corr = max(1.0, round(corr * 2) / 2)
    a, b = _noise_matrix(h, corr), _noise_matrix(w, corr)
    grid = rng.standard_normal((a.shape[1], b.shape[1]), dtype=np.float32)
    return a @ grid @ b.T


def _texture(look: Look, x: np.ndarray, y: np.ndarray, rng: np.random.Generator, sf: float,
             radius: float = 1.0) -> np.ndarray:
    """Texture value in [-1, 1] at coordinates ``x, y`` (px; object-centred for things).

    Period, orientation and phase are jittered per call (per instance)."""
    kind = look.kind
    h, w = x.shape
    period = max(1.5, look.period * sf * rng.uniform(0.88, 1.12))
    theta = math.radians(look.angle + rng.uniform(-10, 10))
    c, s = math.cos(theta), math.sin(theta)
    u = x * c + y * s
    v = y * c - x * s
    ph1, ph2 = rng.uniform(0, 2 * math.pi, size=2)
    two_pi = 2 * math.pi
    if kind == "flat":
        return -1.0 + 0.3 * smooth_noise(rng, h, w, 8 * sf)
    if kind == "gradient":
        span = max(float(u.max() - u.min()), 1.0)
        ramp = 2.0 * (u - u.min()) / span - 1.0
        return np.clip(ramp + 0.25 * smooth_noise(rng, h, w, 16 * sf), -1, 1)
    if kind == "grain":
        return np.clip(0.6 * rng.standard_normal((h, w), dtype=np.float32), -1, 1)
    if kind == "stripes":
        return np.tanh(2.5 * np.sin(two_pi * u / period + ph1))
    if kind == "waves":
        wobble = 0.35 * period * np.sin(two_pi * v / (2.7 * period) + ph2)
        return np.tanh(2.5 * np.sin(two_pi * (u + wobble) / period + ph1))
    if kind == "checker":
        return np.tanh(4.0 * np.sin(two_pi * u / period + ph1) * np.sin(two_pi * v / period + ph2))
    if kind == "dots":
        d = np.cos(two_pi * u / period + ph1) * np.cos(two_pi * v / period + ph2)
        return np.tanh(8.0 * (d - 0.45))
    if kind == "bricks":
        rows = v / period + ph1 / two_pi
        row = np.floor(rows)
        cols = u / (2 * period) + 0.5 * (row % 2) + ph2 / two_pi
        mortar = ((rows - row) < 0.2) | ((cols - np.floor(cols)) < 0.1)
        return np.where(mortar, 1.0, -1.0).astype(np.float32) * 0.8 + 0.2 * smooth_noise(rng, h, w, 3 * sf)
    if kind == "noise":
        return np.tanh(1.5 * smooth_noise(rng, h, w, period))
    if kind == "radial":
        r = np.sqrt(x * x + y * y) / max(radius, 1.0)
        return np.clip(1.0 - 2.0 * r, -1, 1) + 0.15 * smooth_noise(rng, h, w, 4 * sf)
    if kind == "sheen":
        return 0.8 * np.tanh(2.0 * np.sin(two_pi * v / max(period, 2 * radius) + ph1))
    raise ValueError(f"unknown texture kind {kind!r}")


def _colours(look: Look, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    primary = np.asarray(PALETTE[look.colours[int(rng.integers(len(look.colours)))]], dtype=np.float32)
    primary = primary * rng.uniform(0.85, 1.15) + rng.normal(0, 0.05, 3).astype(np.float32)
    if look.accent == "shade":
        accent = primary * 0.45
    elif look.accent == "tint":
        accent = primary * 0.4 + 0.6
    else:
        accent = np.asarray(PALETTE[look.accent], dtype=np.float32) + rng.normal(0, 0.05, 3).astype(np.float32)
    return primary.astype(np.float32), accent.astype(np.float32)


def _paint(look: Look, x: np.ndarray, y: np.ndarray, rng: np.random.Generator, sf: float,
           radius: float = 1.0) -> np.ndarray:
    """RGB ``(3, h, w)`` of one instance of ``look``."""
    t = _texture(look, x, y, rng, sf, radius)
    primary, accent = _colours(look, rng)
    m = (min(1.0, look.contrast * rng.uniform(0.8, 1.15)) * 0.5) * (t + 1.0)
    return primary[:, None, None] + (accent - primary)[:, None, None] * m[None]


def _shape_mask(shape: str, x: np.ndarray, y: np.ndarray, r: float, rng: np.random.Generator) -> np.ndarray:
    """Boolean mask of ``shape`` with equal-area radius ``r`` centred at the origin of ``x, y``."""
    if shape in ("rect", "ellipse"):
        rot = math.radians(rng.uniform(-20, 20))
    elif shape == "upright":
        rot = math.radians(90 + rng.uniform(-12, 12))
    else:
        rot = rng.uniform(0, 2 * math.pi)
    c, s = math.cos(rot), math.sin(rot)
    u = x * c + y * s
    v = y * c - x * s
    if shape == "disk":
        return x * x + y * y <= r * r
    if shape == "square":
        a = 0.886 * r
        return (np.abs(u) <= a) & (np.abs(v) <= a)
    if shape == "rect":
        return (np.abs(u) <= 1.25 * r) & (np.abs(v) <= 0.66 * r)
    if shape == "ring":
        d2 = x * x + y * y
        return (d2 <= (RING_OUTER * r) ** 2) & (d2 >= (RING_INNER * r) ** 2)
    if shape in ("ellipse", "upright"):
        return (u / (1.45 * r)) ** 2 + (v / (0.69 * r)) ** 2 <= 1.0
    if shape == "diamond":
        return np.abs(u) + np.abs(v) <= 1.25 * r
    if shape == "cross":
        arm, half = 0.42 * r, 1.26 * r
        return ((np.abs(u) <= arm) & (np.abs(v) <= half)) | ((np.abs(v) <= arm) & (np.abs(u) <= half))
    if shape in ("triangle", "hexagon"):
        k, inner = (3, 0.66 * r) if shape == "triangle" else (6, 0.95 * r)
        mask = np.ones(x.shape, dtype=bool)
        for i in range(k):
            a = rot + 2 * math.pi * i / k
            mask &= x * math.cos(a) + y * math.sin(a) <= inner
        return mask
    if shape == "blob":
        ang = np.arctan2(y, x)
        rad = np.full(x.shape, r, dtype=np.float32)
        for k in (2, 3, 4):
            rad = rad + r * rng.uniform(-0.13, 0.13) * np.cos(k * ang + rng.uniform(0, 2 * math.pi))
        return x * x + y * y <= rad * rad
    raise ValueError(f"unknown shape {shape!r}")


def _erode(mask: np.ndarray, d: int) -> np.ndarray:
    """Pixels whose 4 neighbours at distance ``d`` are also in ``mask`` (outside counts as inside)."""
    if d <= 0:
        return mask
    out = mask.copy()
    out[d:] &= mask[:-d]
    out[:-d] &= mask[d:]
    out[:, d:] &= mask[:, :-d]
    out[:, :-d] &= mask[:, d:]
    return out


class _SceneRenderer:
    """Renders scenes for one (class table, image size); holds the coordinate grids."""

    def __init__(self, table: ClassTable, size: int) -> None:
        self.table = table
        self.size = size
        self.sf = size / 128.0
        yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
        self.yy, self.xx = yy + 0.5, xx + 0.5
        n_s, n_t = len(table.stuff), len(table.things)
        self.stuff_w = (np.arange(1, n_s + 1, dtype=np.float64) ** -STUFF_ZIPF)
        self.thing_w = (np.arange(1, n_t + 1, dtype=np.float64) ** -THING_ZIPF)

    # -- stuff layout ------------------------------------------------------------------------
    def _layout(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """``(region map int (H, W) of stuff ids, chosen stuff ids)``: a warped weighted Voronoi."""
        n_s, size = len(self.table.stuff), self.size
        k = min(n_s, int(rng.integers(2, 5)))
        ids = rng.choice(n_s, size=k, replace=False, p=self.stuff_w / self.stuff_w.sum())
        amp, corr = WARP[0] * self.sf, WARP[1] * self.sf
        wx = self.xx + amp * smooth_noise(rng, size, size, corr)
        wy = self.yy + amp * smooth_noise(rng, size, size, corr)
        dist = np.empty((k, size, size), dtype=np.float32)
        for i, sid in enumerate(ids):
            lo, hi = self.table.stuff[sid].y_range
            sx, sy = rng.uniform(0, size), rng.uniform(lo, hi) * size
            weight = rng.uniform(0.75, 1.3) * (1.0 + 0.3 * self.stuff_w[sid] / self.stuff_w[0])
            dist[i] = ((wx - sx) ** 2 + (wy - sy) ** 2) / weight ** 2
        owner = dist.argmin(0)
        # Drop slivers (< 4 % of the image) so region boundaries stay long and smooth.
        counts = np.bincount(owner.ravel(), minlength=k)
        keep = counts >= 0.04 * size * size
        if not keep.all() and keep.any():
            dist[~keep] = np.inf
            owner = dist.argmin(0)
        return ids[owner], ids[keep] if keep.any() else ids

    # -- things ------------------------------------------------------------------------------
    def _instance(self, j: int, cx: float, cy: float, r: float, rng: np.random.Generator
                  ) -> tuple[slice, slice, np.ndarray, np.ndarray] | None:
        """``(rows, cols, mask (h, w), rgb (3, h, w))`` of thing ``j`` at ``(cx, cy)``; None if off-image."""
        t = self.table.things[j]
        size = self.size
        if t.shape == "bar":  # a vertical pole: width ~0.9 r, height ~3 r
            half_w, half_h = r * rng.uniform(*BAR_HALF_WIDTH), r * rng.uniform(1.3, 1.8)
            ext_x, ext_y = half_w + 1, half_h + 1
        else:
            ext_x = ext_y = _EXTENT[t.shape] * r + 1
        x0, x1 = max(0, int(cx - ext_x)), min(size, int(math.ceil(cx + ext_x)))
        y0, y1 = max(0, int(cy - ext_y)), min(size, int(math.ceil(cy + ext_y)))
        if x1 - x0 < 2 or y1 - y0 < 2:
            return None
        x = self.xx[y0:y1, x0:x1] - cx
        y = self.yy[y0:y1, x0:x1] - cy
        if t.shape == "bar":
            mask = (np.abs(x) <= half_w) & (np.abs(y) <= half_h)
        else:
            mask = _shape_mask(t.shape, x, y, r, rng)
        if not mask.any():
            return None
        rgb = _paint(t.look, x, y, rng, self.sf, radius=r)
        return slice(y0, y1), slice(x0, x1), mask, rgb

    def _things(self, rng: np.random.Generator, stuff_map: np.ndarray, present: np.ndarray,
                img: np.ndarray, lbl: np.ndarray) -> None:
        table, size, n_stuff = self.table, self.size, len(self.table.stuff)
        if not table.things:
            return
        on = np.asarray(table.thing_on)
        allowed = (on < 0) | np.isin(on, present)
        weights = np.where(allowed, self.thing_w, 0.0)
        if weights.sum() <= 0:
            return
        weights = weights / weights.sum()
        occupied = np.zeros((size, size), dtype=bool)
        region_cache: dict[int, np.ndarray] = {}
        r_lo, r_hi = THING_RADIUS[0] * self.sf, THING_RADIUS[1] * self.sf
        for _ in range(int(rng.integers(1, MAX_THINGS + 1))):
            j = int(rng.choice(len(weights), p=weights))
            r = float(rng.uniform(r_lo, r_hi))
            for _attempt in range(8):
                parts: list[tuple[int, float, float, float]] = []   # (thing index, cx, cy, r)
                if table.thing_on[j] >= 0:
                    sid = table.thing_on[j]
                    key = sid * 1000 + int(r * 0.6)
                    if key not in region_cache:
                        region = stuff_map == sid
                        eroded = _erode(region, int(r * 0.6))
                        region_cache[key] = np.flatnonzero(eroded if eroded.any() else region)
                    cand = region_cache[key]
                    if cand.size == 0:
                        break
                    p = int(cand[rng.integers(cand.size)])
                    cx, cy = p % size + rng.uniform(0, 1), p // size + rng.uniform(0, 1)
                else:
                    cx, cy = rng.uniform(0.08, 0.92) * size, rng.uniform(0.08, 0.92) * size
                if table.thing_attach[j] >= 0:   # lamp on a pole: the pole stands below the disk
                    pole_r = float(rng.uniform(r_lo, r_hi))
                    half_h = pole_r * 1.55
                    parts.append((table.thing_attach[j], cx, cy + r * 0.6 + half_h, pole_r))
                parts.append((j, cx, cy, r))
                drawn = [self._instance(pj, px, py, pr, rng) for pj, px, py, pr in parts]
                if any(d is None for d in drawn):
                    continue
                area = sum(int(d[2].sum()) for d in drawn)
                overlap = sum(int((occupied[d[0], d[1]] & d[2]).sum()) for d in drawn)
                if overlap > 0.25 * area:
                    continue
                for (pj, *_), (rows, cols, mask, rgb) in zip(parts, drawn):
                    img[:, rows, cols][:, mask] = rgb[:, mask]
                    lbl[rows, cols][mask] = n_stuff + pj
                    occupied[rows, cols] |= mask
                break

    # -- whole scene -------------------------------------------------------------------------
    def render(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, tuple[float, float, int]]:
        """``(image float32 (3, H, W) before blur and noise, label uint8 (H, W), (blur sigma,
        noise std, noise seed))``; :func:`_finish` applies the optics in batches."""
        size, sf = self.size, self.sf
        stuff_map, present = self._layout(rng)
        img = np.empty((3, size, size), dtype=np.float32)
        for sid in present:  # the stuff ids that own pixels
            region = stuff_map == sid
            rgb = _paint(self.table.stuff[sid].look, self.xx, self.yy, rng, sf, radius=size)
            np.copyto(img, rgb, where=region[None])
        lbl = stuff_map.astype(np.uint8)
        self._things(rng, stuff_map, present, img, lbl)

        # Lighting: colour cast and brightness (same for the whole image), a linear ramp.
        gain = (rng.uniform(0.7, 1.2) * rng.uniform(0.8, 1.2, size=3)).astype(np.float32)
        a = rng.uniform(0, 2 * math.pi)
        ramp = 1.0 + rng.uniform(0, 0.35) * ((self.xx * math.cos(a) + self.yy * math.sin(a)) / size - 0.5)
        img *= gain[:, None, None] * ramp[None]
        optics = (float(rng.uniform(0.4, 0.9)) * sf, float(rng.uniform(0.01, 0.035)), int(rng.integers(2 ** 62)))
        return img, lbl, optics


def _finish(images: np.ndarray, optics: list[tuple[float, float, int]]) -> torch.Tensor:
    """Blur (Gaussian, per-image sigma, reflect padding) and add sensor noise (per-image seeded),
    batched in torch: ``float32 (n, 3, H, W)`` in [0, 1] -> ``uint8 (n, 3, H, W)``."""
    x = torch.from_numpy(images)
    n, c, h, w = x.shape
    radius = max(1, math.ceil(3 * max(o[0] for o in optics)))
    taps = torch.arange(-radius, radius + 1, dtype=torch.float32)
    sigma = torch.tensor([o[0] for o in optics], dtype=torch.float32)
    k = torch.exp(-0.5 * (taps[None] / sigma[:, None]) ** 2)
    k = (k / k.sum(1, keepdim=True)).repeat_interleave(c, 0)            # (n*c, 2r+1)
    y = F.pad(x.reshape(1, n * c, h, w), (radius, radius, radius, radius), mode="reflect")
    y = F.conv2d(y, k[:, None, :, None], groups=n * c)
    y = F.conv2d(y, k[:, None, None, :], groups=n * c).reshape(n, c, h, w)
    for i, (_, std, noise_seed) in enumerate(optics):
        g = torch.Generator().manual_seed(noise_seed)
        y[i] += std * torch.randn((c, h, w), generator=g)
    return (y.clamp_(0, 1) * 255 + 0.5).to(torch.uint8)


def render_scenes(num_classes: int, image_size: int, seed: int, split: str, count: int,
                  chunk: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """``(images uint8 (N, 3, S, S), labels uint8 (N, S, S))``; scene ``i`` depends only on
    ``(seed, split, i)``, the class count and the size (not on ``count`` or ``chunk``)."""
    if split not in SPLIT_CODES:
        raise ValueError(f"split must be one of {sorted(SPLIT_CODES)}, got {split!r}")
    renderer = _SceneRenderer(class_table(num_classes), image_size)
    images = torch.empty((count, 3, image_size, image_size), dtype=torch.uint8)
    labels = np.empty((count, image_size, image_size), dtype=np.uint8)
    buf = np.empty((min(chunk, count), 3, image_size, image_size), dtype=np.float32)
    for start in range(0, count, chunk):
        stop = min(count, start + chunk)
        optics = []
        for i in range(start, stop):
            rng = np.random.default_rng([seed, SPLIT_CODES[split], i, 0x5C3E])
            buf[i - start], labels[i], opt = renderer.render(rng)
            optics.append(opt)
        images[start:stop] = _finish(buf[: stop - start], optics)
    return images, torch.from_numpy(labels)


class SyntheticSource:
    """Scenes rendered once at construction and held in memory (uint8)."""

    def __init__(self, cfg: DataConfig, split: str) -> None:
        count = cfg.train_images if split == "train" else cfg.val_images
        self.split = split
        self.images, self.labels = render_scenes(cfg.num_classes, cfg.image_size, cfg.seed, split, count)

    def __len__(self) -> int:
        return self.images.shape[0]

    def load(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.images[index], self.labels[index].to(torch.int64)


@register_dataset("synthetic")
class Synthetic:
    """Procedural scenes: ``cfg.num_classes`` classes, ``cfg.image_size`` square images,
    ``cfg.train_images`` / ``cfg.val_images`` scenes, deterministic in ``cfg.seed``."""

    @staticmethod
    def info(cfg: DataConfig) -> DatasetInfo:
        return DatasetInfo("synthetic", cfg.num_classes, synthetic_class_names(cfg.num_classes), IGNORE_INDEX,
                           val_batchable=True)

    @staticmethod
    def sources(cfg: DataConfig) -> tuple[SyntheticSource, SyntheticSource]:
        return SyntheticSource(cfg, "train"), SyntheticSource(cfg, "val")
