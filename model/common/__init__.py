"""Network blocks shared by every policy family: MLPs, embeddings, critics, transformers."""
