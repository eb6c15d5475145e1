"""The studio's data API: data sets (upload, shipped, recipes; inspected before anything is stored), their preview
with the learned spans marked, and the new-run form."""

from __future__ import annotations

from flask import Blueprint

bp = Blueprint("studio_data", __name__, url_prefix="/api/studio")
