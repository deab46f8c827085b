"""The notebook layer: what the tutorials show.

Plotly figures (`plots`), ipywidgets controls over pure callbacks (`widgets`), the smoke/full
switch that sizes every notebook (`nbmode`), and the main job that renders the benchmarks as an
HTML report (`demo`).

May import: runtime, measure, api, benchmarks. Never cli.
"""
