#!/usr/bin/python3
"""Says whether a PNG screenshot shows something: prints the image size, the
number of distinct colours and the fraction of pixels that are not the
background (the top-left pixel's colour).

usage: png_colors.py FILE.png
Output: "<width>x<height> colors=<n> ink=<fraction>"

A plain decoder (zlib + the five PNG row filters) for 8-bit greyscale, RGB
and RGBA images without interlacing, which is what Chromium writes; it
needs nothing beyond the standard library.
"""
import struct, sys, zlib

def decode(path):
    data = open(path, "rb").read()
    if data[:8] != b"\x89PNG\r\n\x1a\n":
        sys.exit(f"png_colors: '{path}': not a PNG file")
    pos, idat, hdr = 8, [], None
    while pos < len(data):
        n, kind = struct.unpack(">I4s", data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + n]
        if kind == b"IHDR":
            hdr = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            idat.append(body)
        elif kind == b"IEND":
            break
        pos += 12 + n
    w, h, depth, ctype, _, _, interlace = hdr
    if depth != 8 or interlace or ctype not in (0, 2, 6):
        sys.exit(f"png_colors: '{path}': unsupported PNG (depth {depth}, type {ctype})")
    bpp = {0: 1, 2: 3, 6: 4}[ctype]
    raw = zlib.decompress(b"".join(idat))
    stride = w * bpp
    prev = bytearray(stride)
    rows = []
    for y in range(h):
        f = raw[y * (stride + 1)]
        line = bytearray(raw[y * (stride + 1) + 1:(y + 1) * (stride + 1)])
        if f == 1:
            for i in range(bpp, stride):
                line[i] = (line[i] + line[i - bpp]) & 255
        elif f == 2:
            for i in range(stride):
                line[i] = (line[i] + prev[i]) & 255
        elif f == 3:
            for i in range(stride):
                left = line[i - bpp] if i >= bpp else 0
                line[i] = (line[i] + ((left + prev[i]) >> 1)) & 255
        elif f == 4:
            for i in range(stride):
                a = line[i - bpp] if i >= bpp else 0
                b = prev[i]
                c = prev[i - bpp] if i >= bpp else 0
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                pr = a if pa <= pb and pa <= pc else b if pb <= pc else c
                line[i] = (line[i] + pr) & 255
        rows.append(bytes(line))
        prev = line
    return w, h, bpp, rows

w, h, bpp, rows = decode(sys.argv[1])
colors, ink = set(), 0
bg = rows[0][:bpp]
for row in rows:
    for x in range(0, w * bpp, bpp):
        px = row[x:x + bpp]
        colors.add(px)
        ink += px != bg
print(f"{w}x{h} colors={len(colors)} ink={ink / (w * h):.4f}")
