"""``shapes``: a procedurally generated image task that needs the whole image, bundled with the project.

Every image is 32x32 RGB on a noisy background and holds a few small glyphs (10 kinds, 7x7 pixels, each in a
random colour, jittered inside a 4x4 grid of 8x8 cells, so a glyph straddles several ViT patches). One kind appears
twice and 3-5 other kinds once each; the label is the kind that appears twice. No single glyph, patch or
neighbourhood decides the class: a model has to recognise every glyph and compare them across the image, which is
what attention is for; colour and position are distractors.

The generator is seeded and deterministic: the same ``(count, seed)`` gives the same images on every machine (numpy's
PCG64). Nothing is downloaded or cached; 10,000 images take about a second.
"""

from __future__ import annotations

import numpy as np

IMG_SIZE = 32
GLYPH = 7
CELL = 8
GRID = IMG_SIZE // CELL

# the 10 glyphs (one per class, in label order) on a 7x7 grid, '#' = ink
_GLYPHS = (
    ("#######", "#######", "##...##", "##...##", "##...##", "#######", "#######"),  # 0 ring
    ("...#...", "...#...", "...#...", "#######", "...#...", "...#...", "...#..."),  # 1 plus
    ("#.....#", ".#...#.", "..#.#..", "...#...", "..#.#..", ".#...#.", "#.....#"),  # 2 cross
    ("...#...", "..###..", ".#####.", "#######", ".......", ".......", "......."),  # 3 triangle up
    (".......", ".......", ".......", "#######", ".#####.", "..###..", "...#..."),  # 4 triangle down
    ("#######", ".......", ".......", "#######", ".......", ".......", "#######"),  # 5 three bars
    ("#..#..#", "#..#..#", "#..#..#", "#..#..#", "#..#..#", "#..#..#", "#..#..#"),  # 6 three columns
    ("#######", "#......", "#......", "#......", "#......", "#......", "#......"),  # 7 corner
    ("...#...", "..#.#..", ".#...#.", "#.....#", ".#...#.", "..#.#..", "...#..."),  # 8 diamond
    ("#.#.#.#", ".#.#.#.", "#.#.#.#", ".#.#.#.", "#.#.#.#", ".#.#.#.", "#.#.#.#"),  # 9 checker
)
MASKS = np.array([[[c == "#" for c in row] for row in glyph] for glyph in _GLYPHS])
CLASSES = len(MASKS)
BACKGROUND = -0.7


def generate(count: int, seed: int, copies: int = 2, distractors: tuple[int, int] = (3, 5),
             noise: float = 0.25) -> tuple[np.ndarray, np.ndarray]:
    """``count`` images ``[N, 3, 32, 32]`` float32 in [-1, 1] and their labels ``[N]`` int64, balanced over the
    10 classes (shuffled).

    Each image holds the label's glyph ``copies`` times and ``distractors`` (a count drawn from the inclusive range)
    other kinds once each, at distinct grid cells; each glyph in a random bright colour on a dark background, every
    pixel with Gaussian noise of std ``noise``.
    """
    if count < 1:
        raise ValueError(f"count must be positive, got {count}")
    rng = np.random.default_rng(seed)
    labels = np.arange(count) % CLASSES
    rng.shuffle(labels)
    slots = copies + distractors[1]
    others = rng.integers(distractors[0], distractors[1] + 1, size=count)
    keys = rng.random((count, CLASSES))
    keys[np.arange(count), labels] = np.inf  # the label's kind sorts last: the distractors are other kinds
    kinds = np.concatenate([np.repeat(labels[:, None], copies, 1), np.argsort(keys, 1)[:, :distractors[1]]], 1)
    cells = np.argsort(rng.random((count, GRID * GRID)), 1)[:, :slots]  # distinct cells
    ys = (cells // GRID) * CELL + rng.integers(0, CELL - GLYPH + 1, size=(count, slots))
    xs = (cells % GRID) * CELL + rng.integers(0, CELL - GLYPH + 1, size=(count, slots))
    colours = rng.uniform(0.2, 1.0, size=(count, slots, 3)).astype(np.float32)
    np.put_along_axis(colours, rng.integers(0, 3, size=(count, slots, 1)), 1.0, 2)  # one channel at full brightness
    image, slot = np.nonzero(np.arange(slots) < (copies + others)[:, None])  # the glyphs each image holds
    kinds, ys, xs, colours = kinds[image, slot], ys[image, slot], xs[image, slot], colours[image, slot]
    ink = np.zeros((count, IMG_SIZE, IMG_SIZE), dtype=bool)
    colour = np.zeros((count, IMG_SIZE, IMG_SIZE, 3), dtype=np.float32)
    for dy in range(GLYPH):  # glyphs sit in distinct cells and never overlap: one write per glyph pixel
        for dx in range(GLYPH):
            on = MASKS[kinds, dy, dx]
            at = (image[on], ys[on] + dy, xs[on] + dx)
            ink[at] = True
            colour[at] = colours[on]
    images = np.where(ink[:, None], colour.transpose(0, 3, 1, 2), np.float32(BACKGROUND))
    images += np.float32(noise) * rng.standard_normal(images.shape, dtype=np.float32)
    np.clip(images, -1, 1, out=images)
    return images, labels.astype(np.int64)
