"""What devices hold and do: datasets, non-IID partitions, compact models, batched training, evaluation."""
