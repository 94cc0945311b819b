"""mvclip's data pipeline: shards from videos, decoding, frame sampling, LightningDataModules."""
