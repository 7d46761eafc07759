"""Demo agency systems and their seeded synthetic data (no real person's data anywhere)."""
