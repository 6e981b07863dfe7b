"""Scan at hub scale: fingerprint every model in a tree, a Hugging Face cache or an ollama store
(on Ray or a local process pool) into the fingerprint database, and draw the lineage graph.
See ``docs/scale.md``.
"""

from weightprint.scan.api import DEFAULT_DB, ScanResult, scan_models
from weightprint.scan.discover import ScanItem, discover_models
from weightprint.scan.graph import benjamini_yekutieli
from weightprint.scan.html import scan_html

__all__ = ["DEFAULT_DB", "ScanItem", "ScanResult", "benjamini_yekutieli", "discover_models", "scan_html", "scan_models"]
