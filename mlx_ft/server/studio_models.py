"""The studio's models API: the base, every run and checkpoint the server can answer with, and compare."""

from __future__ import annotations

from flask import Blueprint

bp = Blueprint("studio_models", __name__, url_prefix="/api/studio")
