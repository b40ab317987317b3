"""The on-disk contracts, each with one owner: atomic files and hashes, checkpoints, PNG outputs, the run
folder with its metadata.json, and the generation manifest. The ground floor: nothing here imports another
synthmed package but errors."""
