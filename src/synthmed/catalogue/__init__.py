"""Catalogue: database of data sets, models, generation runs, samples, studies and review decisions; export."""
