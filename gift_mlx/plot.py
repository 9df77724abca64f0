"""A dependency-free line plot written as PNG (numpy raster + zlib), for accuracy-vs-k curves.

The stack has no plotting library; this draws axes, lines (solid, dashed, dotted), tick labels and a legend
with a built-in 3x5 pixel font, which is all a test-time-scaling figure needs.
"""

import struct
import zlib
from pathlib import Path

import numpy as np

# 3x5 glyphs: five rows of three bits each (4 = left pixel), written as a string of five octal digits.
FONT = dict(zip(
    "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ.-_/@:()%+=, ?",
    "75557 26227 71747 71317 55711 74717 74757 71122 75757 75717 25755 65656 34443 65556 74647 74644 34553 "
    "55755 72227 11152 55655 44447 57755 65555 25552 65644 25563 65655 34216 72222 55557 55552 55775 55255 "
    "55222 71247 00002 00700 00007 11244 25743 02020 12221 42224 51245 02720 07070 00024 00000 71202".split(),
))
WHITE, BLACK, GREY = (255, 255, 255), (0, 0, 0), (215, 215, 215)
COLORS = [(31, 119, 180), (214, 39, 40), (44, 160, 44), (148, 103, 189), (255, 127, 14), (23, 190, 207)]
STYLES = {"solid": None, "dashed": (8, 5), "dotted": (2, 3)}  # (pixels on, pixels off)


class Canvas:
    def __init__(self, width, height):
        self.px = np.full((height, width, 3), 255, np.uint8)

    def rect(self, x0, y0, x1, y1, color):
        h, w = self.px.shape[:2]
        self.px[max(0, y0):min(h, y1), max(0, x0):min(w, x1)] = color

    def line(self, p, q, color, style="solid", width=2):
        n = int(max(abs(q[0] - p[0]), abs(q[1] - p[1]))) + 1
        pattern = STYLES[style]
        for i, t in enumerate(np.linspace(0, 1, n)):
            if pattern and i % sum(pattern) >= pattern[0]:
                continue
            x, y = round(p[0] + t * (q[0] - p[0])), round(p[1] + t * (q[1] - p[1]))
            self.rect(x - width // 2, y - width // 2, x - width // 2 + width, y - width // 2 + width, color)

    def text(self, x, y, s, color=BLACK, scale=2):
        """Draw s with its top-left corner at (x, y); unknown characters print as '?'."""
        for ch in str(s).upper():
            rows = FONT.get(ch, FONT["?"])
            for r, bits in enumerate(rows):
                for c in range(3):
                    if int(bits) & (4 >> c):
                        self.rect(x + c * scale, y + r * scale, x + (c + 1) * scale, y + (r + 1) * scale, color)
            x += 4 * scale
        return x

    @staticmethod
    def text_width(s, scale=2):
        return 4 * scale * len(str(s))

    def save(self, path):
        write_png(path, self.px)


def write_png(path, rgb):
    """Write an (H, W, 3) uint8 array as an 8-bit RGB PNG."""
    h, w, _ = rgb.shape
    raw = b"".join(b"\x00" + row.tobytes() for row in np.ascontiguousarray(rgb, np.uint8))  # filter 0 per row

    def chunk(tag, data):
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
    png += chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b"")
    Path(path).write_bytes(png)


def read_png(path):
    """Read back a PNG written by write_png (8-bit RGB, filter 0): for tests and sanity checks."""
    data = Path(path).read_bytes()
    w, h = struct.unpack(">II", data[16:24])
    pos, idat = 8, b""
    while pos < len(data):
        (n,), tag = struct.unpack(">I", data[pos:pos + 4]), data[pos + 4:pos + 8]
        idat += data[pos + 8:pos + 8 + n] if tag == b"IDAT" else b""
        pos += 12 + n
    rows = np.frombuffer(zlib.decompress(idat), np.uint8).reshape(h, 1 + 3 * w)
    return rows[:, 1:].reshape(h, w, 3)


def _y_range(values):
    """Axis limits on a 0.1 grid around the data, so small differences between curves stay visible."""
    lo, hi = np.floor(min(values) * 10) / 10, np.ceil(max(values) * 10) / 10
    return (lo, hi) if hi > lo else (max(0.0, lo - 0.1), min(1.0, hi + 0.1) if hi < 1 else hi + 0.1)


def line_plot(path, series, title="", xlabel="", ylabel="", width=720, plot_height=340):
    """Plot series = [(label, xs, ys, color index, style)] with a log2 x axis (xs are powers of two or any k >= 1)."""
    left, right, top, bottom = 70, width - 20, 40, 40 + plot_height
    c = Canvas(width, bottom + 62 + 16 * ((len(series) + 1) // 2))  # room for a two-column legend
    xs_all = sorted({x for _, xs, _, _, _ in series for x in xs})
    lx0, lx1 = np.log2(xs_all[0]), max(np.log2(xs_all[-1]), np.log2(xs_all[0]) + 1)
    y0, y1 = _y_range([y for _, _, ys, _, _ in series for y in ys])

    def at(x, y):
        return left + (np.log2(x) - lx0) / (lx1 - lx0) * (right - left), bottom - (y - y0) / (y1 - y0) * (bottom - top)

    for i in range(int(round((y1 - y0) * 10)) + 1):  # horizontal grid and y tick labels every 0.1
        y = y0 + i / 10
        _, py = at(xs_all[0], y)
        c.line((left, py), (right, py), GREY, width=1)
        c.text(left - 8 - Canvas.text_width(f"{y:.1f}"), int(py) - 5, f"{y:.1f}")
    for x in xs_all:  # x ticks at every k
        px, _ = at(x, y0)
        c.line((px, bottom), (px, bottom + 5), BLACK, width=1)
        c.text(int(px) - Canvas.text_width(x) // 2, bottom + 10, x)
    c.line((left, top), (left, bottom), BLACK, width=1)
    c.line((left, bottom), (right, bottom), BLACK, width=1)
    c.text(left, 4, title)
    c.text((left + right - Canvas.text_width(xlabel)) // 2, bottom + 28, xlabel)
    c.text(8, top - 20, ylabel)
    for label, xs, ys, color, style in series:
        points = [at(x, y) for x, y in zip(xs, ys)]
        for p, q in zip(points, points[1:]):
            c.line(p, q, COLORS[color % len(COLORS)], style)
        for p in points:
            c.rect(int(p[0]) - 3, int(p[1]) - 3, int(p[0]) + 4, int(p[1]) + 4, COLORS[color % len(COLORS)])
    _legend(c, series, left, bottom + 52)
    c.save(path)


def _legend(c, series, x, y):
    """One legend row per series, two columns."""
    for i, (label, _, _, color, style) in enumerate(series):
        lx, ly = x + (i % 2) * 320, y + (i // 2) * 16
        c.line((lx, ly + 5), (lx + 30, ly + 5), COLORS[color % len(COLORS)], style)
        c.text(lx + 38, ly, label[:34])
