"""Matching picks to truth and scoring them under each published convention."""
from .conventions import CONVENTIONS, evaluate_convention  # noqa: F401
from .report import evaluate_all, format_table, save_report  # noqa: F401
