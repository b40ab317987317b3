"""The run report (HTML) and `synthmed demo`, which runs every stage on shipped MRI slices."""
