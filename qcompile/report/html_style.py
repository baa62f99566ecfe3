"""The stylesheet of report.html: plain CSS, inlined in a <style> tag (no fonts or files to fetch)."""

from __future__ import annotations

__all__ = ["CSS"]

CSS = """
:root {
  --text: #1f2937; --muted: #6b7280; --faint: #9ca3af; --line: #e5e7eb; --soft: #f3f4f6;
  --bg: #f5f6f8; --card: #ffffff; --accent: #2563eb; --accent-soft: #eff6ff;
  --bad: #dc2626; --bad-soft: #fef2f2; --good: #15803d; --good-soft: #f0fdf4; --warn: #b45309; --warn-soft: #fffbeb;
  --mono: ui-monospace, SFMono-Regular, "SF Mono", Menlo, Consolas, "DejaVu Sans Mono", "Liberation Mono", monospace;
}
* { box-sizing: border-box; }
html { -webkit-text-size-adjust: 100%; }
body {
  margin: 0; background: var(--bg); color: var(--text);
  font: 14px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", "DejaVu Sans", Arial, sans-serif;
}
.page { max-width: 1180px; margin: 0 auto; padding: 24px 24px 48px; }
header.top { background: var(--card); border: 1px solid var(--line); border-radius: 12px; padding: 22px 26px 18px;
  margin-bottom: 14px; box-shadow: 0 1px 2px rgba(15, 23, 42, .04); }
.kicker { text-transform: uppercase; letter-spacing: .08em; font-size: 11.5px; font-weight: 600; color: var(--accent); }
h1 { font-size: 24px; line-height: 1.25; margin: 4px 0 10px; overflow-wrap: anywhere; }
h2 { font-size: 17px; margin: 0 0 4px; }
h3 { font-size: 14px; margin: 18px 0 6px; }
.lead { color: var(--muted); margin: 0 0 14px; max-width: 80ch; }
nav.toc { display: flex; flex-wrap: wrap; gap: 6px 14px; margin: 0 0 18px; padding: 0 4px; font-size: 13px; }
nav.toc a { color: var(--muted); text-decoration: none; border-bottom: 1px dotted var(--faint); }
nav.toc a:hover { color: var(--accent); }
section.card { background: var(--card); border: 1px solid var(--line); border-radius: 12px; padding: 20px 24px 22px;
  margin-bottom: 18px; box-shadow: 0 1px 2px rgba(15, 23, 42, .04); }
dl.facts { display: grid; grid-template-columns: repeat(auto-fill, minmax(250px, 1fr)); gap: 10px 24px;
  margin: 14px 0 0; }
dl.facts div { min-width: 0; }
dl.facts dt { font-size: 11.5px; text-transform: uppercase; letter-spacing: .05em; color: var(--muted); }
dl.facts dd { margin: 1px 0 0; overflow-wrap: anywhere; }
.cards { display: grid; grid-template-columns: repeat(auto-fit, minmax(200px, 1fr)); gap: 12px; margin: 16px 0 4px; }
.stat { border: 1px solid var(--line); border-radius: 10px; padding: 10px 14px; background: #fcfcfd; }
.stat .label { font-size: 12px; color: var(--muted); }
.stat .big { font-size: 22px; font-weight: 650; font-variant-numeric: tabular-nums; line-height: 1.3; }
.stat .sub { font-size: 12.5px; color: var(--muted); font-variant-numeric: tabular-nums; }
code, .mono { font-family: var(--mono); font-size: 12.5px; }
pre.command { margin: 6px 0 0; padding: 10px 12px; background: #0f172a; color: #e2e8f0; border-radius: 8px;
  font-family: var(--mono); font-size: 12.5px; white-space: pre-wrap; word-break: break-all; }
.chips { display: flex; flex-wrap: wrap; gap: 5px; margin-top: 4px; }
.chip { display: inline-block; padding: 1px 8px; border-radius: 999px; background: var(--soft);
  border: 1px solid var(--line); font-size: 12px; font-family: var(--mono); max-width: 100%; overflow-wrap: anywhere; }
.chip b { font-weight: 600; color: var(--text); }
.table-wrap { overflow-x: auto; margin-top: 12px; }
table { width: 100%; border-collapse: collapse; font-size: 13.5px; }
th { text-align: left; font-weight: 600; color: var(--muted); font-size: 12px; text-transform: uppercase;
  letter-spacing: .04em; padding: 8px 10px; border-bottom: 2px solid var(--line); white-space: nowrap;
  vertical-align: bottom; }
td { padding: 7px 10px; border-bottom: 1px solid #eef0f3; vertical-align: top; }
tbody tr:hover td { background: #fafbfc; }
th.num, td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
tr.ours td { background: var(--accent-soft); }
tr.ours td:first-child { box-shadow: inset 3px 0 0 var(--accent); font-weight: 600; }
tr.reference td { background: #fafafa; }
th.idx, td.idx { width: 1%; }
td.pass code { white-space: nowrap; }
td.pass details pre { max-width: 60ch; max-height: 24em; overflow: auto; white-space: pre-wrap; font-size: 11.5px;
  background: var(--soft); padding: 6px 8px; border-radius: 6px; }
details summary { cursor: pointer; font-size: 12px; }
td.name { font-family: var(--mono); font-size: 12.5px; overflow-wrap: anywhere; min-width: 16ch; }
table.ranges td.name { min-width: 44ch; }
.stat .sub.mono { overflow-wrap: anywhere; }
td.text { white-space: pre-wrap; word-break: break-word; min-width: 18ch; font-size: 13px; }
.worse { color: var(--bad); }
.better { color: var(--good); }
.muted, td.muted { color: var(--muted); }
.note { color: var(--muted); font-size: 12.5px; margin: 10px 0 0; max-width: 100ch; }
.badge { display: inline-block; padding: 1px 7px; border-radius: 6px; font-size: 11px; font-weight: 600;
  letter-spacing: .03em; white-space: nowrap; }
.badge.EXACT { background: var(--good-soft); color: var(--good); border: 1px solid #bbf7d0; }
.badge.EXACT_IN_REALS { background: #ecfeff; color: #0e7490; border: 1px solid #a5f3fc; }
.badge.LOSSY { background: var(--warn-soft); color: var(--warn); border: 1px solid #fde68a; }
.badge.ns { background: var(--soft); color: var(--muted); border: 1px solid var(--line); font-weight: 500; }
.badge.sig { background: var(--bad-soft); color: var(--bad); border: 1px solid #fecaca; font-weight: 500; }
.badge.ok { background: var(--good-soft); color: var(--good); border: 1px solid #bbf7d0; }
.badge.flag { background: var(--bad-soft); color: var(--bad); border: 1px solid #fecaca; }
figure { margin: 10px 0 0; }
svg.chart { display: block; width: 100%; height: auto; }
figcaption { color: var(--muted); font-size: 12.5px; margin-top: 4px; }
.empty { color: var(--muted); font-style: italic; margin: 10px 0 0; }
.two { display: grid; grid-template-columns: minmax(0, 1.35fr) minmax(0, 1fr); gap: 22px; align-items: start; }
@media (max-width: 900px) { .two { grid-template-columns: 1fr; } }
footer { color: var(--faint); font-size: 12px; text-align: center; margin-top: 26px; }
@media print {
  body { background: white; }
  section.card, header.top { box-shadow: none; break-inside: avoid; }
  nav.toc { display: none; }
}
"""
