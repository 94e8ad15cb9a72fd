"""Sphinx configuration for iommu-sim."""

import os
import sys

sys.path.insert(0, os.path.abspath(".."))

project = "iommu-sim"
author = "iommu-sim developers"
copyright = "2026, iommu-sim developers"
extensions = ["sphinx.ext.autodoc", "sphinx.ext.napoleon", "sphinx.ext.viewcode"]
autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_default_options = {"members": True, "undoc-members": False}
nitpicky = False
suppress_warnings = ["autodoc.import_object"]
html_theme = "alabaster"

exclude_patterns = ["_build"]
