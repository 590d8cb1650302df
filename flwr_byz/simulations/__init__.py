"""Experiments: datasets, models, runner, CLI, plots (arrive with the simulation issue)."""
