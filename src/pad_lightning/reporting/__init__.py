"""Figures, tables and sweep comparison, from plain data or an MLflow store.
Imports: tracking and the layers below it; matplotlib, rich."""
