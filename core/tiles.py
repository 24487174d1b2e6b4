"""Training data on the downsampled grid: positive masks, random tiles with their label grids, augmentation."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def disk_offsets(radius: float) -> tuple[np.ndarray, np.ndarray]:
    """Integer (dy, dx) with dy² + dx² ≤ r²."""
    r = int(np.floor(radius))
    dy, dx = np.mgrid[-r:r + 1, -r:r + 1]
    inside = dy * dy + dx * dx <= radius * radius
    return dy[inside], dx[inside]


def positive_mask(shape: tuple[int, int], rows: np.ndarray, cols: np.ndarray, radius: float) -> np.ndarray:
    """uint8 mask, 1 on every pixel within `radius` of a (row, col) centre (centres rounded to pixels)."""
    mask = np.zeros(shape, dtype=np.uint8)
    if len(rows) == 0:
        return mask
    dy, dx = disk_offsets(radius)
    r = np.rint(np.asarray(rows, dtype=float)).astype(np.int64)[:, None] + dy[None]
    c = np.rint(np.asarray(cols, dtype=float)).astype(np.int64)[:, None] + dx[None]
    ok = (r >= 0) & (r < shape[0]) & (c >= 0) & (c < shape[1])
    mask[r[ok], c[ok]] = 1
    return mask


@dataclass
class TileSampler:
    """Draws training tiles: an input crop of a (padded) image and the label grid of its native-stride outputs.

    A tile covers `out` x `out` image pixels; the network sees them plus `pad` pixels of context on each side, and
    its outputs sit at every `stride`-th pixel, so the label grid is mask[y0::stride, x0::stride] over the tile.
    Images are padded with `pad` zeros (the normalised ice level) so tiles may reach the micrograph edge.
    """

    images: list[np.ndarray]  # padded by `pad` on each side
    masks: list[np.ndarray]  # unpadded, uint8
    out: int  # tile side in image pixels (a multiple of stride)
    pad: int
    stride: int
    rotations: str = "90"  # 90 | none
    sampling: str = "random"  # random (uniform positions) | grid (passes over a grid; orientations in blocks of 8)

    def __post_init__(self) -> None:
        areas = np.array([m.size for m in self.masks], dtype=float)
        self.weights = areas / areas.sum()
        self._queues: dict[int, list[tuple[int, int, int]]] = {}  # grid passes, one per random stream
        self._orientations: dict[int, list[int]] = {}  # grid: shuffled blocks of the 8 orientations, per stream

    def _grid(self, rng: np.random.Generator, batch: int) -> list[tuple[int, int, int]]:
        """The next `batch` (micrograph, y0, x0) of shuffled passes over a jittered grid: each pass cuts one tile per
        grid cell of every micrograph, so every region (and every labelled particle) is seen equally often."""
        n, j = self.out // self.stride, self.stride
        queue = self._queues.setdefault(id(rng), [])
        while len(queue) < batch:
            cells = []
            for i, mask in enumerate(self.masks):
                h, w = mask.shape
                span_y, span_x = max(1, h - (n - 1) * j), max(1, w - (n - 1) * j)
                oy, ox = int(rng.integers(self.out)), int(rng.integers(self.out))
                cells += [(i, (oy + a * self.out) % span_y, (ox + b * self.out) % span_x)
                          for a in range(-(-h // self.out)) for b in range(-(-w // self.out))]
            queue += [cells[k] for k in rng.permutation(len(cells))]
        out = queue[:batch]
        del queue[:batch]
        return out

    def _orientation(self, rng: np.random.Generator) -> tuple[int, int]:
        """(quarter turns, flip) of the next grid tile: the 8 orientations in shuffled blocks, so any 8 consecutive
        tiles of a block (a batch of 8) see each orientation once."""
        queue = self._orientations.setdefault(id(rng), [])
        if not queue:
            queue += rng.permutation(8).tolist()
        o = queue.pop()
        return o % 4, o // 4

    @property
    def input_size(self) -> int:
        """S, the side of a tile's input: out - stride + 2 pad + 1."""
        return (self.out // self.stride - 1) * self.stride + 2 * self.pad + 1

    def sample(self, rng: np.random.Generator, batch: int) -> tuple[np.ndarray, np.ndarray]:
        """(inputs [B, 1, S, S] float32, labels [B, n, n] uint8) with S = out - stride + 2 pad + 1, n = out / stride."""
        j, p = self.stride, self.pad
        n = self.out // j
        size = self.input_size
        xs = np.empty((batch, 1, size, size), dtype=np.float32)
        ys = np.empty((batch, n, n), dtype=np.uint8)
        grid = self._grid(rng, batch) if self.sampling == "grid" else None
        picks = rng.choice(len(self.masks), size=batch, p=self.weights) if grid is None else [g[0] for g in grid]
        for b, i in enumerate(picks):
            mask = self.masks[i]
            h, w = mask.shape
            if grid is None:
                y0 = int(rng.integers(0, max(1, h - (n - 1) * j)))
                x0 = int(rng.integers(0, max(1, w - (n - 1) * j)))
            else:
                y0, x0 = grid[b][1], grid[b][2]
            img = self.images[i][y0:y0 + size, x0:x0 + size]
            lab = mask[y0:y0 + (n - 1) * j + 1:j, x0:x0 + (n - 1) * j + 1:j]
            if img.shape != (size, size) or lab.shape != (n, n):  # micrograph smaller than a tile: pad with ice
                img = np.pad(img, ((0, size - img.shape[0]), (0, size - img.shape[1])))
                lab = np.pad(lab, ((0, n - lab.shape[0]), (0, n - lab.shape[1])), constant_values=2)
            if self.rotations != "none":
                k, flip = self._orientation(rng) if grid is not None else (int(rng.integers(4)), rng.integers(2))
                img, lab = np.rot90(img, k), np.rot90(lab, k)
                if flip:
                    img, lab = img[:, ::-1], lab[:, ::-1]
            xs[b, 0] = img
            ys[b] = lab
        return xs, ys


def degrade(tiles: np.ndarray, rng: np.random.Generator, contrast: tuple[float, float] = (0.5, 1.0),
            noise: float = 1.0) -> np.ndarray:
    """Lower each normalised tile's contrast and add noise, keeping unit variance: (g x + s n) / sqrt(g² + s²).

    g ~ U(contrast) scales the signal, s ~ U(0, noise) is the added noise's s.d. (thicker ice, lower dose).
    """
    b = tiles.shape[0]
    g = rng.uniform(*contrast, size=(b,) + (1,) * (tiles.ndim - 1)).astype(np.float32)
    s = rng.uniform(0.0, noise, size=g.shape).astype(np.float32)
    n = rng.standard_normal(tiles.shape, dtype=np.float32)
    return (g * tiles + s * n) / np.sqrt(g * g + s * s)
