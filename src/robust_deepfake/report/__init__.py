"""The report document (markdown/HTML) and its figures."""
