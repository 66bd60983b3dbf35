"""Study reports: `render(OUT)` writes report.md and a self-contained report.html from a sweep's run directories.

    replast report runs/smoke        # -> runs/smoke/report.md, runs/smoke/report.html, runs/smoke/report/

Modules: labels (strategy and condition names), tables (statistics per table), summary (sentences),
plots (PNG figures), blocks → markdown / html (the two renderings of one document), build (orchestration).
"""

from replast.report.build import render

__all__ = ["render"]
