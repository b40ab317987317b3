"""Catalogue: database of data sets, models, generation runs, samples, studies, decisions; export."""
