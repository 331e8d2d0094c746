"""Data: split files, video decoding, frame extraction, dataset checks and synthetic datasets."""
