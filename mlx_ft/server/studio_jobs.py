"""The studio's jobs API (train, eval and export jobs run one at a time in their own process)."""

from __future__ import annotations

from flask import Blueprint

bp = Blueprint("studio_jobs", __name__, url_prefix="/api/studio/jobs")
