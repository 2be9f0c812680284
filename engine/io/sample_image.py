"""Deterministic synthetic fluorescence image of cell nuclei, with ground truth.

The engine needs realistic-looking data that exists without any download: the
``ngff-engine sample`` command, the tests and the benchmarks all run on images
made here. The image mimics a widefield/confocal nuclear stain (bright,
slightly textured ellipsoids with soft edges on a dim, uneven background, plus
photon-like noise) so that a standard gaussian -> Otsu -> label pipeline and a
scribble-trained pixel classifier behave on it much as they do on real data,
while the exact instance labels are known.

Reproducibility matters more than speed here (benchmarks and tests compare
against stored numbers), so the output depends only on ``(shape, seed, radius,
density)``: all randomness comes from one ``numpy.random.Generator(PCG64(seed))``
consumed in a fixed order, and voxel values are computed only with operations
that IEEE 754 rounds exactly (+, -, *, /, sqrt, floor): no sin/cos/exp, whose
results vary between CPUs and libm builds, and no BLAS reductions.

Large volumes (up to 256x1024x1024) are cheap because every nucleus is drawn
only inside its own bounding box and the background/noise pass runs plane by
plane in float32; peak memory is about the two output arrays.
"""

from __future__ import annotations

import math
import operator
from dataclasses import dataclass

import numpy as np
from scipy.spatial import cKDTree

__all__ = ["NucleiSample", "make_annotations", "make_nuclei", "sample_rois"]

# --- appearance ------------------------------------------------------------
_BG_BASE = 105.0  # background = base + span * smooth field in [0, 1]
_BG_SPAN = 40.0  # -> about 105..145, plus +-5 slow drift along z in 3D
_BG_Z_SPAN = 10.0
_BRIGHTNESS = (500.0, 1500.0)  # range of per-nucleus intensity above background
_TEXTURE_AMP = (0.08, 0.2)  # relative amplitude of the chromatin-like texture
_TEXTURE_PERIOD = (1.2, 2.2)  # texture period in units of the semi-axis
_EDGE_WIDTH = 1.5  # px over which intensity ramps 0 -> 1 across the boundary
# Ramp value at the truth boundary: 0.25 puts most of the ramp inside, which
# offsets the outward bias of blur + Otsu (a low threshold on a thin object).
_EDGE_OFFSET = 0.25
_READ_NOISE = 18.0  # Gaussian sd at zero signal
_GAIN = 0.8  # variance per unit signal (Poisson-like shot noise)

# --- geometry ---------------------------------------------------------------
_AXIS_JITTER = (0.8, 1.2)  # semi-axis = radius * U(jitter), per axis
_Z_ASPECT = 0.6  # z semi-axis / yx semi-axis (axial anisotropy, ~half)
_CELL = 2.5  # "what fits": one nucleus per box of _CELL semi-axes per side
_SEP = 1.15  # min normalised centre distance for most nuclei (a gap remains)
_SEP_TOUCH = 0.9  # ... and for the few allowed to touch / overlap slightly
_P_TOUCH = 0.1
_ATTEMPTS_PER_NUCLEUS = 30  # placement gives up after this many tries each

_PLANE_CHUNK = 1 << 20  # voxels per float32 chunk in the background/noise pass


@dataclass(frozen=True, eq=False)
class NucleiSample:
    """A synthetic image and its exact instance labels.

    ``eq=False`` because element-wise array comparison has no single truth
    value; compare fields with ``np.array_equal`` instead.
    """

    image: np.ndarray  # uint16, shape == requested shape
    truth: np.ndarray  # uint32 instance labels, 0 = background, ids 1..n
    n_nuclei: int


def make_nuclei(
    shape: tuple[int, ...],
    seed: int = 0,
    *,
    radius: float | None = None,
    density: float = 0.6,
) -> NucleiSample:
    """Make a reproducible nuclei image of ``shape`` (y, x) or (z, y, x).

    ``radius`` is the typical y/x semi-axis in pixels (default scales with the
    image: min(y, x) / 16, clamped to 3..8); z semi-axes are 0.6 of it to mimic
    axial anisotropy (not 0.5: thinner nuclei lose too much to a sigma=2
    blur for the gaussian -> Otsu pipeline to reach Dice 0.9). ``density`` in
    [0, 1] is the fraction of the nuclei that would fit (one per box of 2.5
    semi-axes a side) to place; placement stops early if random packing
    cannot reach it. Ids follow placement order. Raises ValueError for
    shapes that are not 2D/3D with positive sizes, and for bad options.
    """
    dims = _check_shape(shape)
    seed = _check_seed(seed)
    if not (_is_real(density) and 0.0 <= density <= 1.0):
        raise ValueError(f"density must be a number in [0, 1], got {density!r}")
    if radius is None:
        radius = min(8.0, max(3.0, min(dims[-2:]) / 16.0))
    elif not (_is_real(radius) and 0.5 <= radius < math.inf):
        raise ValueError(f"radius must be a finite number >= 0.5 px, got {radius!r}")
    radius = float(radius)

    rng = np.random.Generator(np.random.PCG64(seed))
    nominal = np.full(len(dims), radius)
    if len(dims) == 3:
        nominal[0] = max(1.0, _Z_ASPECT * radius)

    centres, axes = _place(rng, dims, nominal, float(density))
    image = _zeros(dims, np.uint16)  # holds the nuclei signal first
    truth = _zeros(dims, np.uint32)
    n = _draw_nuclei(rng, image, truth, centres, axes)
    _add_background_and_noise(rng, image)
    return NucleiSample(image=image, truth=truth, n_nuclei=n)


def _zeros(dims: tuple[int, ...], dtype: type) -> np.ndarray:
    """np.zeros without calloc: numpy's empty() path asks for huge pages, which
    makes first-touching a GiB-sized volume several times faster."""
    out = np.empty(dims, dtype=dtype)
    out.fill(0)
    return out


# --- validation ---------------------------------------------------------------


def _check_shape(shape: object) -> tuple[int, ...]:
    """Return shape as a tuple of ints, or raise ValueError saying what is wrong."""
    try:
        dims = tuple(operator.index(s) for s in shape)  # type: ignore[union-attr]
    except TypeError:
        raise ValueError(f"shape must be a tuple of integers, got {shape!r}") from None
    if len(dims) not in (2, 3):
        raise ValueError(
            f"shape must be 2D (y, x) or 3D (z, y, x), got {len(dims)} dimension(s): {shape!r}"
        )
    if any(s <= 0 for s in dims):
        raise ValueError(f"shape sizes must all be positive, got {shape!r}")
    return dims


def _is_real(value: object) -> bool:
    """True for Python/numpy ints and floats (not bools, strings or arrays)."""
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)


def _check_seed(seed: object) -> int:
    """Seeds are non-negative integers so that PCG64 streams are well defined."""
    try:
        value = operator.index(seed)  # type: ignore[arg-type]
    except TypeError:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}") from None
    if value < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    return value


# --- placement ------------------------------------------------------------------


def _place(
    rng: np.random.Generator, dims: tuple[int, ...], nominal: np.ndarray, density: float
) -> tuple[np.ndarray, np.ndarray]:
    """Random sequential placement with rejection against earlier centres.

    Equivalent to testing candidates one at a time in draw order, but done in
    batches (KD-tree against accepted nuclei, then a greedy pass inside the
    batch) so that tens of thousands of nuclei place in well under a second.
    Two nuclei conflict when ||(c_i - c_j) / (a_i + a_j)|| < sep of the later
    one; 1.0 is "just touching" for same-size spheres.
    """
    ndim = len(dims)
    capacity = math.prod(dims) / math.prod(_CELL * nominal)
    target = int(round(density * capacity))
    if density > 0:
        target = max(target, 1)
    budget = _ATTEMPTS_PER_NUCLEUS * target
    batch = max(256, min(target, 8192))
    extent = np.array(dims, dtype=np.float64) - 1.0
    # Farthest (in nominal units) two centres can be and still conflict.
    reach = max(_SEP, _SEP_TOUCH) * 2.0 * _AXIS_JITTER[1] * (1.0 + 1e-9)

    centres = np.empty((0, ndim))
    axes = np.empty((0, ndim))
    drawn = 0
    while len(centres) < target and drawn < budget:
        m = min(batch, budget - drawn)
        drawn += m
        c = rng.random((m, ndim)) * extent  # centre voxel always inside
        a = nominal * rng.uniform(*_AXIS_JITTER, size=(m, ndim))
        sep2 = np.where(rng.random(m) < _P_TOUCH, _SEP_TOUCH, _SEP) ** 2
        s = c / nominal

        ok = np.ones(m, dtype=bool)
        if len(centres):
            hits = cKDTree(centres / nominal).query_ball_point(s, reach)
            counts = np.fromiter((len(h) for h in hits), dtype=np.intp, count=m)
            if counts.sum():
                who = np.repeat(np.arange(m), counts)
                other = np.fromiter(
                    (j for h in hits for j in h), dtype=np.intp, count=int(counts.sum())
                )
                q = (((c[who] - centres[other]) / (a[who] + axes[other])) ** 2).sum(axis=1)
                ok[who[q < sep2[who]]] = False

        cand = np.flatnonzero(ok)
        earlier: dict[int, list[int]] = {}
        if len(cand) > 1:
            pairs = cKDTree(s[cand]).query_pairs(reach, output_type="ndarray")
            if len(pairs):
                i = cand[pairs.min(axis=1)]
                j = cand[pairs.max(axis=1)]
                q = (((c[i] - c[j]) / (a[i] + a[j])) ** 2).sum(axis=1)
                bad = q < sep2[j]
                for ii, jj in zip(i[bad].tolist(), j[bad].tolist(), strict=True):
                    earlier.setdefault(jj, []).append(ii)

        taken: list[int] = []
        taken_set: set[int] = set()
        room = target - len(centres)
        for k in cand.tolist():
            if len(taken) >= room:
                break
            if any(e in taken_set for e in earlier.get(k, ())):
                continue
            taken.append(k)
            taken_set.add(k)
        centres = np.concatenate([centres, c[taken]])
        axes = np.concatenate([axes, a[taken]])
    return centres, axes


# --- drawing --------------------------------------------------------------------


def _bump_wave(t: np.ndarray) -> np.ndarray:
    """Smooth periodic wave in [-1, 1] from a polynomial (cos-like, no libm)."""
    t = t - np.floor(t)
    return 32.0 * (t * (1.0 - t)) ** 2 - 1.0


def _draw_nuclei(
    rng: np.random.Generator,
    image: np.ndarray,
    truth: np.ndarray,
    centres: np.ndarray,
    axes: np.ndarray,
) -> int:
    """Stamp each nucleus into its bounding box; return the number of ids used.

    Truth: voxels whose centre lies inside the ellipsoid and that no earlier
    nucleus owns. A nucleus left with no voxel (possible only with a tiny
    user radius) gets no id and no intensity, so ids stay consecutive.
    Intensity: brightness * texture * edge ramp, where the ramp uses a
    first-order distance to the surface, (1 - |u|) / |grad |u||, so the soft
    edge is _EDGE_WIDTH px wide on every axis, whatever the anisotropy;
    overlapping nuclei take the brighter value.
    """
    n = len(centres)
    ndim = image.ndim
    dims = np.array(image.shape)
    # Mean of three uniforms: bell-shaped on the full range, so a few nuclei
    # are dim or bright but most sit where one global threshold suits them.
    lo_b, hi_b = _BRIGHTNESS
    bright = lo_b + (hi_b - lo_b) * rng.random((n, 3)).mean(axis=1)
    amp = rng.uniform(*_TEXTURE_AMP, size=n)
    period = axes * rng.uniform(*_TEXTURE_PERIOD, size=(n, ndim))
    phase = rng.random((n, ndim))

    lo = np.maximum(np.floor(centres - axes - 1.0), 0).astype(np.intp)
    hi = np.minimum(np.ceil(centres + axes + 1.0) + 1, dims).astype(np.intp)
    size = hi - lo

    # Per-axis 1D factors for every nucleus at once (rows padded to the
    # longest box), so the loop below only does the unavoidable nD work.
    # u2: squared normalised coordinate; g2: its share of |grad |u||^2 * w^2,
    # so sqrt(sum g2) = w * |grad |u|| near the surface; wave: texture factor.
    w2 = _EDGE_WIDTH * _EDGE_WIDTH
    u2s, g2s, waves = [], [], []
    for d in range(ndim):
        x = lo[:, d, None] + np.arange(int(size[:, d].max(initial=0))) - centres[:, d, None]
        u2 = (x / axes[:, d, None]) ** 2
        g2s.append((u2 * (w2 / axes[:, d, None] ** 2)).astype(np.float32))
        u2s.append(u2.astype(np.float32))
        wave = _bump_wave(x / period[:, d, None] + phase[:, d, None])
        if d == 0:
            wave *= (amp * bright)[:, None]
        waves.append(wave.astype(np.float32))
    spread = [tuple(slice(None) if e == d else None for e in range(ndim)) for d in range(ndim)]

    next_id = 1
    with np.errstate(divide="ignore", invalid="ignore"):
        for k, (lo_k, size_k) in enumerate(zip(lo.tolist(), size.tolist(), strict=True)):
            box = tuple(slice(a, a + m) for a, m in zip(lo_k, size_k, strict=True))
            q = u2s[0][k, : size_k[0]][spread[0]]
            g = g2s[0][k, : size_k[0]][spread[0]]
            tex = waves[0][k, : size_k[0]][spread[0]]
            for d in range(1, ndim):
                q = q + u2s[d][k, : size_k[d]][spread[d]]
                g = g + g2s[d][k, : size_k[d]][spread[d]]
                tex = tex * waves[d][k, : size_k[d]][spread[d]]

            tbox = truth[box]
            own = q < 1.0
            own &= tbox == 0
            if not own.any():
                continue
            np.copyto(tbox, next_id, where=own)
            next_id += 1

            ramp = np.sqrt(q)
            np.subtract(1.0, ramp, out=ramp)
            np.sqrt(g, out=g)
            np.divide(ramp, g, out=ramp)  # centre: 1/0 = inf -> 1 below
            ramp += _EDGE_OFFSET
            np.clip(ramp, 0.0, 1.0, out=ramp)
            tex += np.float32(bright[k])
            ramp *= tex
            ibox = image[box]
            np.maximum(ibox, ramp, out=ibox, casting="unsafe")
    return next_id - 1


def _value_noise_1d(
    rng: np.random.Generator, n: int, cell: float
) -> tuple[int, np.ndarray, np.ndarray]:
    """Coarse-grid size, left-node index and smoothstep weight for n samples.

    A random sub-cell offset keeps the grid from lining up with the image.
    """
    nodes = int(n // cell) + 3
    pos = np.arange(n, dtype=np.float64) / cell + rng.random()
    idx = np.floor(pos).astype(np.intp)
    t = pos - idx
    w = t * t * (3.0 - 2.0 * t)  # smoothstep: C1-continuous field
    return nodes, idx, w


def _smooth_field(rng: np.random.Generator, sizes: tuple[int, ...], cell: float) -> np.ndarray:
    """Smooth random field in [0, 1] (value noise), separable interpolation only."""
    grids = [_value_noise_1d(rng, n, cell) for n in sizes]
    field = rng.random(tuple(g[0] for g in grids))
    for axis, (_, idx, w) in enumerate(grids):
        shape1 = [1] * len(sizes)
        shape1[axis] = -1
        w = w.reshape(shape1)
        field = np.take(field, idx, axis=axis) * (1.0 - w) + np.take(field, idx + 1, axis=axis) * w
    return field


def _add_background_and_noise(rng: np.random.Generator, image: np.ndarray) -> None:
    """Turn the nuclei signal in ``image`` into the final uint16 image, in place.

    Works in float32 chunks along axis 0 so memory stays near the output size.
    Noise has variance read^2 + gain * signal (Poisson-like) and a near-Gaussian
    shape: the sum of four uniform random bytes (Irwin-Hall), which is ~3x
    cheaper than ``standard_normal`` and uses no libm, so it is bit-exact
    everywhere.
    """
    ndim = image.ndim
    ny, nx = image.shape[-2:]
    cell = max(16.0, max(ny, nx) / 2.0)
    bg_yx = (_BG_BASE + _BG_SPAN * _smooth_field(rng, (ny, nx), cell)).astype(np.float32)
    if ndim == 3:
        nz = image.shape[0]
        bg_z = _BG_Z_SPAN * (_smooth_field(rng, (nz,), max(16.0, nz / 2.0)) - 0.5)
        bg_z = bg_z.astype(np.float32)
    plane = math.prod(image.shape[1:])
    step = max(1, _PLANE_CHUNK // plane)
    # sd = sqrt(gain * s + read^2) / sd(sum of 4 bytes), folded into one sqrt.
    norm2 = 4.0 * (256.0**2 - 1.0) / 12.0
    gain = np.float32(_GAIN / norm2)
    read2 = np.float32(_READ_NOISE**2 / norm2)
    byte_mean = np.float32(4 * 255 / 2)
    lanes = np.uint32(0x00FF00FF)
    low16 = np.uint32(0xFFFF)
    buf = np.empty((step,) + image.shape[1:], dtype=np.float32)
    noise = np.empty_like(buf)
    sd = np.empty_like(buf)
    acc = np.empty(buf.shape, dtype=np.uint32)
    for z0 in range(0, image.shape[0], step):
        z1 = min(z0 + step, image.shape[0])
        out = image[z0:z1]
        s, e, v, u = buf[: z1 - z0], noise[: z1 - z0], sd[: z1 - z0], acc[: z1 - z0]
        np.copyto(s, out, casting="unsafe")
        if ndim == 3:
            s += bg_yx
            s += bg_z[z0:z1, None, None]
        else:
            s += bg_yx[z0:z1]
        np.multiply(s, gain, out=v)
        v += read2
        np.sqrt(v, out=v)
        # Sum the four bytes of each random uint32 (SWAR: two 16-bit lanes).
        x = rng.integers(0, 1 << 32, size=s.shape, dtype=np.uint32)
        np.bitwise_and(x, lanes, out=u)
        x >>= 8
        x &= lanes
        u += x
        np.right_shift(u, 16, out=x)
        u &= low16
        u += x
        np.copyto(e, u, casting="unsafe")
        e -= byte_mean
        e *= v
        s += e
        s += 0.5  # round to nearest on the truncating cast below
        np.clip(s, 0.0, 65535.0, out=s)
        np.copyto(out, s, casting="unsafe")


# --- ROIs and scribble annotations -------------------------------------------------

BACKGROUND, NUCLEUS = 1, 2  # scribble classes in `labels/annotations`
_STROKE_SHARE = 0.2  # share of the nuclei in the train ROI that get a stroke ...
_MIN_STROKES = 3  # ... at least this many (if there are) ...
_MAX_STROKES = 200  # ... at most this many
_BG_PER_NUCLEUS = 2  # background strokes per nucleus stroke (background varies more)
_BG_STROKE = (12, 32)  # background stroke length in px
_BG_MARGIN = 3  # background strokes keep this many px (y/x; 1 in z) from any nucleus


def sample_rois(shape: tuple[int, ...]) -> dict[str, tuple[slice, ...]]:
    """Disjoint `train` and `test` boxes: the top-left and the bottom-right quarter in
    y/x, every z plane. Each holds a quarter of the voxels."""
    dims = _check_shape(shape)
    ny, nx = dims[-2:]
    zs = (slice(0, dims[0]),) if len(dims) == 3 else ()
    return {
        "train": (*zs, slice(0, ny // 2), slice(0, nx // 2)),
        "test": (*zs, slice(ny // 2, ny), slice(nx // 2, nx)),
    }


def make_annotations(truth: np.ndarray, box: tuple[slice, ...], seed: int = 0) -> np.ndarray:
    """Sparse scribbles as a person would draw them, inside ``box`` only (uint8).

    NUCLEUS (2): a cross of two 1 px lines through the centre of a random fifth (at
    least 3, at most 200) of the nuclei lying wholly in the box (in y/x), in the
    nucleus's middle z plane, axis-aligned or diagonal, kept to voxels at least 1 px
    inside that nucleus. BACKGROUND (1): twice as many 12..32 px lines at random places
    and z planes, kept to voxels at least 3 px (1 plane in z) from every nucleus.
    Integers only (Bresenham lines), so the result depends only on (truth, box, seed).
    """
    from scipy import ndimage
    from skimage.draw import line

    seed = _check_seed(seed)
    rng = np.random.Generator(np.random.PCG64([seed, 6]))
    out = _zeros(truth.shape, np.uint8)
    t3, o3 = (truth, out) if truth.ndim == 3 else (truth[None], out[None])  # views
    if truth.ndim == 2:
        box = (slice(0, 1), *box)
    sub = t3[box]
    origin = [b.start for b in box]
    objects = ndimage.find_objects(sub)
    ids = [
        i + 1
        for i, sl in enumerate(objects)
        if sl is not None
        and sub[tuple((s.start + s.stop - 1) // 2 for s in sl)] == i + 1  # centre inside
        and all(s.start > 0 and s.stop < n for s, n in zip(sl[1:], sub.shape[1:], strict=True))
    ]
    count = min(len(ids), _MAX_STROKES, max(_MIN_STROKES, round(_STROKE_SHARE * len(ids))))
    chosen = sorted(rng.choice(len(ids), size=count, replace=False).tolist()) if count else []
    directions = ((0, 1), (1, 0), (1, 1), (1, -1))
    for k in chosen:
        label = ids[k]
        sl = objects[label - 1]
        z = (sl[0].start + sl[0].stop - 1) // 2
        cy = (sl[1].start + sl[1].stop - 1) // 2
        cx = (sl[2].start + sl[2].stop - 1) // 2
        first = 2 * int(rng.integers(2))  # a cross: (0, 1) + (1, 0), or the diagonals
        reach = max(sl[1].stop - sl[1].start, sl[2].stop - sl[2].start)
        inside = ndimage.binary_erosion(np.pad(sub[z] == label, 1))[1:-1, 1:-1]
        for dy, dx in directions[first : first + 2]:
            rr, cc = line(cy - dy * reach, cx - dx * reach, cy + dy * reach, cx + dx * reach)
            keep = (rr >= 0) & (rr < sub.shape[1]) & (cc >= 0) & (cc < sub.shape[2])
            rr, cc = rr[keep], cc[keep]
            keep = inside[rr, cc]
            o3[origin[0] + z, origin[1] + rr[keep], origin[2] + cc[keep]] = NUCLEUS
    m = _BG_MARGIN
    nz, ny, nx = sub.shape
    for _ in range(_BG_PER_NUCLEUS * len(chosen)):
        z = int(rng.integers(nz))
        y0, x0 = int(rng.integers(ny)), int(rng.integers(nx))
        length = int(rng.integers(_BG_STROKE[0], _BG_STROKE[1] + 1))
        dy, dx = directions[int(rng.integers(4))]
        y1 = min(max(y0 + dy * length, 0), ny - 1)
        x1 = min(max(x0 + dx * length, 0), nx - 1)
        rr, cc = line(y0, x0, y1, x1)
        lo_y, lo_x = max(min(y0, y1) - m, 0), max(min(x0, x1) - m, 0)
        window = sub[max(z - 1, 0) : z + 2, lo_y : max(y0, y1) + m + 1, lo_x : max(x0, x1) + m + 1]
        near = ndimage.maximum_filter(window.max(axis=0) > 0, size=2 * m + 1, mode="constant")
        keep = ~near[rr - lo_y, cc - lo_x]
        o3[origin[0] + z, origin[1] + rr[keep], origin[2] + cc[keep]] = BACKGROUND
    return out
