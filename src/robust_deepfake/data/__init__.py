"""Data: raw layout, bundled sample generator, DFFD ingest, split, loaders."""
