"""Batch scoring of recorded calls (QA): the live pipeline fed from files, reports out."""
