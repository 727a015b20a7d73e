"""Draw psegzoo's sample image: a small street scene, procedurally, so that it is ours to ship.

    python tools/make_sample_image.py [-o psegzoo/data/street.png]

The scene is a one-point perspective street in daylight (road with lane marks, sidewalks and
kerbs, building fronts with windows, trees, poles with a sign, cars, people, sky) at 512 x 256,
the layout a Cityscapes model expects. It is drawn with Pillow from a fixed seed, so running the
script again gives the same file. The PNG is psegzoo's own work under the project's licence
(Apache-2.0); it carries that in its text chunks.
"""
from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter
from PIL.PngImagePlugin import PngInfo

ROOT = Path(__file__).resolve().parents[1]
W, H = 512, 256
VP = (262.0, 112.0)  # vanishing point
HORIZON = VP[1]
Point = tuple[float, float]


def toward_vp(p: Point, t: float) -> Point:
    """The point a fraction ``t`` of the way from ``p`` to the vanishing point."""
    return (p[0] + (VP[0] - p[0]) * t, p[1] + (VP[1] - p[1]) * t)


def quad(near_a: Point, near_b: Point, t0: float, t1: float) -> list[Point]:
    """The part of the strip between ``near_a``/``near_b`` and the vanishing point from depth t0 to t1."""
    return [toward_vp(near_a, t0), toward_vp(near_b, t0), toward_vp(near_b, t1), toward_vp(near_a, t1)]


def depth_steps(n: int, start: float = 0.0, end: float = 0.93) -> list[float]:
    """Depths whose projected spacing shrinks like real, evenly spaced things (1/z)."""
    zs = np.linspace(1.0, 1.0 / (1.0 - end), n + 1)
    return [float(start + (1 - 1 / z) * (1 - start)) for z in zs]


def shade(color: Sequence[int], k: float) -> tuple[int, int, int]:
    return tuple(int(max(0, min(255, c * k))) for c in color)  # type: ignore[return-value]


def draw_sky(img: Image.Image) -> None:
    top, bottom = np.array([92, 142, 206]), np.array([196, 218, 236])
    t = np.linspace(0, 1, int(HORIZON) + 20)[:, None]
    rows = (top * (1 - t) + bottom * t).astype(np.uint8)
    sky = np.repeat(rows[:, None, :], W, axis=1)
    img.paste(Image.fromarray(sky), (0, 0))


def draw_facades(d: ImageDraw.ImageDraw, rng: np.random.Generator, side: int) -> None:
    """Building fronts receding along one side (``side`` -1: left, +1: right)."""
    x_near = 0.0 if side < 0 else float(W)
    ground = 196.0 if side < 0 else 200.0
    palette = [(150, 120, 98), (176, 164, 142), (120, 122, 128), (168, 96, 78), (200, 190, 170), (96, 104, 112)]
    steps = depth_steps(6, 0.0, 0.9)
    for i in range(len(steps) - 1):
        t0, t1 = steps[i], steps[i + 1]
        roof = -40.0 + rng.uniform(0, 70)
        base = palette[int(rng.integers(len(palette)))]
        face = quad((x_near, roof), (x_near, ground), t0, t1)
        d.polygon(face, fill=shade(base, 0.92 if side < 0 else 0.8))
        d.line([face[0], face[3]], fill=shade(base, 0.6), width=1)
        # Windows: a grid of quads in the facade's perspective.
        floors = int(rng.integers(3, 6))
        for f in range(floors):
            v0 = roof + (ground - roof) * (0.08 + f * 0.8 / floors)
            v1 = v0 + (ground - roof) * 0.45 / floors
            for k in range(3):
                a0 = t0 + (t1 - t0) * (0.12 + k * 0.3)
                a1 = a0 + (t1 - t0) * 0.16
                win = [toward_vp((x_near, v0), a0), toward_vp((x_near, v1), a0),
                       toward_vp((x_near, v1), a1), toward_vp((x_near, v0), a1)]
                glass = (58, 74, 92) if rng.random() < 0.8 else (214, 200, 150)
                d.polygon(win, fill=glass)
        # A door at street level.
        a0 = t0 + (t1 - t0) * 0.4
        a1 = a0 + (t1 - t0) * 0.15
        d.polygon([toward_vp((x_near, ground - 34), a0), toward_vp((x_near, ground), a0),
                   toward_vp((x_near, ground), a1), toward_vp((x_near, ground - 34), a1)], fill=(70, 52, 40))


def draw_far_buildings(d: ImageDraw.ImageDraw, rng: np.random.Generator) -> None:
    x = 214.0
    while x < 312:
        w = float(rng.uniform(8, 18))
        top = HORIZON - float(rng.uniform(10, 34))
        color = shade((150, 150, 156), float(rng.uniform(0.8, 1.1)))
        d.rectangle([x, top, x + w, HORIZON + 2], fill=color)
        for yy in np.arange(top + 3, HORIZON - 2, 4):
            d.line([(x + 2, yy), (x + w - 2, yy)], fill=shade(color, 0.7), width=1)
        x += w


def draw_ground(d: ImageDraw.ImageDraw) -> None:
    # Road between the kerbs, sidewalks outside them.
    d.polygon([(0, 256), (0, 196), VP, (W, 200), (W, 256)], fill=(170, 166, 160))  # sidewalks
    d.polygon([(60, 256), (0, 232), VP, (W, 236), (452, 256)], fill=(176, 172, 168))
    d.polygon([(-120, 256), VP, (632, 256)], fill=(82, 82, 88))  # road surface
    for near in ((-120.0, 256.0), (632.0, 256.0)):  # kerbs
        d.line([near, VP], fill=(200, 198, 192), width=3)
    # Dashed centre line and solid edge lines.
    for i, t in enumerate(depth_steps(14, 0.0, 0.95)[:-1]):
        if i % 2 == 0:
            t1 = depth_steps(14, 0.0, 0.95)[i + 1]
            d.polygon(quad((250.0, 256.0), (274.0, 256.0), t, t1), fill=(236, 236, 228))
    for near in ((-40.0, 256.0), (552.0, 256.0)):
        d.line([near, toward_vp(near, 0.95)], fill=(226, 226, 220), width=2)
    # A crossing near the viewer.
    for k in range(-6, 7):
        x = 262 + k * 34
        d.polygon([(x - 10, 252), (x + 10, 252), (x + 8, 240), (x - 8, 240)], fill=(228, 228, 222))


def draw_tree(d: ImageDraw.ImageDraw, rng: np.random.Generator, x: float, ground: float, size: float) -> None:
    d.rectangle([x - size * 0.06, ground - size * 0.9, x + size * 0.06, ground], fill=(92, 68, 46))
    for _ in range(9):
        cx = x + float(rng.normal(0, size * 0.18))
        cy = ground - size * 1.05 + float(rng.normal(0, size * 0.14))
        r = size * float(rng.uniform(0.22, 0.34))
        green = shade((70, 112, 52), float(rng.uniform(0.75, 1.2)))
        d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=green)


def draw_pole(d: ImageDraw.ImageDraw, x: float, ground: float, height: float, sign: bool) -> None:
    d.rectangle([x - 1.5, ground - height, x + 1.5, ground], fill=(70, 72, 76))
    if sign:
        r = height * 0.12
        cy = ground - height + r
        d.ellipse([x - r, cy - r, x + r, cy + r], fill=(200, 30, 30))
        d.ellipse([x - r * 0.7, cy - r * 0.7, x + r * 0.7, cy + r * 0.7], fill=(240, 240, 240))
    else:
        d.rectangle([x - 5, ground - height - 4, x + 5, ground - height + 22], fill=(40, 40, 40))
        for k, c in enumerate(((220, 40, 30), (230, 180, 30), (40, 200, 80))):
            cy = ground - height + 1 + k * 8
            d.ellipse([x - 3, cy - 3 + 1, x + 3, cy + 3 + 1], fill=c if k == 2 else shade(c, 0.35))


def draw_car(d: ImageDraw.ImageDraw, x: float, ground: float, w: float, color: Sequence[int]) -> None:
    h = w * 0.42
    body = [x - w / 2, ground - h * 0.62, x + w / 2, ground - h * 0.12]
    d.rounded_rectangle(body, radius=w * 0.06, fill=tuple(color))
    cab = [(x - w * 0.34, ground - h * 0.62), (x - w * 0.24, ground - h), (x + w * 0.22, ground - h),
           (x + w * 0.34, ground - h * 0.62)]
    d.polygon(cab, fill=shade(color, 0.9))
    d.polygon([(x - w * 0.3, ground - h * 0.64), (x - w * 0.22, ground - h * 0.94), (x + w * 0.2, ground - h * 0.94),
               (x + w * 0.3, ground - h * 0.64)], fill=(60, 72, 86))
    for wx in (x - w * 0.3, x + w * 0.3):
        r = w * 0.11
        d.ellipse([wx - r, ground - 2 * r, wx + r, ground], fill=(24, 24, 26))
        d.ellipse([wx - r * 0.45, ground - r * 1.45, wx + r * 0.45, ground - r * 0.55], fill=(150, 150, 156))
    d.rectangle([x - w * 0.46, ground - h * 0.5, x - w * 0.4, ground - h * 0.4], fill=(250, 236, 180))
    d.rectangle([x + w * 0.4, ground - h * 0.5, x + w * 0.46, ground - h * 0.4], fill=(250, 236, 180))


def draw_person(d: ImageDraw.ImageDraw, x: float, ground: float, height: float, shirt: Sequence[int]) -> None:
    head = height * 0.13
    d.ellipse([x - head / 2, ground - height, x + head / 2, ground - height + head], fill=(206, 160, 130))
    d.rounded_rectangle([x - height * 0.12, ground - height + head, x + height * 0.12, ground - height * 0.45],
                        radius=2, fill=tuple(shirt))
    d.rectangle([x - height * 0.1, ground - height * 0.45, x - height * 0.01, ground], fill=(40, 44, 70))
    d.rectangle([x + height * 0.01, ground - height * 0.45, x + height * 0.1, ground], fill=(40, 44, 70))


def draw(seed: int = 7) -> Image.Image:
    rng = np.random.default_rng(seed)
    img = Image.new("RGB", (W, H))
    draw_sky(img)
    d = ImageDraw.Draw(img)
    draw_far_buildings(d, rng)
    draw_facades(d, rng, -1)
    draw_facades(d, rng, +1)
    draw_ground(d)
    for t in (0.0, 0.45, 0.7, 0.83):  # trees along both sidewalks, smaller with distance
        for near_x, near_g in ((22.0, 226.0), (492.0, 230.0)):
            x, g = toward_vp((near_x, near_g), t)
            draw_tree(d, rng, x, g, 90 * (1 - t))
    for near_x, near_g, sign in ((70.0, 240.0, True), (446.0, 242.0, False)):
        x, g = toward_vp((near_x, near_g), 0.25)
        draw_pole(d, x, g, 120 * 0.75, sign)
    draw_car(d, 300, 168, 46, (40, 70, 150))
    draw_car(d, 220, 190, 82, (180, 40, 36))
    draw_car(d, 372, 222, 150, (210, 210, 214))
    draw_person(d, 118, 206, 52, (60, 130, 90))
    draw_person(d, 136, 204, 50, (200, 150, 60))
    draw_person(d, 430, 214, 58, (120, 60, 140))
    # Lens softness: edges as a camera gives them, not as a vector drawing (grain would triple the file size).
    return img.filter(ImageFilter.GaussianBlur(0.6))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-o", "--output", type=Path, default=ROOT / "psegzoo" / "data" / "street.png")
    args = parser.parse_args()
    info = PngInfo()
    info.add_text("Title", "psegzoo sample street scene")
    info.add_text("Source", "drawn procedurally by tools/make_sample_image.py (psegzoo)")
    info.add_text("License", "Apache-2.0, as psegzoo")
    args.output.parent.mkdir(parents=True, exist_ok=True)
    draw().save(args.output, format="PNG", optimize=True, pnginfo=info)
    print(f"{args.output} ({args.output.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
