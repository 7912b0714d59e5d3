"""report.html: one self-contained HTML report per run.

read (a run's files -> RunArtifacts), plots (matplotlib PNGs as base64 data URIs) and render
(the sections, the page, build_html_report and write_html_report).
"""
