"""Queue bridges (event source mappings for queues): SQS-shaped ``Records`` batches."""
