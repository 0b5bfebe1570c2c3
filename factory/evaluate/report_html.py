"""What every evaluation report page shares: embedded PNGs and figures, tables, the style, plain JSON.

The pages hold no script and embed their pictures as data URIs, so they open anywhere, offline.
"""

from __future__ import annotations

import base64
import html
import io
import math
from typing import Any, Sequence

import numpy as np
from PIL import Image


def png_uri(array: np.ndarray, scale: int = 2) -> str:
    image = Image.fromarray(array)
    if scale > 1:
        image = image.resize((image.width * scale, image.height * scale), Image.NEAREST)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def figure_uri(figure) -> str:
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    plt.close(figure)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def number(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, float):
        return f"{value:.4g}"
    return html.escape(str(value))


def table(rows: Sequence[Sequence[Any]], header: Sequence[str]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{number(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


STYLE = """
body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1100px;color:#222}
h1{font-size:1.5em}h2{font-size:1.2em;border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:2em}
table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;padding:.25em .6em;text-align:right}
th{background:#f3f3f3}td:first-child{text-align:left}
.grid{display:grid;grid-template-columns:repeat(6,1fr);gap:12px}
.card{border:1px solid #ddd;padding:5px;font-size:.7em;max-height:26em;overflow:auto}.card img{width:100%;image-rendering:pixelated}
.labels{font-weight:600;margin:.3em 0}.report{color:#444;white-space:pre-wrap}
.note{color:#555;font-size:.9em}
"""


def jsonable(value: Any) -> Any:
    """Plain JSON: numpy scalars as numbers, NaN and infinities as null (strict JSON has neither)."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, (np.floating, float)):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    return value
