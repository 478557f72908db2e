"""Stream bridges (event source mappings for streams): Kinesis-shaped ``Records`` batches per shard."""
