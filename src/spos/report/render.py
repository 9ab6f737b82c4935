"""The report as a self-contained HTML page (plots embedded as ``data:`` URIs, inline CSS) and as
Markdown that shows the PNG files next to it.
"""

from __future__ import annotations

import base64
import html
from collections.abc import Sequence

from spos.report.sections import _Section

_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,Helvetica,Arial,sans-serif;
max-width:1020px;margin:2em auto;padding:0 1em;color:#222;line-height:1.45}
h1{font-size:1.6em;margin-bottom:.1em}h2{font-size:1.25em;border-bottom:1px solid #ddd;
padding-bottom:.2em;margin-top:1.8em}table{border-collapse:collapse;margin:.6em 0}
th,td{border:1px solid #ddd;padding:.25em .7em;text-align:left;vertical-align:top}
th{background:#f4f4f4}td.value{font-variant-numeric:tabular-nums}
figure{margin:1.2em 0}figure img{max-width:100%;height:auto;border:1px solid #eee}
figcaption{color:#555;font-size:.92em}p.skipped{color:#777;font-style:italic;margin:.25em 0}
p.subtitle{color:#666;margin-top:0}code{background:#f4f4f4;padding:0 .25em;border-radius:3px;
word-break:break-all}
""".strip()


def _html_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join(
        "<tr>" + "".join(f'<td class="value">{html.escape(c)}</td>' for c in row) + "</tr>"
        for row in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    def cell(text: str) -> str:
        return text.replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _render_html(
    title: str,
    subtitle: str,
    tables: Sequence[tuple[str, Sequence[str], list]],
    sections: Sequence[_Section],
) -> str:
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{html.escape(title)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
        f'<p class="subtitle">{html.escape(subtitle)}</p>',
    ]
    for heading, header, rows in tables:
        parts.append(f"<h2>{html.escape(heading)}</h2>")
        parts.append(
            _html_table(header, rows) if rows else '<p class="skipped">Nothing recorded yet.</p>'
        )
    for section in sections:
        parts.append(f"<h2>{html.escape(section.heading)}</h2>")
        parts += [f"<p><code>{html.escape(line)}</code></p>" for line in section.code]
        for plot in section.plots:
            data = base64.b64encode(plot.png).decode("ascii")
            parts.append(
                f'<figure><img src="data:image/png;base64,{data}" alt="{html.escape(plot.caption)}">'
                f"<figcaption>{html.escape(plot.caption)} (<code>{html.escape(plot.filename)}</code>)</figcaption></figure>"
            )
        parts += [f'<p class="skipped">{html.escape(line)}</p>' for line in section.skipped]
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def _render_markdown(
    title: str,
    subtitle: str,
    tables: Sequence[tuple[str, Sequence[str], list]],
    sections: Sequence[_Section],
) -> str:
    parts = [f"# {title}", "", subtitle, ""]
    for heading, header, rows in tables:
        parts += [
            f"## {heading}",
            "",
            _markdown_table(header, rows) if rows else "_Nothing recorded yet._",
            "",
        ]
    for section in sections:
        parts += [f"## {section.heading}", ""]
        for line in section.code:
            parts += [f"`{line}`", ""]
        for plot in section.plots:
            parts += [f"![{plot.caption}]({plot.filename})", "", f"*{plot.caption}*", ""]
        for line in section.skipped:
            parts += [f"- _{line}_"]
        if section.skipped:
            parts.append("")
    return "\n".join(parts).rstrip() + "\n"
